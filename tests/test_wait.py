"""GET /<id>?wait=<duration>: one request that answers when the task ends (a stream on the hub)."""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest

from .conftest import Client, sh, wait_until


def without_ttl(answer: dict) -> dict:
    """The answer without the time left to live (it counts down between two reads)."""
    steps = [{**step, "times": {k: v for k, v in step["times"].items() if k != "ttl"}} for step in answer.get("data") or []]
    return {**answer, "data": steps}


def answer_in_thread(client: Client, path: str) -> tuple[threading.Thread, list]:
    got: list = []
    thread = threading.Thread(target=lambda: got.append(client.get(path)), daemon=True)
    thread.start()
    return thread, got


@pytest.mark.timeout(60)
def test_wait_answers_when_the_task_ends_not_before(client: Client, tmp_path):
    gate = tmp_path / "gate"
    task_id = client.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.05; done; echo done")])
    thread, got = answer_in_thread(client, f"/{task_id}?wait=30s&lang=en")
    wait_until(lambda: client.get(f"/{task_id}").json["code"] == 1001, 10)
    thread.join(0.5)
    assert thread.is_alive() and not got  # still waiting: the task runs
    gate.touch()
    thread.join(20)
    assert got and got[0].status == 200
    body = got[0].json
    assert body["code"] == 0 and body["message"] == "success"
    assert without_ttl(body) == without_ttl(client.get(f"/{task_id}?lang=en").json)  # the plain answer


def test_wait_on_an_ended_or_unknown_task_answers_at_once(client: Client):
    task_id = client.submit([sh("exit 3")])
    client.wait(task_id)
    assert without_ttl(client.get(f"/{task_id}?wait=60s").json) == without_ttl(client.get(f"/{task_id}").json)
    missing = client.get("/no-such-task?wait=60s&lang=en")
    assert missing.status == 404 and missing.json["code"] == 1003


@pytest.mark.timeout(30)
def test_wait_ends_with_the_running_answer_when_the_time_is_up(client: Client):
    task_id = client.submit([sh("sleep 30")])
    resp = client.get(f"/{task_id}?wait=200ms&lang=en")
    assert resp.status == 200 and resp.json["code"] == 1001
    client.request("PUT", f"/{task_id}?action=kill")


@pytest.mark.parametrize("value", ["soon", "-1s", "10", "1x", ""])
def test_a_bad_wait_is_a_400_naming_it(client: Client, value: str):
    task_id = client.submit([sh("sleep 30")])
    resp = client.get(f"/{task_id}?wait={value}&lang=en")
    assert resp.status == 400 and resp.json["message"].startswith("wait: expected a duration")
    zh = client.get(f"/{task_id}?wait={value}&lang=zh")
    assert zh.status == 400 and zh.json["message"].startswith("wait: 应为时长")
    client.request("PUT", f"/{task_id}?action=kill")


@pytest.mark.timeout(60)
def test_waiting_clients_hold_no_worker_thread(make_server):
    """More waiters than cheroot has worker threads (32): all are answered when their tasks end,
    and a control request gets through while they wait."""
    client = make_server(pool_size=40)
    ids = [client.submit([sh("sleep 30")]) for _ in range(40)]
    waiters = [answer_in_thread(client, f"/{task_id}?wait=60s&lang=en") for task_id in ids]
    wait_until(lambda: all(client.get(f"/{i}").json["code"] == 1001 for i in ids), 20)
    for task_id in ids:
        assert client.request("PUT", f"/{task_id}?action=kill").status == 200
    for thread, got in waiters:
        thread.join(20)
        assert got and got[0].json["code"] == 1002 and "killed" in json.dumps(got[0].json)


