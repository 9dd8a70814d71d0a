"""Faults found by attacking the real server (the fault hunt): each test reproduces one against a
real cheroot server and real processes, and fails without its fix."""

from __future__ import annotations

import gc
import json
import signal
import socket
import tracemalloc

import pytest

from osreapi.events import Batch, EventBus, Reset
from osreapi.http.app import HttpSettings
from osreapi.http.intake import request_ready
from osreapi.records import StepRecord, TaskRecord
from osreapi.vocabulary import State

from .conftest import Client, gone, read_pid, sh, start_step, wait_until


@pytest.mark.parametrize("method", ["PUT", "DELETE", "GET"])
def test_a_path_that_is_not_utf8_is_refused_not_read_as_another_task(client: Client, method: str):
    """Bottle drops the bytes of a path that are not UTF-8: `/vic%FFtim` reached task `victim`, and
    `PUT /vic%FFtim?action=kill` killed it."""
    running = method == "PUT"
    victim = start_step(client, "sleep 30") if running else client.submit([sh("echo done")])
    if not running:
        client.wait(victim)
    query = "?action=kill" if running else ""
    resp = client.request(method, f"/{victim[:3]}%FF{victim[3:]}{query}", headers={"Accept-Language": "en"})
    assert resp.status == 400, resp.body
    assert resp.json == {"code": 400, "message": "path: not valid UTF-8 at byte 4"}
    assert client.get(f"/{victim}").json["code"] == (1001 if running else 0)  # untouched
    if running:
        assert client.request("PUT", f"/{victim}?action=kill").status == 200


def test_an_undecodable_path_never_reaches_the_list_or_a_submit(client: Client):
    assert client.get("/%FF").status == 400
    resp = client.post("/%FF?lang=zh", [sh("echo never")])
    assert resp.status == 400 and "UTF-8" in resp.json["message"]
    assert client.get("/").json["data"]["total"] == 0  # nothing was submitted
    assert client.get("/ui/%FF").status == 400


@pytest.mark.parametrize(
    ("method", "path", "echoed"),
    [
        ("PUT", "/{id}?action=%E6%9A%82%E5%81%9C", "'暂停'"),  # 暂停 = pause, as a Chinese user may type it
        ("GET", "/?sort=%E5%BC%80%E5%A7%8B", "'开始'"),
        ("GET", "/{id}?wait=%E4%BA%94s", "'五s'"),
        ("GET", "/{id}/0/log?follow=%E6%98%AF", "'是'"),
        ("GET", "/events?task=%E4%BB%BB%E5%8A%A1", "'任务'"),
        ("GET", "/{id}?detail=%FF", "'\ufffd'"),  # a bad byte: replaced, and still refused by name
    ],
)
def test_a_query_value_is_echoed_as_the_client_wrote_it(client: Client, method: str, path: str, echoed: str):
    """The query reached the routes as Latin-1 text: `?action=暂停` was refused as 'æ\\x9a\\x82å...'."""
    task_id = client.submit([sh("echo done")])
    resp = client.request(method, path.format(id=task_id), headers={"Accept-Language": "en"})
    assert resp.status == 400, resp.body
    assert echoed in resp.json["message"], resp.json


def _answer_to(client: Client, head: bytes) -> bytes:
    """Send a request head alone; return the server's first answer bytes (bounded by the timeout)."""
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
        return answer


def test_a_body_over_max_body_announced_with_expect_continue_is_refused_not_invited(make_server):
    """cheroot answered `100 Continue` to any Expect, so a client (curl does this above 1 MiB)
    uploaded megabytes the server then threw away behind its 413."""
    client = make_server(settings=HttpSettings(max_body=1000))
    for length in (1001, 5_000_000):
        head = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % length
        answer = _answer_to(client, head)
        assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert client.get("/").json["data"]["total"] == 0


SMUGGLED = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"


def _all_answers(client: Client, data: bytes) -> bytes:
    """Send bytes as they are on one connection; everything the server answers before it closes."""
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):  # bounded by the socket timeout
            answer += chunk
        return answer


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: %d\r\nContent-Length: 2\r\n" % (2 + len(SMUGGLED)),  # a proxy reads the first
        b"Content-Length: 2\r\nContent-Length: %d\r\n" % (2 + len(SMUGGLED)),
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (5 + len(SMUGGLED)),
    ],
)
def test_an_ambiguous_body_length_is_refused_and_nothing_hides_in_it(client: Client, head: bytes):
    """Two Content-Lengths, or one with chunked: cheroot took the last length (or the chunks), and
    the rest of the body ran as a request of its own (request smuggling past a proxy that reads the
    first length)."""
    body = b"0\r\n\r\n" if b"chunked" in head else b"[]"
    trailing = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = _all_answers(client, b"POST / HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\n" + head + b"\r\n" + body + SMUGGLED + trailing)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # closed after it: nothing smuggled ran
    assert b"Connection: close" in answer and b"Content-Length repeated, or sent with Transfer-Encoding" in answer
    assert client.get("/").json["data"]["total"] == 0


