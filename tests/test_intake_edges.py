"""The request intake at its edges: requests waiting for a worker inside the byte budget, a worker
handing a connection back while the server stops, a 414 in the language its request asked for."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from osreapi.http.app import HttpSettings, make_app
from osreapi.http.server import HttpServer

from .conftest import wait_until
from .test_http_front_load import _answer_status as _status
from .test_http_front_load import _first_statuses, running_on_64_descriptors


class _Blocking:
    """The application, with one more route, /block, that holds its worker until released (the test's
    way to keep cheroot's only worker busy; every other path goes to the real application)."""

    def __init__(self, app: Callable) -> None:
        self._app = app
        self.settings = app.settings
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        if environ["PATH_INFO"] != "/block":
            return self._app(environ, start_response)
        self.entered.set()
        self.release.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return iter([b"ok"])


@pytest.fixture
def blocking_server(make_executor) -> Iterator[Callable[..., tuple[HttpServer, _Blocking]]]:
    made: list[tuple[HttpServer, _Blocking]] = []

    def make(**options) -> tuple[HttpServer, _Blocking]:
        app = _Blocking(make_app(make_executor(), HttpSettings()))
        server = HttpServer(app, "127.0.0.1", 0, **options)
        server.start()
        made.append((server, app))
        return server, app

    yield make
    for server, app in made:
        app.release.set()
        server.stop()


def _connect(server: HttpServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


@pytest.mark.timeout(60)
def test_requests_waiting_in_the_worker_queue_count_in_the_byte_budget(blocking_server):
    """Whole requests handed to cheroot's worker queue left the count of bytes held: with the workers
    busy, 4 per thread waited there outside the budget (128 bodies of --max_body with 32 threads).
    They count until a worker takes them: the next upload past the budget is refused (503)."""
    budget = 1 << 20
    server, app = blocking_server(threads=1, in_budget=budget)
    blocker = _connect(server)
    blocker.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
    assert app.entered.wait(10)
    body = b"x" * (300 * 1024)
    upload = b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    queued = [_connect(server) for _ in range(3)]  # 870 KiB counted: one more would pass the budget
    try:
        for sock in queued:
            sock.sendall(upload + body)
        pool, intake = server._server.requests, server._server.osreapi_intake
        assert wait_until(lambda: pool.qsize == 3, timeout=10)
        # The count of bytes held is made again every 0.2 s: a closed partial upload leaves it then
        # (after the three were queued, whose bytes the reads had counted until that recount).
        probe = _connect(server)
        probe.sendall(upload + body[: 100 * 1024])
        queued_bytes = 3 * (len(upload) + len(body) - 16 * 1024)
        assert wait_until(lambda: intake._held > queued_bytes, timeout=10)
        probe.close()
        assert wait_until(lambda: intake._held <= queued_bytes, timeout=10)
        late = _connect(server)
        late.sendall(upload + body)
        assert _status(late) == b"503"
        late.close()
        app.release.set()
        assert [_status(sock) for sock in queued] == [b"405"] * 3  # served in turn once the worker is free
    finally:
        for sock in queued + [blocker]:
            sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pipelined", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"])
def test_a_connection_handed_back_while_the_server_stops_is_closed(blocking_server, caplog, pipelined):
    """A worker that finished its answer after the intake had closed registered the keep-alive
    connection in a closed selector: it raised in the worker, and the connection was never closed.
    With a pipelined request behind, the connection went to the queue of whole requests that close()
    had already emptied: never served, never closed (the client waited for the socket's timeout)."""
    server, app = blocking_server(threads=2)
    sock = _connect(server)
    sock.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n" + pipelined)
    assert app.entered.wait(10)
    intake = server._server.osreapi_intake
    with caplog.at_level(logging.DEBUG):
        intake.close()
        app.release.set()
        answer = b""
        while chunk := sock.recv(4096):  # to the end of the connection (the socket waits 10 s at most)
            answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nok"), answer
    failures = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]


@pytest.mark.parametrize("lang, message", [("en", "request line too long"), ("zh", "请求行过长")])
def test_a_request_line_too_long_is_answered_in_the_language_its_query_asks(make_server, lang, message):
    """A 414 came in the server's default language whatever the request asked: the request line was
    not parsed, so its ?lang= was not seen. What of the line was read still tells it."""
    client = make_server(settings=HttpSettings(lang="en" if lang == "zh" else "zh"))
    sock = socket.create_connection((client.host, client.port), timeout=10)
    sock.sendall(b"GET /?lang=%s&pad=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (lang.encode(), b"a" * (70 * 1024)))
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414"), head
    assert json.loads(body)["message"].startswith(message), body



@pytest.mark.timeout(90)
def test_connections_refused_for_want_of_descriptors_read_their_503(start_server):
    """With no descriptor free, each new connection is refused (503) with the one kept in reserve:
    closed, and accepted into at once. A follower opening its log in that instant took the slot and
    kept it; the intake had no reserve left, and the connections behind it (followers, uploads)
    waited unanswered until some descriptor was freed (2 runs in 4). A refused client also reads its
    503 whether it uploads a body or reads only after its connection was closed as the next reserve."""
    server, task_id = running_on_64_descriptors(start_server)
    client = server.client
    followers, late = [], None
    try:
        for _ in range(100):  # each holds a socket and a log: the server runs out of descriptors
            followers.append(socket.create_connection((client.host, client.port), timeout=10))
            followers[-1].sendall(f"GET /{task_id}/0/log?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        statuses = _first_statuses(followers, timeout=10)
        assert b"503" in statuses and set(statuses) <= {b"200", b"503"}, statuses
        late = socket.create_connection((client.host, client.port), timeout=10)
        late.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # read only after the uploads below
        url = f"http://{client.host}:{client.port}/?lang=en"
        uploads = [httpx.post(url, content=b"x" * (1 << 20), timeout=10) for _ in range(5)]
        answer = late.recv(4096)
    finally:
        for sock in followers + ([late] if late else []):
            sock.close()
    assert [(a.status_code, a.headers.get("Retry-After")) for a in uploads] == [(503, "1")] * 5
    assert uploads[0].json()["message"] == "server overloaded: too many connections, try again later", uploads[0].text
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert client.request("PUT", f"/{task_id}?action=kill").status == 200
