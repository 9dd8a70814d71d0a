"""The client and the terminal commands against servers that misbehave: an answer dripped or
streamed without end, data osreapi never sends, a host that hangs in a fleet, Ctrl-C while a
fleet waits. Each failure is one line naming the host, with its exit status, within the timeouts."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from osreapi.client import Client, ConnectionFailed, Fleet
from osreapi.errors import InvalidValue, NotFound

from .conftest import console_script, sh, wait_until
from .test_client import LoopbackListener
from .test_client_cli import osreapi


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HostileServer(LoopbackListener):
    """Reads each request's head, then answers as `answer(conn, head)` does, on a thread per connection."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            while True:  # request after request on a kept connection
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                self.requests += 1
                self.answer(conn, head)
        except OSError:  # the client went away: what these servers wait for
            pass


def drip(conn: socket.socket, head: bytes) -> None:
    """A JSON answer's head at once, then a byte of its body every 0.2 s, for ever."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    while True:
        conn.sendall(b" ")
        time.sleep(0.2)


def stall(conn: socket.socket, head: bytes) -> None:
    """Answer nothing; hold the connection until the client goes away (or the 30 s socket timeout)."""
    while conn.recv(4096):
        pass


def endless(conn: socket.socket, head: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    while True:
        conn.sendall(b"[" * 65536)


def envelope(body: dict) -> callable:
    data = json.dumps(body).encode()

    def answer(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(data), data))

    return answer


@pytest.fixture
def hostile() -> Iterator[callable]:
    made: list[HostileServer] = []

    def make(answer) -> HostileServer:
        made.append(HostileServer(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.mark.timeout(60)
def test_an_answer_dripped_without_end_costs_one_request_timeout(hostile):
    """httpx bounds each read, not the request: a byte every 0.2 s held `get` (and every command)
    for ever, past the documented --request_timeout."""
    server = hostile(drip)
    with Client(server.url, timeout=1) as remote, pytest.raises(ConnectionFailed) as slow:
        remote.get("x")
    assert str(slow.value) == f"{server.url}: HTTP 200: the answer was not complete within 1s"
    done = osreapi(server.url, "ls", "--request_timeout", "1s", "--lang", "en", timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == f"osreapi: error: {server.url}: HTTP 200: the answer was not complete within 1s\n"


@pytest.mark.timeout(60)
def test_an_answer_without_end_is_refused_past_max_answer(hostile):
    """A server streaming a body without end filled the client's memory for as long as it lasted."""
    server = hostile(endless)
    with Client(server.url, max_answer=1 << 20) as remote, pytest.raises(ConnectionFailed) as big:
        remote.list()
    assert str(big.value) == f"{server.url}: HTTP 200: an answer over 1048576 bytes is not an osreapi envelope"


@pytest.mark.parametrize("body", [{"code": 0, "message": "ok", "data": None},
                                  {"code": 0, "message": "ok", "data": {"id": 7, "tasks": [{"id": "x"}], "steps": [1]}}])
def test_an_envelope_with_data_osreapi_never_sends_is_one_line(hostile, body: dict):
    """{"code": 0, ...} with other data (another service, a proxy) was a TypeError or KeyError traceback."""
    server = hostile(envelope(body))
    with Client(server.url) as remote:
        for call in (lambda: remote.get("x"), remote.list, lambda: remote.submit([sh("true")]),
                     lambda: remote.wait("x", timeout=5)):
            with pytest.raises(ConnectionFailed, match=f"^{server.url}: not an osreapi answer"):
                call()
    for command in (["get", "x"], ["ls"], ["submit", "-e", "true"], ["wait", "x"]):
        done = osreapi(server.url, *command, "--lang", "en", timeout=30)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (command, done.stderr)
        assert done.stderr.startswith(f"osreapi: error: {server.url}: not an osreapi answer")
        assert done.stderr.count("\n") == 1


def test_an_envelope_without_a_message_is_not_an_osreapi_envelope(hostile):
    """`kill` printed the envelope's message: {"code": 0} alone was a KeyError traceback."""
    server = hostile(envelope({"code": 0}))
    done = osreapi(server.url, "kill", "x", "--lang", "en", timeout=30)
    assert done.returncode == 2 and done.stderr == f"osreapi: error: {server.url}: HTTP 200: not an osreapi envelope\n"


