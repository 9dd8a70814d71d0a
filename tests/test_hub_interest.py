"""The stream hub reads a stream at the committed changes of the task it waits for, not at every
task's: a client waiting for one long task no longer costs a hub wake-up (and a read of every
stream) at each step of every other task."""

from __future__ import annotations

import socket
import threading

import bottle
import pytest

from osreapi.http.server import HttpServer
from osreapi.http.streams import Handoff, StreamHub

from .conftest import wait_until


class CountingFeed:
    """A source that never finishes and counts how often the hub reads it."""

    def __init__(self, watches: str | None) -> None:
        self.watches = watches
        self.reads = 0
        self.closed = threading.Event()

    def read(self) -> tuple[bytes, bool]:
        self.reads += 1
        return b"", False

    def heartbeat(self) -> bytes:
        return b""

    def close(self) -> None:
        self.closed.set()


@pytest.fixture
def quiet_hub():
    """A hub whose tick never comes during a test: only wakes make it read."""
    hub = StreamHub("en", tick=600.0, heartbeat=600.0, stall_limit=600.0)
    feeds: dict[str, CountingFeed] = {}
    app = bottle.Bottle()

    @app.get("/feed/<task>")
    def feed(task: str) -> bottle.HTTPResponse:
        source = feeds[task] = CountingFeed(None if task == "all" else task)
        return hub.serve(bottle.request.environ, "200 OK", [("Content-Type", "text/plain")], source)

    server = HttpServer(Handoff(app, hub), "127.0.0.1", 0)
    address = server.start()
    sockets: list[socket.socket] = []

    def follow(task: str) -> CountingFeed:
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(f"GET /feed/{task} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sockets.append(sock)
        assert wait_until(lambda: task in feeds and feeds[task].reads >= 1)  # adopted: read once
        return feeds[task]

    yield hub, follow
    for sock in sockets:
        sock.close()
    server.stop()


def test_a_change_wakes_only_the_streams_waiting_for_its_task(quiet_hub):
    hub, follow = quiet_hub
    waits_for_a, waits_for_c = follow("a"), follow("c")
    before_a, before_c = waits_for_a.reads, waits_for_c.reads
    for _ in range(20):
        hub.wake("b")  # nobody waits for task b: nothing is read
    hub.wake("c")
    assert wait_until(lambda: waits_for_c.reads > before_c)
    assert waits_for_a.reads == before_a


def test_a_stream_of_every_task_is_read_at_any_change_and_a_bare_wake_reads_all(quiet_hub):
    hub, follow = quiet_hub
    waits_for_a, every_task = follow("a"), follow("all")
    before_a, before_all = waits_for_a.reads, every_task.reads
    hub.wake("b")
    assert wait_until(lambda: every_task.reads > before_all)
    assert waits_for_a.reads == before_a
    hub.wake()  # no task named (deletions of several): every stream is read
    assert wait_until(lambda: waits_for_a.reads > before_a)