@pytest.mark.parametrize(
    ("data", "ready", "body"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nab", False, 5),  # curl's order
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nabcde", True, 5),
        (b"POST / HTTP/1.1\r\nContent-Length: 9\r\nContent-Length: 2\r\n\r\nab", True, 0),  # the worker refuses it
        (b"POST / HTTP/1.1\r\nContent-Length: 5\x0b\r\n\r\nab", False, 5),  # stripped by cheroot: a length
        (b"POST / HTTP/1.1\r\nContent-Length:\x0c5 \r\n\r\nabcde", True, 5),
    ],
)
def test_the_intake_reads_a_content_length_on_any_line(data: bytes, ready: bool, body: int):
    """Only a Content-Length on the head's last line was seen (the pattern wanted the line to end
    without its CR): any other request went to a worker before its body had arrived."""
    assert request_ready(data, max_header=4096, max_body=1000) == (ready, body)


def test_bodies_owed_do_not_hold_the_workers(make_server):
    """40 POSTs with the Content-Length before another header (curl's order) and their bodies owed
    took the 32 workers: every other request waited for --read_timeout."""
    client = make_server(read_timeout=120.0)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n["
    owing = [socket.create_connection((client.host, client.port), timeout=10) for _ in range(40)]
    try:
        for sock in owing:
            sock.sendall(head)
        assert client.get("/healthz").status == 200  # the client gives up after 30 s, long before 120 s
        for sock in owing:  # still waiting for their bodies, unanswered
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in owing:
            sock.close()


@pytest.mark.parametrize("request_line", [b"GET /version HTTP/2.0", b"PRI * HTTP/2.0", b"GET /version HTTP/9.9"])
def test_an_unsupported_http_version_is_a_client_error_that_names_it(client: Client, request_line: bytes):
    """cheroot's 505 was answered "internal error", then 505: a 5xx for what a client sent (its
    headers are not read yet: the server's language)."""
    answer = _all_answers(client, request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body == {"code": 400, "message": "不支持的 HTTP 版本: 请使用 HTTP/1.1 (或 1.0)"}


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"identity"])
def test_an_unsupported_transfer_encoding_is_a_client_error_that_names_it(client: Client, coding: bytes):
    """cheroot answers 501 for a transfer coding it does not decode: a 5xx for what a client sent."""
    head = b"POST / HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\nTransfer-Encoding: " + coding
    answer = _all_answers(client, head + b"\r\nConnection: close\r\n\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body == {"code": 400, "message": "unsupported Transfer-Encoding: only chunked is accepted"}
    assert client.get("/").json["data"]["tasks"] == []  # nothing was taken


def test_the_event_ring_holds_a_bounded_amount_of_step_output() -> None:
    """Every finished step's event kept its whole output (up to --max_output, 1 MiB) for the last
    10,000 events: up to ~10 GB, 100 MB after a hundred 1 MB builds."""
    task = TaskRecord(id="t", mode="parallel", count=1, accepted=0.0)
    bus = EventBus(lambda _id: task, output_budget=8_000_000)
    start = bus.last
    for index in range(30):
        bus.publish("t", None, (StepRecord(index, f"s{index}", State.STOPPED, code=0, output="x" * 1_000_000),))
    kept = bus.since(bus.last - 8)
    assert isinstance(kept, Batch) and [e.step.index for e in kept.events] == list(range(22, 30))
    assert isinstance(bus.since(bus.last - 9), Reset)  # the ninth newest went with the budget
    assert isinstance(bus.since(start), Reset)
    huge = StepRecord(30, "s30", State.STOPPED, code=0, output="y" * 20_000_000)  # alone over the budget
    bus.publish("t", None, (huge,))
    newest = bus.since(bus.last - 1)
    assert isinstance(newest, Batch) and newest.events[0].step is huge


@pytest.mark.timeout(300)
def test_a_server_running_big_output_steps_does_not_keep_their_outputs(client: Client):
    """The same through a real server (in this process): 120 steps of 1 MiB of output each."""
    script = "head -c 1100000 /dev/zero | tr '\\0' x"
    client.wait(client.submit([sh(script)]), timeout=60)  # warm up: first-use allocations
    tracemalloc.start()  # what Python objects hold (the allocator's own keeping aside)
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(120):
            assert client.wait(client.submit([sh(script)]), timeout=60).json["code"] == 0
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 64 * 2**20, f"{held / 2**20:.0f} MiB more held after 120 MiB of output"


@pytest.mark.timeout(90)
def test_a_hangup_shuts_down_in_order_like_sigterm(start_server, tmp_path):
    """A server started from a shell (`osreapi run &`) gets SIGHUP when the session ends: it died at
    once, leaving its steps' process trees running and their tasks 'running' until a restart."""
    data = tmp_path / "data"
    server = start_server("--pool_size=1", data_dir=data)
    task_id = server.client.submit([sh("echo $$ > step.pid; sleep 300")])
    pid = read_pid(data / "workspace" / task_id / "step.pid")
    server.proc.send_signal(signal.SIGHUP)
    assert server.proc.wait(30) == 0
    assert wait_until(lambda: gone(pid), timeout=5)
    restarted = start_server(data_dir=data)
    assert restarted.client.get(f"/{task_id}").json["data"][0]["state"] == "已中断"
    assert restarted.terminate() == 0


@pytest.mark.parametrize(
    ("header", "said"),
    [
        (b"Content-Length : 100", b"whitespace before the colon"),
        (b"Content-Length\t: 100", b"whitespace before the colon"),
        (b"Transfer-Encoding : chunked", b"whitespace before the colon"),
        (b"Content-Length: 0\r\n 100", b"folded header line"),
        (b" Content-Length: 100", b"folded header line"),  # a fold with nothing to fold onto: it was a 500
    ],
)
def test_a_head_cheroot_and_the_intake_would_read_apart_is_refused_at_once(client: Client, header: bytes, said: bytes):
    """cheroot read `Content-Length : 100`, or a length folded onto a second line, as a length that
    the intake did not see: the request went to a worker before its body, and 40 of them held every
    worker until --read_timeout. (Asked in English: the detail is in the request's language.)"""
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(b"POST /?lang=en HTTP/1.1\r\n" + header + b"\r\nHost: x\r\n\r\n[")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert said in answer


@pytest.mark.parametrize(
    ("accept", "lang"),
    [
        ("fr-FR,fr;q=0.9,en;q=0.8", "en"),  # a French browser that reads English: not the server's default
        ("en;q=0, zh", "zh"),  # q=0: not acceptable
        ("zh;q=0.1, en;q=0.9", "en"),
        ("en-US,en;q=0.9", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("de, fr;q=0.5", "zh"),  # none of ours: the server's language
        ("en;q=abc, zh;q=0.5", "zh"),  # a quality that is not a number counts as 0
    ],
)
def test_accept_language_is_read_by_quality_not_only_its_first_entry(client: Client, accept: str, lang: str):
    """Only the first entry was read: `fr-FR,fr;q=0.9,en;q=0.8` got Chinese, `en;q=0, zh` English."""
    message = client.get("/no-such-task", headers={"Accept-Language": accept}).json["message"]
    assert message == {"zh": "id不存在, 沒有数据", "en": "id does not exist, no data"}[lang]


def test_a_query_parameter_given_twice_with_different_values_is_refused(client: Client):
    """`?action=kill&action=pause` paused (the last value won): which one the client meant is unknown."""
    task_id = start_step(client, "sleep 30")
    resp = client.request("PUT", f"/{task_id}?action=kill&action=pause", headers={"Accept-Language": "en"})
    assert resp.status == 400
    assert resp.json["message"] == "query: action is given more than once, with different values"
    assert client.get(f"/{task_id}?lang=en").json["data"][0]["state"] == "running"  # nothing changed
    assert client.request("PUT", f"/{task_id}?action=kill&action=kill").status == 200  # the same twice: no doubt


def test_a_cached_answer_in_its_last_millisecond_is_answered_not_a_500(make_server):
    """The cached answer's ttl was put back encoded as ASCII: in the last millisecond before expiry
    Go's format says `500µs`, and GET /<id> of a finished task answered 500 (seen as 27 of 8,000
    GETs re-posting one id under --key_expire=300ms)."""
    now = [1_000_000.0]
    client = make_server(clock=lambda: now[0], key_expire="10s")
    task_id = client.submit([sh("echo done")])
    assert client.wait(task_id).json["code"] == 0
    expires = client.executor.task(task_id).expires
    assert client.get(f"/{task_id}").status == 200  # now cached
    now[0] = expires - 0.0005
    resp = client.get(f"/{task_id}")
    assert resp.status == 200, resp.body
    assert resp.json["data"][0]["times"]["ttl"] == "500µs"