def test_an_empty_id_names_no_task(client):
    """An empty id made the path "/", the list of tasks: `osreapi get ''` was a KeyError traceback,
    `kill ''` a 405 'method not allowed'."""
    with Client(client.url) as remote:
        assert remote.get("") is None and remote.wait("", timeout=1) is None
        with pytest.raises(NotFound):
            remote.kill("")
    for command in (["get", ""], ["wait", ""], ["kill", ""], ["rm", ""], ["logs", "x", ""], ["kill", "x", ""]):
        done = osreapi(client.url, *command, timeout=30)
        assert done.returncode == 2 and "must not be empty" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.timeout(60)
def test_a_hung_host_in_a_fleet_wait_is_asked_once(hostile):
    """A wait asked a host that timed out again, as it does one whose connection dropped (a server
    restarting): a hung host cost six request timeouts instead of its one."""
    silent = hostile(stall)
    with Fleet([f"127.0.0.1:{silent.port}"], timeout=1) as fleet:
        [row] = fleet.wait("x")
    assert isinstance(row.error, ConnectionFailed) and "ReadTimeout" in str(row.error)
    assert silent.requests == 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command", [["get", "x"], ["wait", "x"], ["submit", "-e", "true", "--wait"]])
def test_ctrl_c_ends_a_fleet_command_at_once(hostile, command: list[str]):
    """Ctrl-C while a fleet waited for a hung host: the worker pool was joined (on the way out and
    at exit) until every host answered, so the command ignored Ctrl-C for --request_timeout."""
    silent = hostile(stall)
    proc = subprocess.Popen([console_script(), *command, "--hosts", f"127.0.0.1:{silent.port}",
                             "--request_timeout", "60s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: silent.requests == 1, timeout=30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "Traceback" not in err


@pytest.mark.parametrize("url", ["http://[::1", "http://h:abc", "not a url", "ftp://h"])
def test_a_server_url_httpx_cannot_use_is_a_usage_error(url: str):
    """httpx's InvalidURL escaped Client(): `osreapi ls --url http://h:abc` was a traceback, exit 1."""
    with pytest.raises(InvalidValue, match="^server URL "):
        Client(url)
    done = osreapi(url, "ls", timeout=30)
    assert done.returncode == 2 and done.stderr.startswith(f"osreapi: error: server URL {url!r}: ")
    fleet = osreapi("http://127.0.0.1:9", "get", "x", "--hosts", "h:abc", timeout=30)
    assert fleet.returncode == 2 and fleet.stderr == "osreapi: error: server URL 'http://h:abc': Invalid port: 'abc'\n"


def test_an_empty_id_is_an_unknown_task_in_process(executor):
    """LMDB refuses an empty key: Executor.get("") raised lmdb.BadValsizeError."""
    assert executor.get("") is None and executor.task("") is None and executor.wait("", 1) is None
    assert executor.specs("") == ()
    for call in (lambda: executor.kill(""), lambda: executor.delete(""), lambda: executor.logs("", 0),
                 lambda: executor.step("", 0)):
        with pytest.raises(NotFound):
            call()


@pytest.mark.timeout(90)
def test_the_wait_command_goes_on_across_a_server_restart(start_server, tmp_path):
    """Client.wait asked a restarting server again; `osreapi wait` (which polls with get) ended
    with exit 2 at the first refused connection."""
    data = tmp_path / "data"
    port = free_port()  # not port 0: the second server takes the first one's
    first = start_server("--addr", f"127.0.0.1:{port}", data_dir=data)
    task_id = first.client.submit([sh("sleep 30")])
    assert wait_until(lambda: first.client.get(f"/{task_id}/0?lang=en").json["data"]["state"] == "running")
    waiting = subprocess.Popen([console_script(), "wait", task_id, "--url", first.url, "--lang", "en"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress: list[str] = []
    reader = threading.Thread(target=lambda: progress.extend(waiting.stderr), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: any("running" in line for line in progress), timeout=30)  # it has asked
        first.kill()
        start_server("--addr", f"127.0.0.1:{port}", data_dir=data)
        out = waiting.stdout.read()
        waiting.wait(60)
        reader.join(10)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    err = "".join(progress)
    assert waiting.returncode == 1, err  # the task ended interrupted: it did not succeed
    assert out.startswith(f"task {task_id}: interrupted") and "error" not in err


def log_events(events: bytes) -> callable:
    """A log's plain probe answered, then `events` as its SSE stream."""

    def answer(conn: socket.socket, head: bytes) -> None:
        if b"text/event-stream" not in head:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n")
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + events)
        stall(conn, head)

    return answer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("events, text", [(b"id: abc\ndata: hello\n\n", "event id 'abc' after byte 0"),
                                          (b"id: 5\ndata: hello\n\nid: 2\ndata: x\n\n", "event id '2' after byte 5"),
                                          (b"id: 99999999999999999999\ndata: x\n\n",
                                           "event id '99999999999999999999' after byte 0")])
def test_a_log_stream_with_event_ids_osreapi_never_sends_is_one_line(hostile, events: bytes, text: str):
    """An event id that is not a byte offset was int()'s ValueError traceback; one before the last
    offset read nothing and went on; one far past it read the plain log to its end, unbounded."""
    server = hostile(log_events(events))
    done = osreapi(server.url, "logs", "x", "0", "--lang", "en", timeout=30)
    assert done.returncode == 2
    assert done.stderr == f"osreapi: error: {server.url}: not an osreapi log stream ({text})\n"


def test_the_clients_own_failures_are_told_in_its_language(hostile):
    """The server's refusals came in --lang (zh by default) but the client's own lines were English."""
    server = hostile(envelope({"data": []}))
    assert osreapi(server.url, "get", "x").stderr == f"osreapi: error: {server.url}: HTTP 200: 不是 osreapi 的信封\n"
    assert osreapi(server.url, "get", "x", "--lang", "en").stderr == (
        f"osreapi: error: {server.url}: HTTP 200: not an osreapi envelope\n")
    port = free_port()
    down = osreapi(f"http://127.0.0.1:{port}", "ls")
    assert down.returncode == 2
    assert down.stderr.startswith(f"osreapi: error: http://127.0.0.1:{port}: 无应答: ConnectError: ")


def test_a_refused_token_names_the_server(make_server):
    """`osreapi: error: missing or wrong token ...` did not say which server refused it."""
    from osreapi.http.app import HttpSettings

    server = make_server(settings=HttpSettings(token="right"))
    refused = osreapi(server.url, "ls", "--lang", "en", env={"OSREAPI_TOKEN": "wrong"})
    assert refused.returncode == 2 and refused.stderr.startswith(f"osreapi: error: {server.url}: missing or wrong token")


def test_a_terminal_that_is_not_utf8_gets_escapes_not_a_traceback(client):
    """Under LANG=en_US.ISO-8859-1 or PYTHONIOENCODING=ascii our zh words (the default) and a step's
    output cannot be encoded: every command was a UnicodeEncodeError traceback, exit 1."""
    task_id = client.submit([sh("echo 输出; exit 3")])
    client.wait(task_id)
    for command in (["get", task_id], ["ls"], ["logs", task_id, "0"], ["get", "nothing-here"]):
        done = osreapi(client.url, *command, env={"PYTHONIOENCODING": "ascii"})
        assert "Traceback" not in done.stderr and done.returncode in (0, 1), (command, done.stderr)
        assert "\\u" in done.stdout + done.stderr, command
    failed = osreapi(client.url, "get", task_id, env={"PYTHONIOENCODING": "ascii"})
    assert failed.returncode == 1 and "\\u8f93\\u51fa" in failed.stdout  # 输出, the step's own words


def test_a_command_run_with_its_stdout_closed_ends_without_a_traceback(client):
    """`osreapi get ID >&-`: Python's sys.stdout is None, and the table's flush was an AttributeError."""
    task_id = client.submit([sh("echo hi")])
    client.wait(task_id)
    for command in (f"get {task_id}", "ls", f"logs {task_id} 0", f"get {task_id} --json"):
        done = subprocess.run(["sh", "-c", f'"$0" {command} --url {client.url} >&-', console_script()],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and done.stderr == "", (command, done.stderr)


def test_steps_from_python_are_refused_alike_in_process_and_over_http(client, tmp_path):
    """A tuple of steps ran over HTTP but was "got a number" in process; a set or bytes was json's
    TypeError from Client (a traceback in `osreapi submit` for a YAML date); a lone surrogate was
    UnicodeEncodeError from Client, a clear refusal from Executor."""
    from osreapi.errors import InvalidRequest

    executor = client.executor
    step = sh("true")
    with Client(client.url) as remote:
        for runner in (executor, remote):
            assert runner.wait(runner.submit((step,)), timeout=20).task.succeeded
            surrogate = [sh("echo \udcff")]
            with pytest.raises(InvalidRequest, match="command_content is not valid Unicode"):
                runner.submit(surrogate)
        with pytest.raises(InvalidRequest, match="got a Python set"):
            executor.submit({1})
        for runner in (executor, remote):  # an id that is not a string: sent as "5", it ran over HTTP
            with pytest.raises(InvalidRequest, match="^id: must be"):
                runner.submit([step], task_id=5)
        with pytest.raises(InvalidRequest, match="^the steps cannot be written as JSON: Object of type set"):
            remote.submit({1})
    dated = tmp_path / "dated.yaml"
    dated.write_text("- command_type: sh\n  command_content: echo\n  name: 2020-01-01\n")
    done = osreapi(client.url, "submit", str(dated), "--lang", "en")
    assert done.returncode == 2
    assert done.stderr == "osreapi: error: the steps cannot be written as JSON: Object of type date is not JSON serializable\n"


def test_a_request_timeout_past_what_a_socket_holds_is_a_usage_error():
    """--request_timeout 1000000000h reached socket.settimeout: an OverflowError traceback."""
    done = osreapi("http://127.0.0.1:9", "ls", "--request_timeout", "1000000000h")
    assert done.returncode == 2 and "at most 24h0m0s" in done.stderr and "Traceback" not in done.stderr
    for bad in (0, float("inf"), float("nan"), 1e12):
        with pytest.raises(InvalidValue, match="^timeout: "):
            Client("http://127.0.0.1:9", timeout=bad)


def test_a_followed_step_whose_output_is_lost_says_so_in_the_clients_language(hostile):
    """`submit --follow` wrote "[output stream lost: ...]" in English whatever --lang."""
    from osreapi.client.follow import Followers
    from osreapi.embed import TaskResult
    from osreapi.records import StepRecord, TaskRecord
    from osreapi.vocabulary import State

    gone = json.dumps({"code": 1003, "message": "id不存在, 沒有数据"}).encode()
    server = hostile(lambda conn, head: conn.sendall(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(gone), gone)))
    printed: list[str] = []
    with Client(server.url, lang="zh") as remote:
        followers = Followers(remote, "t", printed.append)
        followers.start(TaskResult(TaskRecord("t", "sequential", 1, 0.0, State.RUNNING),
                                   (StepRecord(0, "t-0", State.RUNNING),)))
        followers.finish(time.monotonic() + 20)
    assert printed == ["[第 0 步的输出: id不存在, 沒有数据]\n"]


def test_one_server_named_twice_in_a_fleet_is_asked_once(client):
    """'h:p', 'http://h:p' and 'h:p/' were three hosts: a submit without --id ran three tasks there."""
    port = client.port
    spellings = [f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", f"127.0.0.1:{port}/", f"HTTP://127.0.0.1:{port}"]
    with Fleet(spellings) as fleet:
        assert fleet.hosts == spellings[:1]
        [row] = fleet.submit([sh("true")])
    assert row.ok and [task.id for task in client.executor.list()] == [row.value]
    with Fleet([f"http://127.0.0.1:{port}/a", f"http://127.0.0.1:{port}/b/"]) as behind_a_proxy:
        assert len(behind_a_proxy.hosts) == 2  # two servers behind one proxy, by their paths
    done = osreapi(client.url, "submit", "-e", "true", "--hosts", ",".join(spellings), "--lang", "en")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2  # the heading and one host
    assert len(client.executor.list()) == 2


def test_a_tls_failure_is_not_asked_again_as_a_dropped_connection(make_server, tmp_path):
    """A certificate the client does not trust surfaces as httpx's ConnectError, as a refused
    connection does: a wait asked it again five times (seconds lost per fleet host)."""
    from osreapi.http.server import TlsSettings

    from .certs import make_pki

    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    ours, theirs = make_pki(tmp_path / "ours"), make_pki(tmp_path / "theirs")
    server = make_server(server_options={"tls": TlsSettings(str(theirs["server"].cert), str(theirs["server"].key))})
    with Client(server.url, verify=str(ours["ca"].cert)) as remote, pytest.raises(ConnectionFailed) as refused:
        remote.wait("x")
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value) and not refused.value.retry


def test_steps_on_stdin_are_read_as_a_files_are(client, tmp_path):
    """`submit -` decoded stdin with the locale's surrogateescape: bytes that are not UTF-8 became a
    two-line YAML complaint about '#xdcff'; a closed stdin (`<&-`) was an AttributeError traceback.
    A control character in a file was a two-line message too."""
    not_utf8 = subprocess.run([console_script(), "submit", "-", "--url", client.url, "--lang", "en"],
                              input=b"\xff\xfe[]", capture_output=True, timeout=60, check=False)
    assert not_utf8.returncode == 2
    assert not_utf8.stderr == b"osreapi: error: stdin: cannot read: not UTF-8 text (byte 0xff at offset 0)\n"
    closed = subprocess.run(["sh", "-c", f'"$0" submit - --url {client.url} --lang en <&-', console_script()],
                            capture_output=True, text=True, timeout=60, check=False)
    assert closed.returncode == 2 and closed.stderr == "osreapi: error: stdin: is empty: no steps\n"
    control = tmp_path / "control.json"
    control.write_bytes(b'[{"command_type": "sh", "command_content": "echo \x01"}]')
    done = osreapi(client.url, "submit", str(control), "--lang", "en")
    assert done.returncode == 2 and done.stderr == (
        f"osreapi: error: {control}: not valid JSON or YAML: special characters are not allowed "
        "(character U+0001 at offset 49)\n")


def test_a_redirect_says_where_it_leads(hostile):
    """A proxy sending http:// on to https:// was "HTTP 301 without a JSON envelope": the way to the
    server was in the Location header, never shown."""
    server = hostile(lambda conn, head: conn.sendall(
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://osreapi.example/\r\nContent-Length: 0\r\n\r\n"))
    for command in (["get", "x"], ["logs", "x", "0"]):
        done = osreapi(server.url, *command, "--lang", "en")
        assert done.returncode == 2 and done.stderr == (
            f"osreapi: error: {server.url}: HTTP 301: redirected to https://osreapi.example/, not followed "
            "(point --url at it)\n"), command


@pytest.mark.timeout(60)
def test_a_listener_that_calls_back_into_the_engine_is_refused_not_deadlocked(make_executor):
    """close() (or submit, wait, ...) inside a subscribe() listener runs on the store's thread and
    waited for the store: 30 s of hang, an error traceback, then a store writing to a closed
    database ('retrying every 1s'). It raises CalledFromListener at once."""
    from osreapi.errors import CalledFromListener

    executor = make_executor()
    sleeper = executor.submit([sh("sleep 30")])
    gate = threading.Event()
    raised: list[str] = []

    def listener(task_id, task, steps):
        if task is None or task.end is None or raised:
            return
        for call in (executor.close, lambda: executor.submit([sh("true")]), lambda: executor.wait(sleeper),
                     lambda: executor.delete(task_id), executor.sweep, executor.check_health):
            try:
                call()
            except CalledFromListener as exc:
                raised.append(str(exc).split("(")[0])
        gate.set()

    executor.subscribe(listener)
    executor.wait(executor.submit([sh("true")]), timeout=20)
    assert gate.wait(20)
    assert raised == [f"Executor.{name}" for name in ("close", "submit", "wait", "delete", "sweep", "check_health")]
    assert executor.wait(executor.submit([sh("true")]), timeout=20).task.succeeded  # the engine goes on


def test_a_closed_client_raises_engine_closed_as_a_closed_executor_does(client, make_executor, tmp_path):
    """After close() httpx raised RuntimeError("Cannot send a request..."): not the EngineClosed a
    closed Executor raises, so one `except` did not serve both."""
    from osreapi.errors import EngineClosed

    task_id = client.submit([sh("echo hi")])
    client.wait(task_id)
    remote = Client(client.url)
    following = remote.logs(task_id, 0, follow=True)
    local = make_executor(tmp_path / "other")
    for runner in (remote, local):
        runner.close()
        for name, args in (("get", (task_id,)), ("list", ()), ("wait", (task_id,)), ("submit", ([sh("true")],))):
            with pytest.raises(EngineClosed):
                getattr(runner, name)(*args)
    with pytest.raises(EngineClosed):
        list(following)


@pytest.mark.parametrize("offset", [-1, 1.5, "3", None, True])
def test_a_log_offset_that_is_not_a_byte_count_is_refused_alike(client, offset):
    """Executor.logs(offset=-1) was lseek's OSError (EINVAL), a str or None a TypeError; over HTTP
    each is 400 'expected a byte offset'."""
    from osreapi.errors import InvalidRequest

    task_id = client.submit([sh("echo hello")])
    client.wait(task_id)
    with Client(client.url) as remote:
        for runner in (client.executor, remote):
            with pytest.raises(InvalidRequest, match="offset: expected a byte offset"):
                list(runner.logs(task_id, 0, offset=offset))


@pytest.mark.parametrize("step", [None, 1.5, True])
def test_a_step_that_is_neither_index_nor_name_is_not_found_in_process(executor, step):
    """Executor.kill(id, None-like step) or logs(id, 1.5) was re's TypeError ('expected string');
    True was taken for step 1. Over HTTP each is 404 'no such step'."""
    task_id = executor.submit([sh("true"), sh("true")])
    executor.wait(task_id, timeout=20)
    with pytest.raises(NotFound):
        executor.step(task_id, step)
    with pytest.raises(NotFound):
        list(executor.logs(task_id, step))


def test_a_token_that_cannot_travel_in_a_header_is_refused_without_echoing_it(make_server):
    """A token with 'ü' was httpx's UnicodeEncodeError traceback; one with a line break was refused
    by httpx with the whole header, token included, in the error line."""
    from osreapi.http.app import HttpSettings

    server = make_server(settings=HttpSettings(token="right token"))
    for token in ("ünïcode", "secret\nX-Evil: 1"):
        for refused in (osreapi(server.url, "ls", env={"OSREAPI_TOKEN": token}),
                        osreapi(server.url, "ls", "--token", token)):
            assert refused.returncode == 2 and "Traceback" not in refused.stderr and "secret" not in refused.stderr
            assert "printable ASCII" in refused.stderr and refused.stderr.count("\n") == 1
        with pytest.raises(InvalidValue, match="printable ASCII"):
            Client(server.url, token=token)  # from Python, where no flag reader checked it
    spaced = osreapi(server.url, "ls", env={"OSREAPI_TOKEN": "right token"})  # a space is fine in a header
    assert spaced.returncode == 0, spaced.stderr


def test_a_fleet_call_that_is_not_an_osreapi_error_still_reaches_the_caller(client):
    """Fleet.map runs its calls on daemon threads now (Ctrl-C): a bug in a call must still be raised
    to the caller, not lost with its thread (which would leave map waiting for ever)."""
    with Fleet([f"127.0.0.1:{client.port}", "127.0.0.1:9"], fanout=1, timeout=2) as fleet:
        def call(host, remote):
            if host.endswith(":9"):
                raise ZeroDivisionError("a bug")
            return remote.list()
        with pytest.raises(ZeroDivisionError):
            fleet.map(call)
        rows = fleet.map(lambda host, remote: remote.list())
    assert [r.host for r in rows] == [f"127.0.0.1:{client.port}", "127.0.0.1:9"]
    assert rows[0].ok and isinstance(rows[1].error, ConnectionFailed)


def relay_after_refusals(port: int, refusals: int) -> callable:
    """The first `refusals` requests answered 429 as a server at its --max-requests does; the
    others relayed to the server on `port` (one connection each)."""
    busy = json.dumps({"code": 429, "message": "too many requests, try again later"}).encode()
    seen = [0]

    def answer(conn: socket.socket, head: bytes) -> None:
        seen[0] += 1
        if seen[0] <= refusals:
            conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(busy), busy))
            return
        lines = [line for line in head.split(b"\r\n\r\n")[0].split(b"\r\n") if not line.lower().startswith(b"connection:")]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as upstream:
            upstream.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n")
            while data := upstream.recv(65536):
                conn.sendall(data)
        conn.close()

    return answer


@pytest.mark.timeout(90)
def test_a_wait_goes_on_past_a_moment_of_too_many_requests(client, hostile):
    """A server at its --max-requests answers 429 for a moment: `osreapi wait` (and Client.wait)
    ended at the first one, exit 1 'too many requests', while the task ran on."""
    task_id = client.submit([sh("true")])
    client.wait(task_id)
    busy = hostile(relay_after_refusals(client.port, refusals=2))
    done = osreapi(busy.url, "wait", task_id, "--lang", "en")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"task {task_id}: stopped") and busy.requests >= 3
    again = hostile(relay_after_refusals(client.port, refusals=2))
    with Client(again.url) as remote:
        assert remote.wait(task_id, timeout=30).task.succeeded
    streams = hostile(relay_after_refusals(client.port, refusals=0))
    with Client(streams.url) as remote:
        chunks = remote.logs(task_id, 0, follow=True)  # its probe passes, the stream itself is refused:
        streams.answer = relay_after_refusals(client.port, refusals=2)  # a reconnect meeting 429
        assert list(chunks) == []  # `true` printed nothing; the follow ended with the step, not with 429


def test_a_wait_without_end_may_be_written_as_infinity(executor):
    """Executor.wait(id, float("inf")), Python's way of saying "for ever", was threading's
    OverflowError ('timestamp out of range'); Client.wait took it."""
    task_id = executor.submit([sh("sleep 0.2")])
    for timeout in (float("inf"), 1e300):
        assert executor.wait(task_id, timeout).task.state.finished


@pytest.mark.parametrize("setting", [{"key_expire": -1}, {"call_timeout": 0}, {"max_output": -1}, {"pool_size": 0},
                                     {"exec_timeout": float("nan")}, {"max_log": 0}])
def test_an_executor_refuses_the_settings_the_server_refuses(tmp_path, setting):
    """`osreapi run` bounds its flags; Executor(...) took anything: a negative key_expire expired
    each task at its end (wait() returned None), call_timeout=0 made every call EngineBusy, and a
    negative max_output kept "... 0 bytes truncated ..." for every output."""
    from osreapi import Executor

    name = next(iter(setting))
    with pytest.raises(InvalidValue, match=f"^{name} must be "):
        Executor(tmp_path / "data", **setting)
    with Executor(tmp_path / "data") as fine:  # nothing was left locked or half started
        assert fine.list() == []


def test_steps_nested_thousands_deep_are_one_line(client, tmp_path):
    """PyYAML builds nested lists recursively: a file of 100,000 '[' was a RecursionError traceback;
    so was such a list given to Client.submit (json.dumps)."""
    from osreapi.errors import InvalidRequest

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    done = osreapi(client.url, "submit", str(deep), "--lang", "en")
    assert done.returncode == 2 and done.stderr == f"osreapi: error: {deep}: nested too deeply to read\n"
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    with Client(client.url) as remote, pytest.raises(InvalidRequest, match="^the steps cannot be written as JSON"):
        remote.submit(nested)


@pytest.mark.timeout(60)
def test_a_yaml_alias_bomb_is_refused_before_it_is_written_out(client, tmp_path, monkeypatch):
    """Nine aliases nested nine deep make a 1 KB steps file a list of 387 million items: `osreapi
    submit bomb.yaml` ran json.dumps until memory ran out. The expanded size is counted first."""
    import yaml

    from osreapi.client import client as client_module
    from osreapi.errors import InvalidRequest

    lines = ["- command_type: sh", "  command_content: echo", '  name: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 9):
        lines += ["- command_type: sh", "  command_content: echo", f"  name: &a{level} [{','.join([f'*a{level - 1}'] * 9)}]"]
    steps = yaml.safe_load("\n".join(lines))
    monkeypatch.setattr(client_module, "MAX_SUBMISSION", 1 << 20)
    with Client(client.url) as remote, pytest.raises(InvalidRequest, match="would be over 1048576 characters"):
        remote.submit(steps)
    with Client(client.url) as remote:  # aliases that stay small are fine
        shared = yaml.safe_load("- &s {command_type: sh, command_content: echo hi}\n- *s\n")
        assert remote.wait(remote.submit(shared), timeout=20).task.succeeded
