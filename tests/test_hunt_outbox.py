"""Faults found by attacking the Outbox (answers written without blocking, the rest sent by the
intake or the stream hub) on the real server, 127.0.0.1: each test fails without its fix."""

from __future__ import annotations

import gc
import json
import socket
import time
import tracemalloc
from collections.abc import Callable

import pytest

from osreapi.http.outbox import Outbox, OutBudget

from .conftest import Client, sh, wait_until
from .test_http_front_answers import THREADS, _unchunk, big_task, healthy, non_reader

PACE = 0.05  # seconds between two reads of a steady slow reader
SLACK = 4 * 2**20  # bytes a server may hold beyond what its budget counts (its own allocations)
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


def body_length(data: bytes) -> int:
    """Bytes of body received (-1: the head is not in yet)."""
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


@pytest.mark.timeout(90)
def test_what_slow_readers_cost_in_memory_is_what_the_budget_counts(make_server):
    """The rest of an answer the socket took part of was kept as a view of the whole answer, and an
    answer sent in part stayed whole until its last byte, while the budget counted only the bytes
    still to send: six non-readers of a 5.4 MB answer held ~32 MB when the budget said ~9 MB (an
    answer a few bytes over what the kernel takes cost all of it, and almost nothing of the budget)."""
    client = make_server(client_timeout=30.0, server_options={"threads": THREADS})
    task_id = big_task(client)
    assert healthy(client)  # first-use allocations done
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        unaccounted = lambda: tracemalloc.get_traced_memory()[0] - before - client.server.answers_waiting
        socks = []
        try:
            for _ in range(6):
                waiting = client.server.answers_waiting
                socks.append(non_reader(client, f"/{task_id}"))
                assert wait_until(lambda: client.server.answers_waiting > waiting)
            assert unaccounted() < SLACK, f"{unaccounted() / 2**20:.0f} MiB held beyond the budget's count"
            for sock in socks:  # each takes 1 MB: the server sends part of what it keeps
                taken = 0
                while taken < 1_000_000:
                    taken += len(sock.recv(1_000_000 - taken))
            assert not wait_until(lambda: unaccounted() >= SLACK, timeout=2), "held beyond the budget's count"
        finally:
            for sock in socks:
                sock.close()
    finally:
        tracemalloc.stop()


def test_an_empty_write_behind_a_kept_answer_does_not_stop_its_sending():
    """cheroot writes an empty chunk when an answer outgrows its Content-Length (it cuts the chunk
    to what is left): kept behind a waiting answer, the empty entry made every later drain send
    nothing and answer 'not done', so the selector woke at once, again and again, until the client
    timeout dropped the connection with its answer cut short."""
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        server_end.settimeout(5)  # as cheroot's sockets: a timeout, so the fd is non-blocking
        client_end.settimeout(5)
        budget = OutBudget()
        outbox = Outbox(server_end, budget)
        answer = b"x" * (8 * 2**20)  # more than a socket pair's buffers hold
        outbox.write(answer)
        assert outbox.queued
        outbox.write(b"")
        received, done = 0, False
        for _ in range(10_000):  # bounded: each round reads up to 1 MiB, or times out
            received += len(client_end.recv(2**20))
            done = outbox.drain()
            if done:
                break
        assert done and budget.used == 0
        client_end.setblocking(False)
        while received < len(answer):
            received += len(client_end.recv(2**20))
        assert received == len(answer)


@pytest.mark.parametrize("query", ["", "?follow=true"])
def test_head_of_a_log_does_not_say_its_body_is_empty(client: Client, query: str):
    """HEAD of a log the hub sends (followed, or long) answered `Content-Length: 0` (Bottle's length
    of the empty body the hub gives a HEAD), though the GET sends the log: a HEAD may state the
    GET's length or none (RFC 9110 8.6)."""
    task_id = client.submit([sh("head -c 2000000 /dev/zero | tr '\\0' x")])  # over a whole answer's 1 MiB
    client.wait(task_id)
    head = client.request("HEAD", f"/{task_id}/0/log{query}")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") is None, head.headers
    assert head.header("Content-Type").startswith("text/plain")
    assert client.get(f"/{task_id}/0/log").body == b"x" * 2_000_000


@pytest.mark.timeout(60)
def test_an_answer_handed_over_as_the_server_stops_is_not_left_kept(make_server):
    """A worker that finishes an answer while the server stops closes its connection, and the
    intake takes it to send the rest. Taken after the intake's close() had closed the connections
    it holds, but before its selector closed, it was registered there and forgotten: never sent,
    never closed, its answer kept in the budget for good (3 of 20 stops of a server answering
    big answers to non-readers).
    The worker's hand-over is made here at that very moment: the connection is taken from the
    selector as if a worker held it, and given back just before the selector closes."""
    client = make_server(client_timeout=30.0, server_options={"threads": THREADS})
    task_id = big_task(client)
    sock = non_reader(client, f"/{task_id}")
    try:
        assert wait_until(lambda: client.server.answers_waiting > 0)
        intake = client.server._server.osreapi_intake
        [(fd, draining)] = [(fd, held) for fd, held in intake._selector.connections if held is not intake.server]
        intake._selector.unregister(fd)  # in a worker's hands, its answer kept
        close_selector = intake._selector.close

        def worker_finishes_then_close() -> None:
            draining.conn.close()  # what cheroot's worker does with its connection once the server stops
            close_selector()

        intake._selector.close = worker_finishes_then_close
        client.server.stop()
        assert client.server.answers_waiting == 0
    finally:
        sock.close()
