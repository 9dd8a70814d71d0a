"""The HTTP client's own behaviour against real servers: typed errors, tokens, TLS, and a log
stream that resumes from the last byte received after its connection is cut."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from osreapi.client import Client, ConnectionFailed, RemoteInvalidRequest, RemoteNotFound, Unauthorized
from osreapi.errors import InvalidRequest, NotFound
from osreapi.http.app import HttpSettings, make_app
from osreapi.http.server import HttpServer, TlsSettings

from .certs import make_pki
from .conftest import sh


class LoopbackListener:
    """A TCP listener on 127.0.0.1 whose thread hands each connection to `handle` until closed."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._sockets: list[socket.socket] = []
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._sockets.append(conn)
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        """Hold the connection and never answer (a hung host)."""

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for conn in self._sockets:
            conn.close()
        self._listener.close()


class CuttingProxy(LoopbackListener):
    """A TCP proxy to a real server that cuts the first connection which has carried an SSE event
    (`id:` line), right after forwarding it; every other byte passes unchanged."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.requests: list[bytes] = []
        self.cuts = 0
        super().__init__()

    def handle(self, downstream: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream, timeout=30)
        downstream.settimeout(30)
        for source, target, responses in ((downstream, upstream, False), (upstream, downstream, True)):
            thread = threading.Thread(target=self._pipe, args=(source, target, responses), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pipe(self, source: socket.socket, target: socket.socket, responses: bool) -> None:
        try:
            while data := source.recv(65536):
                if not responses:
                    self.requests.append(data)
                target.sendall(data)
                if responses and b"\nid: " in data and self.cuts == 0:
                    self.cuts += 1
                    break
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.fixture
def served(make_executor) -> Iterator[HttpServer]:
    servers: list[HttpServer] = []

    def serve(settings: HttpSettings = HttpSettings(), tls: TlsSettings | None = None) -> HttpServer:
        server = HttpServer(make_app(make_executor(), settings), "127.0.0.1", 0, tls=tls)
        server.start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


def test_errors_carry_the_servers_code_and_message(client):
    with Client(client.url) as remote:
        with pytest.raises(RemoteInvalidRequest) as bad:
            remote.submit([sh("true"), {"command_type": "sh", "comand_content": "x"}])
        assert isinstance(bad.value, InvalidRequest)
        assert bad.value.status == 400 and bad.value.code == 400 and "step 1" in bad.value.message
        with pytest.raises(RemoteNotFound) as missing:
            remote.kill("nothing-here")
        assert isinstance(missing.value, NotFound) and missing.value.code == 1003
        status, envelope = remote.envelope("GET", "/nothing-here", lang="zh")
        assert status == 404 and envelope == {"code": 1003, "message": "id不存在, 沒有数据"}


def test_token_is_sent_and_a_wrong_one_is_unauthorized(served):
    server = served(HttpSettings(token="s3cret"))
    with Client(server.url, token="s3cret") as good:
        assert good.wait(good.submit([sh("true")]), timeout=20).task.succeeded
    with Client(server.url, token="wrong") as bad, pytest.raises(Unauthorized) as refused:
        bad.list()
    assert refused.value.status == 401


def test_down_server_is_a_connection_error(unused_port: int):
    with Client(f"http://127.0.0.1:{unused_port}", timeout=2) as remote, pytest.raises(ConnectionFailed) as down:
        remote.list()
    assert f"127.0.0.1:{unused_port}" in str(down.value)


def test_tls_with_the_servers_ca_and_a_client_certificate(served, tmp_path: Path):
    pki = make_pki(tmp_path)
    server = served(tls=TlsSettings(str(pki["server"].cert), str(pki["server"].key), str(pki["ca"].cert)))
    assert server.url.startswith("https://")
    cert = (str(pki["client"].cert), str(pki["client"].key))
    with Client(server.url, verify=str(pki["ca"].cert), cert=cert) as remote:
        assert remote.wait(remote.submit([sh("echo tls")]), timeout=20).steps[0].output == "tls\n"
    with Client(server.url, timeout=5) as unverified, pytest.raises(ConnectionFailed):
        unverified.list()  # the test CA is not in the system's trust store


def test_log_stream_resumes_after_a_cut_from_the_last_byte(client, tmp_path: Path):
    gate = tmp_path / "gate"
    host, port = client.host, client.port
    proxy = CuttingProxy((host, port))
    try:
        with Client(proxy.url, timeout=10) as remote:
            task_id = remote.submit([sh(f"echo part1; while [ ! -e {gate} ]; do sleep 0.01; done; echo part2")])
            chunks = remote.logs(task_id, 0, follow=True)
            assert next(chunks) == "part1\n"
            gate.touch()
            assert "".join(chunks) == "part2\n"  # no gap, no duplicate
        assert proxy.cuts == 1
        streams = [r for r in proxy.requests if b"/log?" in r and b"follow=true" in r]
        assert len(streams) == 2 and b"offset=6" in streams[1]
    finally:
        proxy.close()


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(60)
def test_wait_asks_the_server_to_answer_at_the_end_instead_of_polling(make_executor, tmp_path: Path):
    executor = make_executor()
    server = HttpServer(make_app(executor, HttpSettings()), "127.0.0.1", 0)
    server.start()
    try:
        client = Client(server.url, poll_interval=0.01)
        gate = tmp_path / "gate"
        task_id = client.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.05; done")])
        waited: list = []
        thread = threading.Thread(target=lambda: waited.append(client.wait(task_id, timeout=30)), daemon=True)
        thread.start()
        thread.join(1.5)  # polling every 10 ms would ask ~100 times meanwhile
        gate.touch()
        thread.join(20)
        assert waited and waited[0].finished and waited[0].steps[0].code == 0
        asked = sum(n for (method, route, _), n in executor.metrics.snapshot()[4].items()
                    if method == "GET" and route == "/<task_id>")
        assert 1 <= asked <= 3  # one wait (maybe a second after a reconnect) and the final detailed read
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_wait_goes_on_across_a_server_restart(start_server, tmp_path: Path, unused_port: int):
    """A server killed and started again on the same port while a client waits: the wait ended
    with ConnectionFailed ("Server disconnected", exit 2 for `osreapi wait`); it is asked again, as
    a log stream is resumed, and ends with the task as recovery left it."""
    from osreapi.vocabulary import State

    from .conftest import wait_until

    data = tmp_path / "data"
    port = unused_port  # not port 0: a listener bound to an ephemeral port lacks SO_REUSEADDR (cheroot)
    first = start_server("--addr", f"127.0.0.1:{port}", data_dir=data)
    task_id = first.client.submit([sh("sleep 30")])
    remote = Client(first.url, reconnects=5)
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(_wait_or_error(remote, task_id)))
    waiter.start()
    # Started (its start is on disk): recovery interrupts it. Killed before, it would run again.
    assert wait_until(lambda: first.client.get(f"/{task_id}/0?lang=en").json["data"]["state"] == "running")
    first.kill()
    start_server("--addr", f"127.0.0.1:{port}", data_dir=data)
    waiter.join(40)
    assert not waiter.is_alive() and outcome and not isinstance(outcome[0], BaseException), outcome
    assert outcome[0].task.state is State.INTERRUPTED


def _wait_or_error(remote: Client, task_id: str) -> object:
    try:
        return remote.wait(task_id, timeout=30)
    except Exception as exc:  # noqa: BLE001 - which one is the point
        return exc


@pytest.mark.timeout(60)
def test_a_lost_log_stream_is_told_in_the_clients_language(start_server, tmp_path: Path):
    """The client's own line about a follow it could not resume was English whatever its lang."""
    from .conftest import wait_until

    server = start_server(data_dir=tmp_path / "data")
    task_id = server.client.submit([sh("echo first; sleep 30")])
    assert wait_until(lambda: server.client.get(f"/{task_id}/0/log").body.startswith(b"first"))
    remote = Client(server.url, reconnects=0, lang="zh")
    chunks = remote.logs(task_id, 0, follow=True)
    assert next(chunks).startswith("first")
    server.kill()
    with pytest.raises(ConnectionFailed) as lost:
        list(chunks)
    assert f"{task_id}/0 的日志流中断" in str(lost.value)


