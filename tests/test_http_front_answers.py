"""Answers to clients that read slowly or not at all hold no worker thread (the real server,
127.0.0.1): what the socket does not take waits in memory, bounded, and is sent as the client
reads; a log as it stands is sent by the stream hub. Counts and waits are bounded."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from osreapi.http.server import TlsSettings

from .certs import make_pki
from .conftest import Client, sh, wait_until

THREADS = 4  # few workers: twice as many non-readers would hold them all under blocking writes
STEP_OUTPUT = 900_000  # under the 1 MiB cap of a step's stored output
BIG = 6 * STEP_OUTPUT  # GET /<id> of a 6-step task: more than the kernel's socket buffers hold (4 MiB)


def big_task(client: Client) -> str:
    """A finished task whose record is about BIG bytes."""
    task_id = client.submit([sh(f"head -c {STEP_OUTPUT} /dev/zero | tr '\\0' x") for _ in range(6)])
    client.wait(task_id)
    return task_id


def non_reader(client: Client, path: str, wrap: Callable[[socket.socket], socket.socket] = lambda s: s,
               small_buffer: bool = True) -> socket.socket:
    """A connection that asks for `path` and reads nothing (its receive buffer kept small, unless
    it is to read much later: a small buffer is a small TCP window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if small_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect((client.host, client.port))
    sock = wrap(sock)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


@contextmanager
def non_readers(client: Client, path: str, count: int, **kw) -> Iterator[list[socket.socket]]:
    socks = [non_reader(client, path, **kw) for _ in range(count)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def read_answer(sock: socket.socket) -> tuple[bytes, bytes, bool]:
    """(head, body, whether the connection stays open) of one Content-Length answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data[:200]
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {len(body)} of {length} bytes"
        body += chunk
    return head, body, b"connection: close" not in head.lower()


def received_until_closed(sock: socket.socket) -> int:
    total = 0
    while chunk := sock.recv(1 << 20):
        total += len(chunk)
    return total


def healthy(client: Client, timeout: float = 5.0) -> bool:
    """/healthz answered 200 within `timeout` (the test's bound, not a measure)."""
    conn = http.client.HTTPConnection(client.host, client.port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    finally:
        conn.close()


@pytest.mark.timeout(90)
def test_clients_that_do_not_read_big_answers_hold_no_worker(make_server):
    """Twice as many non-readers of a ~1 MB answer as there are workers: health is answered at
    once (with blocking writes every worker waited for the client timeout, 30 s); each answer then
    arrives whole when its client reads, and the connection serves a next request."""
    client = make_server(client_timeout=30.0, server_options={"threads": THREADS})
    task_id = big_task(client)
    with non_readers(client, f"/{task_id}", 2 * THREADS) as socks:
        assert wait_until(lambda: client.server.answers_waiting > 0)
        assert healthy(client)
        for sock in socks:
            _, body, keep_alive = read_answer(sock)
            assert len(body) > BIG and json.loads(body)["code"] == 0 and keep_alive
        sock = socks[0]
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, _ = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
    assert wait_until(lambda: client.server.answers_waiting == 0)


@pytest.mark.timeout(90)
def test_non_readers_of_a_log_as_it_stands_hold_no_worker(make_server):
    """A 16 MB log asked for without `follow` by clients that read nothing: the hub sends it, no
    worker waits, and a reader that starts late gets every byte."""
    client = make_server(client_timeout=30.0, server_options={"threads": THREADS})
    task_id = client.submit([sh("head -c 16000000 /dev/zero | tr '\\0' x")])
    client.wait(task_id)
    with non_readers(client, f"/{task_id}/0/log", 2 * THREADS, small_buffer=False) as socks:
        assert wait_until(lambda: client.hub.count == 2 * THREADS)
        assert healthy(client)
        data = b""
        while not data.endswith(b"\r\n0\r\n\r\n"):  # the last chunk (the connection stays open)
            chunk = socks[0].recv(1 << 20)
            assert chunk, len(data)
            data += chunk
        body = data.partition(b"\r\n\r\n")[2]
        assert _unchunk(body) == b"x" * 16_000_000
    assert wait_until(lambda: client.hub.count == 0)


def _unchunk(body: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end], 16)
        if size == 0:
            return bytes(out)
        out += body[line_end + 2 : line_end + 2 + size]
        pos = line_end + 2 + size + 2


@pytest.mark.timeout(90)
def test_answers_kept_for_slow_readers_are_bounded_and_the_rest_dropped(make_server, caplog):
    """With room for two answers, ten non-readers: two get their answer whole when they read; the
    others' connections close short of it (the answer dropped, not waited for), said in one
    WARNING line; nothing is kept once they are gone, and the server answers throughout."""
    client = make_server(client_timeout=30.0, server_options={"threads": THREADS, "out_budget": 2 * BIG})
    task_id = big_task(client)
    with non_readers(client, f"/{task_id}", 10) as socks:
        assert healthy(client)
        kept = scraped(client, "osreapi_http_answer_bytes_kept")
        assert 0 < kept <= 2 * BIG == scraped(client, "osreapi_http_answer_bytes_limit")
        whole = sum(whole_or_cut(sock) for sock in socks)
        assert 1 <= whole < 10
        warnings = [r for r in caplog.records if r.name == "osreapi.http.outbox" and r.levelname == "WARNING"]
        assert len(warnings) == 1 and "dropped" in warnings[0].getMessage()
        assert client.server.answers_waiting <= 2 * BIG
        assert scraped(client, "osreapi_http_answers_dropped_total") == 10 - whole  # operators see it too
    assert wait_until(lambda: client.server.answers_waiting == 0)
    assert scraped(client, "osreapi_http_answer_bytes_kept") == 0
    assert healthy(client)


def scraped(client: Client, name: str) -> float:
    """One sample of GET /metrics."""
    lines = client.get("/metrics").body.decode().splitlines()
    return float(next(line.split()[1] for line in lines if line.startswith(name + " ")))


def whole_or_cut(sock: socket.socket) -> bool:
    """Read one answer: True when it arrives whole, False when the connection closes short of it."""
    try:
        read_answer(sock)
    except AssertionError:  # closed before the head or the body was in
        return False
    return True


@pytest.mark.timeout(60)
def test_a_client_that_takes_nothing_is_dropped_after_the_client_timeout(make_server):
    client = make_server(client_timeout=1.0, server_options={"threads": THREADS})
    task_id = big_task(client)
    sock = non_reader(client, f"/{task_id}")
    try:
        assert wait_until(lambda: client.server.answers_waiting > 0)
        assert wait_until(lambda: client.server.answers_waiting == 0, timeout=10)  # given up on
        assert not whole_or_cut(sock)
    finally:
        sock.close()


@pytest.mark.timeout(90)
def test_tls_clients_that_do_not_read_big_answers_hold_no_worker(make_server, tmp_path):
    pki = make_pki(tmp_path)
    tls = TlsSettings(str(pki["server"].cert), str(pki["server"].key))
    client = make_server(client_timeout=30.0, server_options={"threads": THREADS, "tls": tls})
    context = ssl.create_default_context(cafile=str(pki["ca"].cert))
    step = {"command_type": "sh", "command_content": f"head -c {STEP_OUTPUT} /dev/zero | tr '\\0' x"}
    task_id = client.executor.submit([step] * 6)
    assert wait_until(lambda: client.executor.get(task_id).task.state.finished, timeout=30)
    wrap = lambda sock: context.wrap_socket(sock, server_hostname="127.0.0.1")
    with non_readers(client, f"/{task_id}", 2 * THREADS, wrap=wrap) as socks:
        assert wait_until(lambda: client.server.answers_waiting > 0)
        conn = http.client.HTTPSConnection(client.host, client.port, context=context, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        for sock in socks:
            _, body, _ = read_answer(sock)
            assert json.loads(body)["code"] == 0 and len(json.loads(body)["data"]) == 6


def test_a_small_log_as_it_stands_keeps_the_connection_alive(client: Client):
    """Up to 1 MiB a log without follow is answered whole by the worker (Content-Length, the
    connection kept); only longer ones are streamed by the hub and end with the connection."""
    task_id = client.submit([sh("echo small")])
    client.wait(task_id)
    conn = http.client.HTTPConnection(client.host, client.port, timeout=10)
    try:
        for _ in range(2):  # the same connection serves the second request
            conn.request("GET", f"/{task_id}/0/log")
            resp = conn.getresponse()
            assert resp.read() == b"small\n" and resp.getheader("Content-Length") == "6"
            assert resp.getheader("Connection") != "close"
    finally:
        conn.close()


def test_a_log_as_it_stands_is_what_the_file_held_when_asked(tmp_path):
    """A step still printing cannot make an answer without follow grow while it is sent."""
    from osreapi.executor.logsource import LogSource

    log = tmp_path / "step.log"
    log.write_bytes(b"x" * 100_000)
    source = LogSource(log, 0, sse=False, follow=False, step=lambda: None, end_record=lambda: None, max_output=1 << 20)
    with open(log, "ab") as more:
        more.write(b"y" * 100_000)
    assert source.whole() == b"x" * 100_000


@pytest.mark.timeout(60)
def test_a_client_that_trickles_its_answer_in_is_dropped(make_server, monkeypatch):
    """A client that takes a few KB now and then never 'takes nothing', yet would hold the memory
    kept for it as long as it likes: an answer must be taken at a minimum rate (lowered here to
    1 MiB/s so that the test is short; 32 KiB/s by default), past the client timeout."""
    monkeypatch.setattr("osreapi.http.outbox.MIN_RATE", 1 << 20, raising=False)
    client = make_server(client_timeout=1.0, server_options={"threads": THREADS})
    task_id = big_task(client)
    sock = non_reader(client, f"/{task_id}")
    try:
        assert wait_until(lambda: client.server.answers_waiting > 0)
        received, deadline = 0, time.monotonic() + 20
        while client.server.answers_waiting and time.monotonic() < deadline:  # ~20 KB/s, bounded
            received += len(sock.recv(4096))
            time.sleep(0.2)
        assert client.server.answers_waiting == 0 and 0 < received < BIG  # dropped while it read
    finally:
        sock.close()


def test_a_head_refused_before_the_routes_has_no_body_and_the_next_answer_is_whole(make_server):
    """A HEAD refused by the token guard (401, its envelope and length) gets the head alone: the
    body, read by no HEAD client, was taken for the start of the answer to the request pipelined
    behind it on the same connection."""
    from osreapi.http.app import HttpSettings

    client = make_server(settings=HttpSettings(token="s3cret"))
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(b"HEAD /version HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b'"status":"ok"' not in data:  # the pipelined answer's body
            chunk = sock.recv(65536)  # bounded by the socket timeout
            assert chunk, data
            data += chunk
    refused, _, rest = data.partition(b"\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 401") and b"Content-Length: " in refused
    assert rest.startswith(b"HTTP/1.1 200 OK"), rest[:120]


def test_a_stopped_server_leaves_no_figures_in_the_engine_s_metrics(make_server, make_executor):
    """Two servers on one engine (an embedding program may serve it twice): once the second stops,
    /metrics on the first gives the first's own figures, not the stopped one's."""
    executor = make_executor()
    first = make_server(executor, server_options={"out_budget": 1 << 20})
    second = make_server(executor, server_options={"out_budget": 2 << 20})
    assert scraped(second, "osreapi_http_answer_bytes_limit") == 2 << 20
    second.server.stop()
    assert scraped(first, "osreapi_http_answer_bytes_limit") == 1 << 20
