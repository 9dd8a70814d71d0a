"""GET /events: the feed of task and step changes, on a real server with real steps."""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable

from osreapi.events import Batch, EventBus, Reset
from osreapi.http.app import HttpSettings
from osreapi.records import StepRecord, TaskRecord
from osreapi.vocabulary import State

from .conftest import Client, read_pid, sh, wait_until


class Feed:
    """One subscriber of GET /events, parsed as Server-Sent Events (bounded reads)."""

    def __init__(self, client: Client, path: str = "/events", headers: dict | None = None) -> None:
        self.conn = http.client.HTTPConnection(client.host, client.port, timeout=10)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self.conn.getresponse()

    def next_event(self, timeout: float = 10.0) -> dict:
        """The next event (comments skipped): {"event", "id", "data"}."""
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            line = self.response.readline().decode("utf-8")
            if not line:
                raise AssertionError("the feed ended")
            line = line.rstrip("\n")
            if line == "":
                if "event" in fields:
                    return {**fields, "data": json.loads(fields.get("data", "null"))}
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise AssertionError("no event in time")

    def until(self, predicate: Callable[[dict], bool], limit: int = 200) -> dict:
        for _ in range(limit):
            event = self.next_event()
            if predicate(event):
                return event
        raise AssertionError("no matching event among the next ones")

    def close(self) -> None:
        self.conn.close()


def is_task_state(task_id: str, word: str) -> Callable[[dict], bool]:
    return lambda e: e["event"] == "task" and e["data"]["id"] == task_id and e["data"]["state"] == word


