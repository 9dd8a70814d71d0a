"""Bad and careless input against the real server: always a 4xx envelope naming what and where, in
the request's language; never a 5xx."""

from __future__ import annotations

import json
import socket

import pytest

from osreapi.http.app import HttpSettings

from .conftest import Client, sh

ODD_DIGITS = ["%C2%B2", "%E2%81%B0", "%E2%91%A0", "%D9%A3"]  # ², ⁰, ①, ٣: str.isdigit() is true for each


def raw_request(client: Client, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes as they are; return everything the server answers before it closes (bounded)."""
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def envelope_of(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.fixture
def finished(client: Client) -> str:
    task_id = client.submit([sh("echo hello")])
    assert client.wait(task_id).json["code"] == 0
    return task_id


@pytest.mark.parametrize("digits", ODD_DIGITS)
def test_non_ascii_digits_as_a_step_answer_400_on_every_route(client: Client, finished: str, digits: str):
    for method, path in [("GET", f"/{finished}/{digits}"), ("GET", f"/{finished}/{digits}/log"),
                         ("PUT", f"/{finished}/{digits}?action=kill")]:
        resp = client.request(method, path + ("&" if "?" in path else "?") + "lang=en")
        assert resp.status == 400 and resp.json["code"] == 400, (method, path, resp.body)
        assert "neither an index" in resp.json["message"]


def test_huge_and_odd_offsets_answer_400_and_past_the_end_416(client: Client, finished: str):
    log = f"/{finished}/0/log"
    for bad in ["9223372036854775807", "%C2%B2", "-1", "1e3", "9" * 5000]:
        resp = client.get(f"{log}?offset={bad}&lang=en")
        assert resp.status == 400 and "offset" in resp.json["message"], (bad, resp.body[:200])
    past = client.get(f"{log}?offset=7&lang=en")
    assert past.status == 416 and past.json == {"code": 416, "message": "offset 7 is past the end of the output (6 bytes)"}
    assert client.get(f"{log}?offset=6").body == b""
    assert client.get(f"{log}?offset=1").body == b"ello\n"


@pytest.mark.parametrize("last_event_id", ["²", "9223372036854775808", "x"])
def test_bad_last_event_id_answers_400_before_any_stream(client: Client, finished: str, last_event_id: str):
    headers = {"Accept": "text/event-stream", "Last-Event-ID": last_event_id}
    resp = client.get(f"/{finished}/0/log?follow=true", headers=headers)
    assert resp.status == 400 and resp.json["code"] == 400 and "Last-Event-ID" in resp.json["message"]


def test_negative_content_length_is_400_and_the_body_is_not_taken(make_server):
    client = make_server(settings=HttpSettings(max_body=1000))
    body = json.dumps([sh("echo " + "x" * 5000)]).encode()
    head = b"POST /?lang=en HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
    status, answer = envelope_of(raw_request(client, head, body))
    assert status == 400 and answer["code"] == 400 and "Content-Length" in answer["message"]
    assert client.get("/").json["data"]["total"] == 0


def test_unknown_step_field_names_it_and_the_nearest_known_one(client: Client):
    steps = json.dumps([sh("true"), {"command_content": "sleep 3", "command_type": "sh", "timout": "1s"}])
    en = client.post("/?lang=en", steps)
    assert en.status == 400 and en.json["message"] == "step 1: unknown field 'timout' (did you mean timeout?)"
    zh = client.post("/", steps)
    assert zh.status == 400 and zh.json["message"] == "第 1 步: 未知字段 'timout', 是否想写 timeout?"
    far = client.post("/?lang=en", json.dumps([sh("true", colour="red")]))
    assert far.json["message"] == "step 0: unknown field 'colour'"
    assert client.get("/").json["data"]["total"] == 0


def test_keep_background_is_a_boolean_carried_into_the_stored_spec(client: Client):
    bad = client.post("/?lang=en", json.dumps([sh("true", keep_background="yes")]))
    assert bad.status == 400 and bad.json["message"] == "step 0: keep_background must be true or false"
    kept = client.submit([sh("true", keep_background=True), sh("true")])
    specs = client.executor._db.get_specs(kept)
    assert [s.keep_background for s in specs] == [True, False]


def test_same_id_same_body_is_the_task_and_a_different_body_or_mode_is_409(client: Client):
    steps = [sh("echo one")]
    assert client.post("/?id=job-1", steps).json["data"] == {"id": "job-1", "count": 1}
    client.wait("job-1")
    assert client.post("/?id=job-1", steps).json == {"code": 0, "message": "成功", "data": {"id": "job-1", "count": 1}}
    for query, body in [("?id=job-1", [sh("echo two")]), ("?id=job-1&async=true", [sh("echo one"), sh("true")]),
                        ("?id=job-1&lang=en", [sh("echo one", timeout="5s")])]:
        resp = client.post("/" + query, body)
        assert resp.status == 409 and resp.json["code"] == 409 and "job-1" in resp.json["message"], (query, resp.json)
    assert "different submission" in resp.json["message"]
    assert client.get("/").json["data"]["total"] == 1
    assert client.get("/job-1").json["data"][0]["message"] == "one\n"


def test_messages_follow_the_request_language_validation_included(client: Client, finished: str):
    zh = client.post("/", "[{}]").json["message"]
    en = client.post("/", "[{}]", headers={"Accept-Language": "en-US,en;q=0.9"}).json["message"]
    assert (zh, en) == ("第 0 步: command_type 为必填项", "step 0: command_type is required")
    assert client.get("/?sort=size").json["message"].startswith("sort: 未知的值 'size'")
    assert client.post("/", [sh("true", timeout="10")]).json["message"].startswith("第 0 步: timeout: 无效的时长 '10'")
    assert client.post("/", "{}").json["message"] == "请求体应为步骤的 JSON 数组, 收到的是对象"
    missing = client.request("PUT", f"/{finished}?lang=en")
    assert missing.status == 400 and missing.json["message"] == "action is missing: use kill, pause, resume, e.g. ?action=kill"
    assert "kill, pause, resume" in client.request("PUT", f"/{finished}").json["message"]
    ended = client.request("PUT", f"/{finished}?action=kill").json["message"]
    assert ended == "任务已结束 (已结束), kill 不适用"


@pytest.mark.parametrize("length", [b"abc", b"1_000", b"+5", b"0x10"])
def test_malformed_content_length_is_400_in_the_envelope(client: Client, length: bytes):
    head = b"POST / HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\nContent-Length: " + length + b"\r\n\r\n"
    status, answer = envelope_of(raw_request(client, head, b"[]"))
    assert status == 400 and answer["code"] == 400 and "Content-Length" in answer["message"], answer


def test_oversized_header_block_is_431_in_the_envelope(client: Client):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"y" * 70_000 + b"\r\n\r\n"
    status, answer = envelope_of(raw_request(client, head))
    assert status == 431 and answer["code"] == 431 and "请求头过大" in answer["message"]
    assert client.get("/healthz").status == 200


def test_answers_below_the_application_take_lang_from_the_query_too(client: Client):
    """Only Accept-Language was read there: `?lang=en` got Chinese, unlike every other answer."""
    cases = [
        (b"GET /healthz?lang=en HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"y" * 70_000 + b"\r\n\r\n", 431,
         "request header block too large"),
        (b"POST /?lang=en HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "unsupported Transfer-Encoding"),
        (b"POST /?x=1&lang=en HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "malformed HTTP request"),
        (b"POST /?lang=zh HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\nTransfer-Encoding: gzip\r\n\r\n", 400,
         "不支持的传输编码"),  # the query first, as everywhere
    ]
    for head, status, says in cases:
        got, answer = envelope_of(raw_request(client, head))
        assert got == status and answer["message"].startswith(says), answer


def test_a_body_over_max_body_on_any_route_is_never_drained(client: Client):
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)
        answer = b""
        while chunk := sock.recv(65536):  # the server closes after its answer (bounded by the timeout)
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer


def test_a_chunked_body_is_read_whole_and_limited_by_max_body(make_server):
    client = make_server(settings=HttpSettings(max_body=200))
    body = json.dumps([sh("echo chunked")]).encode()
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    status, answer = envelope_of(raw_request(client, head, chunks))
    assert status == 200 and answer["code"] == 0
    assert client.wait(answer["data"]["id"]).json["data"][0]["message"] == "chunked\n"
    big = json.dumps([sh("echo " + "x" * 300)]).encode()
    status, answer = envelope_of(raw_request(client, head, b"%x\r\n%b\r\n0\r\n\r\n" % (len(big), big)))
    assert status == 413 and answer["code"] == 413