@pytest.mark.timeout(120)
def test_every_wait_is_answered_by_the_tasks_end_not_by_a_tick(make_executor, tmp_path):
    """With the hub's periodic look an hour apart, only the wake-up sent at each committed change
    can answer a wait: 30 waits in a row on running tasks, each answered when its task ends (a
    lost wake-up would leave one waiting for the hour)."""
    from osreapi.http.app import HttpSettings, make_app
    from osreapi.http.server import HttpServer

    app = make_app(make_executor(), HttpSettings(), stream_tick=3600.0)
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    try:
        client = Client(server.url)
        for attempt in range(30):
            gate = tmp_path / f"gate{attempt}"
            task_id = client.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.01; done; echo {attempt}")])
            thread, got = answer_in_thread(client, f"/{task_id}?wait=60s&lang=en")
            assert wait_until(lambda: app.hub.count == 1, 10)  # waiting on the hub
            client.submit([sh("true")] * 20)  # a burst of commits (and wake-ups) meanwhile
            gate.touch()
            thread.join(30)
            assert got and got[0].json["code"] == 0, attempt
            assert wait_until(lambda: app.hub.count == 0, 10)
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_wait_with_detail_answers_the_detail_whether_it_waited_or_not(client: Client, tmp_path):
    gate = tmp_path / "gate"
    task_id = client.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.02; done; echo done")])
    thread, got = answer_in_thread(client, f"/{task_id}?wait=30s&detail=true")
    assert wait_until(lambda: client.hub.count == 1, 10)  # it waits
    gate.touch()
    thread.join(20)
    waited = got[0].json
    at_once = client.get(f"/{task_id}?wait=30s&detail=true").json
    assert isinstance(waited["data"], dict) and waited["data"]["steps"][0]["message"] == "done\n"
    assert waited["data"]["task"]["id"] == at_once["data"]["task"]["id"] == task_id


def test_a_wait_whose_events_were_dropped_looks_at_the_record():
    """More news than the bus keeps between two reads: the wait asks the record, and a running
    task is not answered as if it had ended."""
    from osreapi.events import EventBus
    from osreapi.http.wait import TaskWait
    from osreapi.records import TaskRecord
    from osreapi.vocabulary import State

    bus = EventBus(lambda _id: None, capacity=4)
    running = TaskRecord(id="t1", mode="sequential", count=1, accepted=0.0, state=State.RUNNING)
    record = {"t1": running}
    wait = TaskWait(bus, "t1", bus.last, deadline=float("inf"), load=record.get, answer=lambda: b"answer")
    for _ in range(10):
        bus.publish("t2", TaskRecord(id="t2", mode="sequential", count=1, accepted=0.0), ())
    assert wait.read() == (b"", False)
    record["t1"] = running.with_(state=State.STOPPED)
    for _ in range(10):
        bus.publish("t2", TaskRecord(id="t2", mode="sequential", count=1, accepted=0.0), ())
    assert wait.read() == (b"answer", True)


@pytest.mark.timeout(30)
def test_head_with_wait_answers_at_once(client: Client):
    """HEAD has no body to stream: it does not wait (it would hold a worker thread)."""
    task_id = client.submit([sh("sleep 30")])
    thread, got = answer_in_thread(client, f"/{task_id}?wait=60s")
    assert wait_until(lambda: client.hub.count == 1, 10)  # a GET waits on the hub
    heads = [client.request("HEAD", f"/{task_id}?wait=60s") for _ in range(3)]
    assert [resp.status for resp in heads] == [200] * 3 and client.hub.count == 1
    client.request("PUT", f"/{task_id}?action=kill")
    thread.join(20)
    assert got and got[0].json["code"] == 1002


@pytest.mark.timeout(30)
def test_a_wait_cut_by_the_server_stopping_gets_the_answer_as_it_stands(client: Client):
    task_id = client.submit([sh("sleep 30")])
    thread, got = answer_in_thread(client, f"/{task_id}?wait=60s&lang=en")
    assert wait_until(lambda: client.hub.count == 1, 10)
    client.hub.stop()
    thread.join(10)
    assert got and got[0].status == 200 and got[0].json["code"] == 1001
    client.request("PUT", f"/{task_id}?action=kill")


