"""The stream hub's interface (osreapi/http/streams.py) on a real cheroot server, and log follows
over TLS (served by the worker-thread fallback)."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading

import bottle
import pytest

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
    hub = StreamHub("en", tick=0.05, heartbeat=0.3)
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
        assert sock.recv(4096) == b""  # then the connection closes
    assert feeds[0].closed.wait(5) and wait_until(lambda: hub.count == 0)


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


@pytest.mark.timeout(60)
def test_log_follow_over_tls_is_served_by_the_worker_fallback(start_server, tmp_path):
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