def without_ttl(data: dict) -> str:
    return re.sub(r',?"ttl":"[^"]*"', "", json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def test_task_and_step_events_carry_the_records_as_the_api_gives_them(client: Client) -> None:
    feed = Feed(client)
    assert feed.response.status == 200
    assert feed.response.getheader("Content-Type").startswith("text/event-stream")
    task_id = client.submit([sh("echo hi", name="first")])
    ended = feed.until(is_task_state(task_id, "已结束"))
    listed = next(t for t in client.get("/").json["data"]["tasks"] if t["id"] == task_id)
    assert {k: v for k, v in ended["data"].items() if k != "times"} == {k: v for k, v in listed.items() if k != "times"}
    feed.close()
    replay = Feed(client, f"/events?task={task_id}", {"Last-Event-ID": "0"})
    assert replay.next_event()["event"] == "reset"  # 0 is long gone: reload


def test_step_events_and_last_event_id_resume_without_gap(client: Client) -> None:
    feed = Feed(client)
    task_id = client.submit([sh("echo one", name="a"), sh("echo two", name="b")])
    events = []
    while not events or not is_task_state(task_id, "已结束")(events[-1]):
        events.append(feed.next_event())
    feed.close()
    steps = [e for e in events if e["event"] == "step"]
    final_b = [e for e in steps if e["data"]["step"]["name"] == "b"][-1]["data"]
    # ttl counts down (and the task's expiry is set after its last step's event): compare the rest
    stored = client.get(f"/{task_id}/b").json["data"]
    assert without_ttl(final_b) == without_ttl({"id": task_id, "step": stored})
    seqs = [int(e["id"]) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    resumed = Feed(client, "/events", {"Last-Event-ID": str(seqs[2])})
    again = [resumed.next_event() for _ in events[3:]]
    assert [int(e["id"]) for e in again] == seqs[3:]
    assert [without_ttl(e["data"]) for e in again] == [without_ttl(e["data"]) for e in events[3:]]
    resumed.close()


def test_task_filter_and_language(client: Client) -> None:
    feed = Feed(client, "/events?task=wanted&lang=en")
    other = client.submit([sh("true")])
    client.submit([sh("true")], "?id=wanted")
    ended = feed.until(lambda e: e["event"] == "task" and e["data"]["state"] == "stopped")
    assert ended["data"]["id"] == "wanted"
    client.wait(other)
    feed.close()


def test_bad_parameters_answer_400_naming_them(client: Client) -> None:
    resp = client.get("/events", headers={"Last-Event-ID": "12abc"})
    assert resp.status == 400 and "Last-Event-ID" in resp.json["message"]
    resp = client.get("/events?task=../etc")
    assert resp.status == 400 and resp.json["message"].startswith("task:")
    assert client.post("/?id=events", [sh("true")]).status == 400


def test_a_protected_feed_needs_the_token(make_server) -> None:
    client = make_server(settings=HttpSettings(token="s3cret"))
    assert client.get("/events").status == 401
    feed = Feed(client, "/events", {"Authorization": "Bearer s3cret"})
    assert feed.response.status == 200
    feed.close()


def test_ring_overflow_answers_reset_and_the_filter_skips_ahead() -> None:
    task = TaskRecord(id="t", mode="sequential", count=1, accepted=0.0)
    bus = EventBus(lambda _id: task, capacity=10, clock=lambda: 1.0)
    start = bus.last
    for _ in range(25):
        bus.publish("t", None, (StepRecord(0, "s", State.RUNNING),))
    assert isinstance(bus.since(start), Reset)
    assert isinstance(bus.since(bus.last + 5), Reset)  # a number from after this server's time
    kept = bus.since(bus.last - 10)
    assert isinstance(kept, Batch) and len(kept.events) == 10
    other = bus.since(bus.last - 10, task_id="someone-else")
    assert other.events == () and other.upto == bus.last


def open_raw_feed(client: Client, path: str = "/events") -> socket.socket:
    sock = socket.create_connection((client.host, client.port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def test_a_vanished_subscriber_is_noticed_within_seconds(client: Client) -> None:
    sock = open_raw_feed(client)
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: client.hub.count == 1, timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # vanish: RST, no FIN
    sock.close()
    assert wait_until(lambda: client.hub.count == 0, timeout=5, interval=0.05)


def test_500_subscribers_cost_no_thread_each(client: Client) -> None:
    warm = open_raw_feed(client)  # the hub's own thread starts with the first stream
    assert wait_until(lambda: client.hub.count == 1, timeout=5)
    threads = threading.active_count()
    socks: list[socket.socket] = []
    seen: dict[socket.socket, bytes] = {}
    try:
        for _ in range(20):  # in bursts of 25, each answered before the next (the worker queue is bounded)
            burst = [open_raw_feed(client) for _ in range(25)]
            socks += burst
            assert all(sock.recv(12) == b"HTTP/1.1 200" for sock in burst)
        assert wait_until(lambda: client.hub.count == 501, timeout=30, interval=0.05), client.hub.count
        assert threading.active_count() <= threads  # the fixed worker pool and the hub serve them all
        metrics = client.get("/metrics").body.decode().splitlines()
        assert "osreapi_http_streams 501.0" in metrics  # what an operator sees
        task_id = client.submit([sh("true")], "?id=for-everyone")
        for sock in socks[::50]:  # a sample of them all get the news
            assert wait_until(lambda sock=sock: task_id.encode() in _received(sock, seen), timeout=10)
    finally:
        for sock in [warm, *socks]:
            sock.close()
    assert wait_until(lambda: client.hub.count == 0, timeout=10, interval=0.05)


def _received(sock: socket.socket, seen: dict[socket.socket, bytes]) -> bytes:
    """Everything this socket has received so far (non-blocking reads, kept in `seen`)."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            seen[sock] = seen.get(sock, b"") + chunk
    except BlockingIOError:
        pass
    return seen.get(sock, b"")


def test_events_arrive_for_kill_from_a_running_step(client: Client, tmp_path) -> None:
    pid_file = tmp_path / "pid"
    feed = Feed(client)
    task_id = client.submit([sh(f"echo $$ > {pid_file}; exec sleep 30", name="long")])
    feed.until(lambda e: e["event"] == "step" and e["data"]["step"]["state"] == "执行中")
    read_pid(pid_file)
    assert client.request("PUT", f"/{task_id}/long?action=kill").status == 200
    killed = feed.until(lambda e: e["event"] == "step" and e["data"]["step"]["state"] == "已终止")
    assert killed["data"]["step"]["code"] == 137
    feed.close()


def test_a_deleted_or_swept_task_is_announced(make_server) -> None:
    now = [time.time()]
    client = make_server(key_expire="10s", clock=lambda: now[0])
    feed = Feed(client)
    deleted = client.submit([sh("true")])
    swept = client.submit([sh("true")])
    client.wait(deleted), client.wait(swept)
    assert client.request("DELETE", f"/{deleted}").status == 200
    gone = feed.until(lambda e: e["event"] == "delete")
    assert gone["data"] == {"id": deleted}
    now[0] += 60  # past the other's expiry: the sweep removes it
    assert client.executor.sweep() == 1
    assert feed.until(lambda e: e["event"] == "delete")["data"] == {"id": swept}
    feed.close()


def _bus_of_two_tasks() -> EventBus:
    tasks = {name: TaskRecord(id=name, mode="sequential", count=1, accepted=0.0) for name in ("a", "b")}
    return EventBus(tasks.get, capacity=100, clock=lambda: 1.0)


def test_since_reads_the_ring_alike_from_either_end() -> None:
    bus = _bus_of_two_tasks()
    first = bus.last
    for n in range(150):  # past the capacity: the ring holds the newest 100
        bus.publish("ab"[n % 3 == 0], None, (StepRecord(n, "s", State.RUNNING),))
    for seq in range(bus.last - 100, bus.last + 1):
        got = bus.since(seq)
        assert [e.seq for e in got.events] == list(range(seq + 1, bus.last + 1)), seq
        only_a = bus.since(seq, task_id="a")
        assert all(e.task.id == "a" for e in only_a.events) and only_a.upto == bus.last
        assert [e.step.index for e in only_a.events] == [e.step.index for e in got.events if e.task.id == "a"]
    assert isinstance(bus.since(first), Reset) and isinstance(bus.since(bus.last - 101), Reset)


def test_a_waiter_for_one_task_sleeps_through_the_others_events() -> None:
    """GET /<id>?wait= waits on its task's events only: a thread woken at every event of every
    task (as before) spent the server's time waking to look."""
    bus = _bus_of_two_tasks()
    seq = bus.last
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(bus.wait_for_task("a", seq, 1.0)))
    waiter.start()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline and waiter.is_alive():  # other tasks' events, for half its wait
        bus.publish("b", None, (StepRecord(0, "s", State.RUNNING),))
    waiter.join(10)
    assert results == [False]  # timed out: none of b's events woke it with an answer

    later = bus.last
    waiter = threading.Thread(target=lambda: results.append(bus.wait_for_task("a", later, 30.0)))
    waiter.start()
    bus.publish("a", None, (StepRecord(0, "s", State.RUNNING),))  # before or during its wait: the same
    waiter.join(10)
    assert results == [False, True] and not bus._watchers  # woken by its task's event, and forgotten
    assert bus.wait_for_task("b", seq, 30.0)  # news already there: at once
    bus.forget(("a",))
    assert bus.wait_for_task("a", bus.last - 1, 30.0)  # a deletion is news too


def test_a_feed_of_one_task_ends_after_its_delete(client: Client) -> None:
    """Nothing can come for a task after its delete event: a `?task=` subscriber stayed open for
    ever, a connection (and a hub entry) held for nothing."""
    task_id = client.submit([sh("true")])
    feed = Feed(client, f"/events?task={task_id}", {"Last-Event-ID": "0"})
    client.wait(task_id)
    assert client.request("DELETE", f"/{task_id}").status == 200
    assert feed.until(lambda e: e["event"] == "delete")["data"] == {"id": task_id}
    assert feed.response.read() == b""  # the stream ends (its last chunk), bounded by the socket timeout
    assert wait_until(lambda: client.hub.count == 0)
    feed.close()


def test_an_event_tells_the_ttl_as_it_was_when_it_happened_to_every_subscriber(make_server) -> None:
    """A subscriber reading an event later (resumed, or slow) got the ttl counted from its read, so two
    subscribers saw two versions of one event: an event tells how things stood when it happened, and
    is rendered once per language for all."""
    now = [time.time()]
    client = make_server(key_expire="10s", clock=lambda: now[0])
    first = Feed(client)
    task_id = client.submit([sh("true")])
    ended = first.until(is_task_state(task_id, "已结束"))
    assert ended["data"]["times"]["ttl"] == "10s"
    now[0] += 4
    for lang, word in (("zh", "已结束"), ("en", "stopped")):
        later = Feed(client, f"/events?lang={lang}", headers={"Last-Event-ID": str(int(ended["id"]) - 1)})
        again = later.next_event()
        assert (again["id"], again["data"]["state"], again["data"]["times"]["ttl"]) == (ended["id"], word, "10s")
        later.close()
    assert client.get(f"/{task_id}").json["data"][0]["times"]["ttl"] == "6s"  # a read is as of now
    first.close()
