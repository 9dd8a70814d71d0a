"""The stream hub's interface (osreapi/http/streams.py) on a real cheroot server, and log follows
over TLS (served by the worker-thread fallback)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading

import bottle
import psutil
import pytest

from osreapi.http.logstream import SharedPoll
from osreapi.http.server import HttpServer
from osreapi.http.streams import Handoff, StreamHub

from .certs import make_pki
from .conftest import wait_until


class Feed:
    """A StreamSource the test writes to."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.finished = False
        self.closed = threading.Event()
        self.lock = threading.Lock()

    def push(self, data: bytes, finished: bool = False) -> None:
        with self.lock:
            self.pending += data
            self.finished = finished

    def read(self) -> tuple[bytes, bool]:
        with self.lock:
            data, self.pending = bytes(self.pending), bytearray()
            return data, self.finished

    def heartbeat(self) -> bytes:
        return b"hb"

    def close(self) -> None:
        self.closed.set()


@pytest.fixture
def hub_server():
    hub = StreamHub("en", tick=0.05, heartbeat=0.3, stall_limit=1.0)
    feeds: list[Feed] = []
    app = bottle.Bottle()

    @app.get("/feed")
    def feed() -> bottle.HTTPResponse:
        source = Feed()
        feeds.append(source)
        return hub.serve(bottle.request.environ, "200 OK", [("Content-Type", "text/plain")], source)

    server = HttpServer(Handoff(app, hub), "127.0.0.1", 0)
    host, port = server.start()
    yield hub, feeds, (host, port), server
    server.stop()


def open_feed(address) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"GET /feed HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)  # bounded by the socket timeout
        assert chunk, data
        data += chunk
    return data


def test_hub_streams_chunks_heartbeats_and_the_end(hub_server):
    hub, feeds, address, _ = hub_server
    with open_feed(address) as sock:
        head = read_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
        assert wait_until(lambda: hub.count == 1)
        feeds[0].push(b"hello")
        hub.wake()
        assert b"5\r\nhello\r\n" in read_until(sock, b"hello\r\n")
        assert b"2\r\nhb\r\n" in read_until(sock, b"hb\r\n")  # after 0.3 s of silence
        feeds[0].push(b"bye", finished=True)
        tail = read_until(sock, b"0\r\n\r\n")
        assert tail.endswith(b"3\r\nbye\r\n0\r\n\r\n")
        assert feeds[0].closed.wait(5) and wait_until(lambda: hub.count == 0)
        sock.sendall(b"GET /feed HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection serves the next request
        assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 200 OK")
        assert wait_until(lambda: hub.count == 1)


def test_hub_notices_a_client_that_left_and_ends_all_streams_on_stop(hub_server):
    hub, feeds, address, server = hub_server
    leaving = open_feed(address)
    read_until(leaving, b"\r\n\r\n")
    staying = open_feed(address)
    read_until(staying, b"\r\n\r\n")
    assert wait_until(lambda: hub.count == 2)
    leaving.close()
    assert feeds[0].closed.wait(5)  # noticed although the source never had anything to send
    assert wait_until(lambda: hub.count == 1)
    server.stop()
    assert feeds[1].closed.wait(5)
    assert read_until(staying, b"0\r\n\r\n").endswith(b"0\r\n\r\n")
    staying.close()


def test_hub_drops_a_reader_that_takes_nothing_for_the_stall_limit(hub_server):
    hub, feeds, address, _ = hub_server
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(address)
    with sock:
        sock.sendall(b"GET /feed HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: len(feeds) == 1 and hub.count == 1)
        feeds[0].push(b"y" * 8_000_000)  # far more than the socket buffers and the hub's own hold
        hub.wake()
        assert feeds[0].closed.wait(10)  # dropped about a second after the reader stopped taking
        assert wait_until(lambda: hub.count == 0)


@pytest.mark.timeout(60)
def test_log_follow_over_tls(start_server, tmp_path):
    pki = make_pki(tmp_path)
    server = start_server("--tls_cert", str(pki["server"].cert), "--tls_key", str(pki["server"].key))
    context = ssl.create_default_context(cafile=str(pki["ca"].cert))
    conn = http.client.HTTPSConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), context=context, timeout=30)
    try:
        conn.request("POST", "/", body='[{"command_type":"sh","command_content":"echo a; sleep 0.5; echo b"}]')
        task_id = conn.getresponse().read().decode().split('"id":"')[1].split('"')[0]
        conn.request("GET", f"/{task_id}/0/log?follow=true")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"a\nb\n"
    finally:
        conn.close()


