"""Faults found by attacking the Outbox (answers written without blocking, the rest sent by the
intake or the stream hub) on the real server, 127.0.0.1: each test fails without its fix."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest

from .conftest import Client, sh
from .test_http_front_answers import THREADS, _unchunk, big_task

PACE = 0.05  # seconds between two reads of a steady slow reader
READ = 32 * 1024  # bytes it asks for at each read: ~640 KB/s at most


def steady_reader(client: Client, path: str) -> socket.socket:
    """A connection that asks for `path`; its small receive buffer keeps the answer in the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(20)
    sock.connect((client.host, client.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def read_steadily(sock: socket.socket, whole: Callable[[bytes], bool] = lambda data: False,
                  limit: float = 60.0) -> bytes:
    """Read at a steady pace until the data is `whole`, the connection ends, or `limit` seconds."""
    data = bytearray()
    deadline = time.monotonic() + limit
    while not whole(data) and time.monotonic() < deadline:
        chunk = sock.recv(READ)
        if not chunk:
            break
        data += chunk
        time.sleep(PACE)
    return bytes(data)


def announced_length(data: bytes) -> int | None:
    head, sep, _ = data.partition(b"\r\n\r\n")
    return int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]) if sep else None


def body_length(data: bytes) -> int | None:
    head, sep, body = data.partition(b"\r\n\r\n")
    return len(body) if sep else -1


@pytest.mark.timeout(90)
def test_a_client_that_reads_slowly_but_steadily_gets_its_whole_answer(make_server):
    """The kernel's send buffer held ~4 MB of a 5.4 MB answer; the client emptied it at ~600 KB/s, so
    no send of the Outbox went through for over a second, and the client, taking bytes all along,
    was dropped after the client timeout (1 s) as if it took nothing: its answer stopped short."""
    client = make_server(client_timeout=1.0, server_options={"threads": THREADS})
    task_id = big_task(client)
    sock = steady_reader(client, f"/{task_id}")
    try:
        data = read_steadily(sock, lambda data: body_length(data) == announced_length(data))
    finally:
        sock.close()
    assert body_length(data) == announced_length(data), f"{body_length(data)} of {announced_length(data)} bytes"
    assert json.loads(data.partition(b"\r\n\r\n")[2])["code"] == 0


@pytest.mark.timeout(90)
def test_a_client_that_reads_a_log_slowly_but_steadily_gets_all_of_it(make_server):
    """The same for a log as it stands, sent by the stream hub: its reader was dropped after the
    client timeout while the kernel still held megabytes the client was taking."""
    client = make_server(client_timeout=1.0, server_options={"threads": THREADS})
    task_id = client.submit([sh("head -c 6000000 /dev/zero | tr '\\0' x")])
    client.wait(task_id)
    sock = steady_reader(client, f"/{task_id}/0/log")
    try:
        data = read_steadily(sock)  # the hub closes the connection after the answer
    finally:
        sock.close()
    assert _unchunk(data.partition(b"\r\n\r\n")[2]) == b"x" * 6_000_000