PROMPT_PROBE = """
import os, sys
os.open(sys.argv[1], os.O_RDWR)  # a session leader opening a terminal: its controlling terminal now
from osreapi.client import Client
from osreapi.errors import InvalidValue
try:
    Client("https://127.0.0.1:1", cert=(sys.argv[2], sys.argv[3]))
except InvalidValue as exc:
    print("refused:", exc, flush=True)
"""


@pytest.mark.timeout(60)
def test_an_encrypted_client_key_is_refused_not_prompted_for_on_the_terminal(tmp_path: Path):
    """OpenSSL asked for the key's pass phrase on the controlling terminal: `osreapi ls --tls_key
    ...` run from a shell sat waiting for a typed password."""
    import os
    import pty
    import select
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    pki = make_pki(tmp_path)
    key = serialization.load_pem_private_key(pki["client"].key.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    master, slave = pty.openpty()
    probe = subprocess.Popen([sys.executable, "-c", PROMPT_PROBE, os.ttyname(slave), str(pki["client"].cert), str(locked)],
                             stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        while not (b"pass phrase" in seen.lower() or (b"refused:" in seen and seen.endswith(b"\n"))):
            ready, _, _ = select.select([master], [], [], 20)
            assert ready, seen  # bounded: neither a refusal nor a prompt within 20 s
            try:
                seen += os.read(master, 4096)
            except OSError:  # the probe has exited and closed the terminal
                break
    finally:
        probe.kill()
        probe.wait(10)
        os.close(master)
    assert b"refused:" in seen and b"pass phrase" not in seen.lower(), seen
    assert b"locked.key" in seen
