"""Faults found by the hunt of the event feed, the live output and the dashboard's routes: each test
reproduces one against a real cheroot server and fails without its fix."""

from __future__ import annotations

import gc
import re
import socket
import tracemalloc

import pytest

from .conftest import Client, sh


@pytest.mark.parametrize("asset", ["/ui/", "/ui/app.js", "/ui/tasks/some-task"])
@pytest.mark.parametrize("ranges", ["bytes=999999-", "garbage", "bytes=5-1"])
def test_a_range_on_a_dashboard_file_is_ignored_not_answered_with_an_html_page(client: Client, asset: str, ranges: str) -> None:
    """Bottle answered a Range it could not serve (past the end, or not a range at all) with its
    HTML 416 page, in English whatever the request's language: the files are now always whole."""
    whole = client.get(asset)
    assert whole.status == 200 and whole.header("Accept-Ranges") is None
    answer = client.get(asset + "?lang=zh", headers={"Range": ranges})
    assert (answer.status, answer.body) == (200, whole.body)
    assert client.get(asset, headers={"Range": "bytes=0-4"}).body == whole.body  # never a part


@pytest.mark.parametrize("path", ["/ui/index.html", "/ui/tasks/a/b", "/ui/%2e%2e%2fsetup.py", "/ui/x.js"])
def test_an_unknown_dashboard_path_is_no_such_route_not_an_unknown_task(client: Client, path: str) -> None:
    """`/ui/index.html` reached GET /<id>/<step> and answered that task 'ui' did not exist (no route
    takes a reserved name as a task id now)."""
    answer = client.get(path + "?lang=en")
    assert answer.status == 404 and answer.json["message"] == "no such route", answer.body


def _subscribe(client: Client, path: str = "/events") -> socket.socket:
    """A raw feed subscriber, its head read (the stream has begun)."""
    host, port = client.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = b""
    while b": osreapi events" not in received:
        received += sock.recv(4096)
    return sock


_ENDED = re.compile(rb'event: task\ndata: \{"id":"([^"]+)","state":"\xe5\xb7\xb2\xe7\xbb\x93\xe6\x9d\x9f"')  # 已结束


def _read_feed(sock: socket.socket, tasks: list[str]) -> tuple[list[int], list[str]]:
    """The ids of the events read and the tasks seen ending, until every one of `tasks` has; only the event
    being read is kept (the stream itself would be most of the memory measured)."""
    ids: list[int] = []
    ended: list[str] = []
    pending = b""
    while not set(tasks) <= set(ended):
        chunk = sock.recv(65536)
        assert chunk, "the feed ended"
        *events, pending = (pending + chunk).split(b"\n\n")
        for event in events:
            ids += [int(i) for i in re.findall(rb"\nid: ([0-9]+)$", event)]
            ended += [t.decode() for t in _ENDED.findall(event)]
    return ids, ended


@pytest.mark.timeout(120)
def test_a_feed_subscriber_far_behind_is_not_handed_every_event_at_once(client: Client) -> None:
    """A subscriber that had stopped reading got, as soon as it read again, every event it was
    behind rendered in one piece: a finished step's event carries its output (1 MiB of control
    characters is 6 MiB of JSON), so each such subscriber held tens of MiB. Now one read renders
    64 KiB past its first event, and the subscriber still gets every event once, in order."""
    script = "head -c 1000000 /dev/zero | tr '\\0' '\\1'"
    client.wait(client.submit([sh(script)]), timeout=60)  # warm up: first-use allocations
    subscribers = [_subscribe(client) for _ in range(3)]
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        tasks = [client.submit([sh(script)]) for _ in range(12)]
        for task_id in tasks:
            assert client.wait(task_id, timeout=60).json["code"] == 0
        seen = [_read_feed(sock, tasks) for sock in subscribers]
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        for sock in subscribers:
            sock.close()
    assert peak < 128 * 2**20, f"{peak / 2**20:.0f} MiB at the peak for 3 subscribers"
    for ids, ended in seen:
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # in order, no gap, no duplicate
        assert sorted(ended) == sorted(tasks)  # each once


@pytest.mark.parametrize("route", ["/events", "/{task}/0/log"])
def test_a_last_event_id_that_is_not_a_number_is_echoed_as_written(client: Client, route: str) -> None:
    """The header's UTF-8 bytes were echoed as WSGI's Latin-1 text: `１２` came back as 'ï¼\\x91ï¼\\x92'."""
    path = route.format(task=client.submit([sh("echo hi")]))
    answer = client.get(path + "?lang=en", headers={"Accept": "text/event-stream", "Last-Event-ID": "１２".encode()})
    assert answer.status == 400 and "'１２'" in answer.json["message"], answer.body


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("PUT", "/events?action=kill", 405), ("DELETE", "/events", 405), ("DELETE", "/metrics", 405), ("PUT", "/ui/app.js?action=kill", 405),
     ("DELETE", "/ui", 405), ("GET", "/favicon.ico", 404), ("GET", "/Healthz/0", 404), ("GET", "/version/0/log", 404)],
)
def test_a_route_name_is_never_read_as_a_task_id(client: Client, method: str, path: str, status: int) -> None:
    """`PUT /events` reached PUT /<id> and answered 'action is missing'; `DELETE /metrics` said the
    task did not exist. No task can have such an id (spec.RESERVED_IDS): the answer is about the route."""
    answer = client.request(method, path + ("&" if "?" in path else "?") + "lang=en")
    expected = "method not allowed" if status == 405 else "no such route"
    assert (answer.status, answer.json["message"]) == (status, expected), answer.body


def test_a_task_whose_id_starts_like_a_route_is_still_a_task(client: Client) -> None:
    for task_id in ("events2", "ui-x", "metrics.json", "version_1"):
        assert client.submit([sh("echo hi")], query=f"?id={task_id}") == task_id
        assert client.wait(task_id).json["code"] == 0
        assert client.get(f"/{task_id}/0/log").body == b"hi\n"
        assert client.request("DELETE", f"/{task_id}").status == 200
    metrics = client.get("/metrics").body.decode()
    assert 'route="/<task_id>/<step>/log"' in metrics and 'method="DELETE",route="/<task_id>"' in metrics  # labels as written