def _answers(sock: socket.socket, count: int) -> list[bytes]:
    """Read `count` whole answers (each with a Content-Length or chunked) from one connection."""
    buffer, answers = b"", []
    while len(answers) < count:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            head, rest = buffer[:head_end], buffer[head_end + 4:]
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length and len(rest) >= int(length.group(1)):
                answers.append(head + b"\r\n\r\n" + rest[: int(length.group(1))])
                buffer = rest[int(length.group(1)):]
                continue
            if not length and b"\r\n0\r\n\r\n" in b"\r\n" + rest:
                end = (b"\r\n" + rest).index(b"\r\n0\r\n\r\n") + 5
                answers.append(head + b"\r\n\r\n" + rest[:end])
                buffer = rest[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, ("closed before answer", len(answers) + 1, buffer[:300])
        buffer += chunk
    return answers


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/{id}?wait=30s", "/{id}/0/log?follow=true"])
def test_a_stream_that_ends_keeps_its_connection_and_the_request_sent_meanwhile(client: Client, tmp_path, path):
    """A wait past 20 ms or a follow is served by the hub; once it has ended, its plain HTTP/1.1
    connection serves the request the client pipelined meanwhile, and the next one: an
    orchestrator waiting on task after task keeps one connection. They used to close."""
    gate = tmp_path / "gate"
    task_id = client.submit([sh(f"echo first; while [ ! -e {gate} ]; do sleep 0.02; done; echo done")])
    with socket.create_connection((client.host, client.port), timeout=20) as sock:
        sock.sendall(f"GET {path.format(id=task_id)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert wait_until(lambda: client.hub.count == 1, timeout=10)  # handed to the hub
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # pipelined behind the stream
        gate.touch()
        streamed, health = _answers(sock, 2)
        assert b"transfer-encoding: chunked" in streamed.lower() and b"connection: close" not in streamed.lower()
        assert b"done" in streamed and b'"code":0' in health
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")  # and the next request, later
        (version,) = _answers(sock, 1)
        assert version.startswith(b"HTTP/1.1 200") and b"version" in version


@pytest.mark.timeout(60)
@pytest.mark.parametrize("request_line", ["GET {path} HTTP/1.0\r\n", "GET {path} HTTP/1.1\r\nConnection: close\r\n"])
def test_a_stream_whose_client_cannot_keep_its_connection_closes_it(client: Client, request_line: str):
    task_id = client.submit([sh("sleep 0.5")])
    with socket.create_connection((client.host, client.port), timeout=20) as sock:
        sock.sendall((request_line.format(path=f"/{task_id}?wait=30s") + "Host: x\r\n\r\n").encode())
        received = b""
        while chunk := sock.recv(65536):  # to the close
            received += chunk
    assert b'"code":0' in received


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", [b"", b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"])
def test_a_request_pipelined_with_the_stream_s_own_is_answered_after_it(client: Client, tmp_path, body: bytes):
    """A request sent in the same packet as the stream's (read by the intake before the hub had the
    socket) is answered once the stream has ended; the streamed request's body, unread by its
    route, is skipped, never taken for a request. The pipelined one was lost: the client waited
    until the idle connection was closed."""
    gate = tmp_path / "gate"
    task_id = client.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.02; done; echo done")])
    with socket.create_connection((client.host, client.port), timeout=20) as sock:
        head = f"GET /{task_id}?wait=30s HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        sock.sendall(head + body + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: client.hub.count == 1, timeout=10)  # the wait is on the hub
        gate.touch()
        streamed, health = _answers(sock, 2)
        assert b"done" in streamed and health.startswith(b"HTTP/1.1 200") and b'"code":0' in health
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the next answer is this one's
        (again,) = _answers(sock, 1)
        assert b'"code":0' in again and b"version" not in again


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(20)


@pytest.mark.timeout(60)
def test_streams_that_end_together_keep_no_more_connections_than_the_server_holds(make_server, tmp_path):
    """Six waits end at once on a server that holds four connections: four are kept for their
    clients' next requests, two close. All six were kept, past the limit: new clients got 503 until
    the idle ones timed out."""
    client = make_server(server_options={"max_connections": 4})
    gate = tmp_path / "gate"
    task_id = client.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.02; done")])
    socks: list[socket.socket] = []
    try:
        for count in range(1, 7):  # one at a time: the server holds four connections while it reads them
            socks.append(socket.create_connection((client.host, client.port), timeout=20))
            socks[-1].sendall(f"GET /{task_id}?wait=30s HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert wait_until(lambda: client.hub.count == count, timeout=10)
        gate.touch()
        for sock in socks:
            (answer,) = _answers(sock, 1)
            assert b'"code":0' in answer
        assert wait_until(lambda: sum(map(_closed_by_server, socks)) == 2, timeout=5)
        kept = [sock for sock in socks if not _closed_by_server(sock)]
        for sock in kept:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            (health,) = _answers(sock, 1)
            assert b'"code":0' in health
    finally:
        for sock in socks:
            sock.close()