def _https(port: int, context: ssl.SSLContext, timeout: float) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)


@pytest.mark.timeout(120)
def test_tls_streams_are_served_by_the_hub_and_leave_every_worker_free(start_server, tmp_path):
    """Over TLS too a follow or a wait holds no worker thread: 40 followers and 4 waiters of a quiet
    step (more than the 32 threads) are all served, the kill that ends the step is answered at once,
    then every follower ends and every waiter gets the end."""
    pki = make_pki(tmp_path)
    server = start_server("--tls_cert", str(pki["server"].cert), "--tls_key", str(pki["server"].key))
    context = ssl.create_default_context(cafile=str(pki["ca"].cert))
    port = int(server.url.rsplit(":", 1)[1])
    setup = _https(port, context, 30)
    setup.request("POST", "/", body='[{"command_type":"sh","command_content":"echo started; sleep 60"}]')
    task_id = setup.getresponse().read().decode().split('"id":"')[1].split('"')[0]
    setup.close()
    answers: list[tuple[str, int, bytes]] = []
    heads = threading.Semaphore(0)
    lock = threading.Lock()

    def ask(kind: str, path: str) -> None:
        conn = _https(port, context, 60)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            heads.release()
            body = resp.read()
            with lock:
                answers.append((kind, resp.status, body))
        finally:
            conn.close()

    threads = [threading.Thread(target=ask, args=("follow", f"/{task_id}/0/log?follow=true")) for _ in range(40)]
    threads += [threading.Thread(target=ask, args=("wait", f"/{task_id}?wait=60s")) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(40):  # every follower has its head (the step printed): all are being served
        assert heads.acquire(timeout=30)
    kill = _https(port, context, 10)  # answered now, not after the step
    kill.request("PUT", f"/{task_id}?action=kill")
    assert kill.getresponse().status == 200
    kill.close()
    for thread in threads:
        thread.join(30)
    follows = [a for a in answers if a[0] == "follow"]
    waits = [a for a in answers if a[0] == "wait"]
    assert len(follows) == 40 and all(status == 200 and body.startswith(b"started\n") for _, status, body in follows)
    assert len(waits) == 4 and all(status == 200 and b'"code":1002' in body for _, status, body in waits)


@pytest.mark.timeout(60)
def test_head_of_a_followed_log_is_the_head_alone_and_holds_no_thread(start_server):
    """HEAD gets a follow's head and no body: 40 of them on a quiet step (more than the 32 worker
    threads) are all answered at once, and the kill after them too."""
    server = start_server()
    client = server.client
    task_id = client.submit([{"command_type": "sh", "command_content": "sleep 300"}])
    heads = []
    for _ in range(40):
        conn = http.client.HTTPConnection(client.host, client.port, timeout=10)
        conn.request("HEAD", f"/{task_id}/0/log?follow=true")
        response = conn.getresponse()
        heads.append((response.status, response.getheader("Content-Type"), response.read()))
        conn.close()
    assert all(status == 200 and kind.startswith("text/plain") and body == b"" for status, kind, body in heads)
    assert client.request("PUT", f"/{task_id}?action=kill").status == 200
    assert client.wait(task_id).json["code"] != 1001


def test_a_head_of_a_stream_keeps_its_connection_for_the_request_behind_it(client):
    """A HEAD of a followed log or of the event feed is answered with what a GET would say
    (chunked) and no body, and its connection serves the request pipelined behind it: cheroot
    closed it, as if a body of unknown length followed, and that request was lost."""
    task_id = client.submit([{"command_type": "sh", "command_content": "sleep 300"}])
    for path in (f"/{task_id}/0/log?follow=true", "/events", f"/{task_id}/0/log"):
        with socket.create_connection((client.host, client.port), timeout=10) as sock:
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.settimeout(10)
            received = b""
            while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, (path, received)  # closed before the second answer
                received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        assert b"connection: close" not in head.lower(), path
        assert rest.startswith(b"HTTP/1.1 200") and b'"code":0' in rest, (path, rest)  # no body came between
    assert client.request("PUT", f"/{task_id}?action=kill").status == 200


@pytest.mark.timeout(60)
def test_a_follower_whose_log_cannot_be_opened_follows_to_the_step_end(start_server):
    """A log that cannot be opened for now (no descriptor free; here the step turns it into a
    directory) must not end the stream as if the step were done: it ends with the step, and its
    record (before: at once, without one, and a traceback in the server's log)."""
    server = start_server()
    client = server.client
    script = "rm -f .osreapi/step-0.log && mkdir .osreapi/step-0.log && echo > moved; while [ ! -e go ]; do sleep 0.05; done"
    task_id = client.submit([{"command_type": "sh", "command_content": script}])
    workspace = server.data_dir / "workspace" / task_id
    assert wait_until(lambda: (workspace / "moved").exists())
    sock = socket.create_connection((client.host, client.port), timeout=20)
    with sock:
        sock.sendall(f"GET /{task_id}/0/log?follow=true HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        (workspace / "go").touch()
        received = head
        while chunk := sock.recv(65536):
            received += chunk
    end = received.rpartition(b"event: end\ndata: ")[2].partition(b"\n")[0]
    assert json.loads(end)["code"] == 0  # the step's record, once it has ended


@pytest.mark.timeout(120)
def test_a_tls_follower_that_reads_late_gets_every_byte_in_order(start_server, tmp_path):
    """The hub writes TLS records without blocking: a reader that takes nothing while 20 MB are
    written (far past the socket buffers: the hub's writes would block, again and again) then
    reads, gets the whole log, byte for byte."""
    pki = make_pki(tmp_path)
    server = start_server("--tls_cert", str(pki["server"].cert), "--tls_key", str(pki["server"].key), "--max_log", "32MiB")
    context = ssl.create_default_context(cafile=str(pki["ca"].cert))
    port = int(server.url.rsplit(":", 1)[1])
    lines = 200_000
    script = f"awk 'BEGIN {{ for (i = 0; i < {lines}; i++) printf \"line %d %090d\\n\", i, 0 }}'"
    setup = _https(port, context, 60)
    setup.request("POST", "/", body=json.dumps([{"command_type": "sh", "command_content": "while [ ! -e go ]; do sleep 0.05; done; " + script}]))
    task_id = json.loads(setup.getresponse().read())["data"]["id"]
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname="127.0.0.1")
    with sock:
        sock.sendall(f"GET /{task_id}/0/log?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        workspace = server.data_dir / "workspace" / task_id
        assert wait_until(workspace.is_dir)  # made as the task starts, after POST answered
        (workspace / "go").touch()
        setup.request("GET", f"/{task_id}?wait=60s")  # the whole output is written while we read nothing
        assert json.loads(setup.getresponse().read())["code"] == 0
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
    setup.close()
    body = bytes(received).partition(b"\r\n\r\n")[2]
    assert body.endswith(b"0\r\n\r\n")
    payload = b"".join(body.split(b"\r\n")[1::2])  # chunk data between the size lines
    expected = b"".join(b"line %d %090d\n" % (i, 0) for i in range(lines))
    assert payload[: len(expected)] == expected and b"byte cap" in payload[len(expected):]  # then the cap notice


@pytest.mark.timeout(120)
def test_a_follower_that_does_not_read_costs_the_server_no_more_than_its_buffer(start_server):
    server = start_server("--max_output", "4KiB")  # GET /<id> while waiting stays small
    client = server.client
    size = 40_000_000
    task_id = client.submit([{"command_type": "sh", "command_content": f"head -c {size} /dev/zero | tr '\\0' x"}])
    process = psutil.Process(server.proc.pid)
    before = process.memory_info().rss
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((client.host, client.port))
    with sock:
        sock.sendall(f"GET /{task_id}/0/log?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        client.wait(task_id)  # the whole output is written while the follower reads nothing
        grown = process.memory_info().rss - before
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
    body = bytes(received).partition(b"\r\n\r\n")[2]
    assert body.endswith(b"0\r\n\r\n")
    payload = b"".join(body.split(b"\r\n")[1::2])  # chunk data between the size lines (no CRLF in it)
    print(f"\nserver RSS grew {grown / 1e6:.1f} MB while a follower of a {size / 1e6:.0f} MB log read nothing")
    assert grown < 10_000_000
    assert payload[:size] == b"x" * size and b"over the 4096-byte cap" in payload[size:]


def test_followers_of_one_step_share_one_state_read():
    reads = []
    shared = SharedPoll(lambda task_id, index: reads.append((task_id, index)) or None, max_age=60)
    for _ in range(1000):
        shared("t", 0)
    shared("t", 1)
    assert reads == [("t", 0), ("t", 1)]
    fresh = SharedPoll(lambda task_id, index: reads.append((task_id, index)) or None, max_age=0)
    for _ in range(3):
        fresh("u", 0)
    assert reads.count(("u", 0)) == 3


def test_a_stream_handed_over_as_the_hub_stops_gets_its_last_word(hub_server):
    """A stream still waiting for the hub thread when it stops (a wait adopted as the server
    stopped) gets its source's last word, as the streams the thread served do; it used to be
    closed with nothing sent, not even its head."""
    hub, feeds, address, _ = hub_server
    gate, entered = threading.Event(), threading.Event()
    with open_feed(address):
        assert wait_until(lambda: hub.count == 1)

        def held_read() -> tuple[bytes, bool]:  # keeps the hub thread busy while the next stream comes
            entered.set()
            gate.wait(10)
            return b"", False

        feeds[0].read = held_read
        hub.wake()
        assert entered.wait(10)
        with open_feed(address) as second:
            assert wait_until(lambda: len(feeds) == 2 and hub.count == 2)  # handed over, not yet taken
            feeds[1].final = lambda: b"last word"
            stopper = threading.Thread(target=hub.stop)
            stopper.start()
            assert wait_until(lambda: hub._stopping.is_set())
            gate.set()
            stopper.join(10)
            received = read_until(second, b"0\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 OK") and b"9\r\nlast word\r\n0\r\n\r\n" in received
    assert feeds[1].closed.is_set()


def test_a_stream_answered_as_the_hub_stops_gets_its_last_word():
    """The hub stops between a route's answer and the hand-off of its connection: the stream still
    gets its source's last word (a wait's answer as it stands), not a close with nothing sent."""
    hub = StreamHub("en", tick=0.05)
    source = Feed()
    source.final = lambda: b"last word"
    app = bottle.Bottle()

    @app.get("/feed")
    def feed() -> bottle.HTTPResponse:
        response = hub.serve(bottle.request.environ, "200 OK", [("Content-Type", "text/plain")], source)
        hub.stop()  # the server stops before Handoff gives the connection to the hub
        return response

    server = HttpServer(Handoff(app, hub), "127.0.0.1", 0)
    try:
        with open_feed(server.start()) as sock:
            received = read_until(sock, b"0\r\n\r\n")
    finally:
        server.stop()
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"9\r\nlast word\r\n0\r\n\r\n")
    assert source.closed.is_set()


def _wakes(thread: threading.Thread) -> int:
    """How often a thread of this process has gone to sleep and woken (Linux)."""
    with open(f"/proc/self/task/{thread.native_id}/status") as status:
        return int(status.read().split("voluntary_ctxt_switches:")[1].split()[0])


@pytest.mark.skipif(not hasattr(threading.Thread, "native_id") or not psutil.LINUX, reason="reads /proc")
def test_a_hub_without_streams_sleeps_until_one_comes():
    """The hub thread ticked (every 50 ms) for ever once it had served one stream: an idle server
    woke twenty times a second."""
    hub = StreamHub("en", tick=0.005)
    app = bottle.Bottle()
    feeds: list[Feed] = []

    @app.get("/feed")
    def feed() -> bottle.HTTPResponse:
        feeds.append(Feed())
        return hub.serve(bottle.request.environ, "200 OK", [("Content-Type", "text/plain")], feeds[-1])

    server = HttpServer(Handoff(app, hub), "127.0.0.1", 0)
    address = server.start()
    try:
        for round_ in range(2):  # the second: a hub that slept serves the next stream at once
            with open_feed(address) as sock:
                read_until(sock, b"\r\n\r\n")
                feeds[-1].push(b"bye", finished=True)
                hub.wake()
                read_until(sock, b"0\r\n\r\n")
            assert feeds[-1].closed.wait(5) and wait_until(lambda: hub.count == 0)
            before = _wakes(hub._thread)
            threading.Event().wait(0.3)  # the window watched: 60 ticks of the old hub
            assert _wakes(hub._thread) - before < 10, f"round {round_}"
    finally:
        server.stop()
