"""Live output (plain, follow, SSE), health, version, metrics, the OpenAPI document, osreapi-killtree."""

from __future__ import annotations

import http.client
import json
import re
import subprocess

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from osreapi.http.openapi import document

from .conftest import Client, console_script, gone, read_pid, sh, wait_until


def open_stream(client: Client, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(client.host, client.port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    return conn.getresponse()


def parse_sse(raw: str) -> list[dict]:
    events = []
    for block in raw.split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        event = {"event": "message", "data": []}
        for line in block.split("\n"):
            if line.startswith("data: "):
                event["data"].append(line[6:])
            elif line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("event: "):
                event["event"] = line[7:]
        event["data"] = "\n".join(event["data"])
        events.append(event)
    return events


def test_log_so_far_and_from_an_offset(client: Client):
    task_id = client.submit([sh("printf 'hello\\nworld\\n'")])
    client.wait(task_id)
    resp = client.get(f"/{task_id}/0/log")
    assert resp.status == 200 and resp.header("Content-Type").startswith("text/plain")
    assert resp.body == b"hello\nworld\n"
    assert client.get(f"/{task_id}/0/log?offset=6").body == b"world\n"
    assert client.get(f"/{task_id}/0/log?offset=-1").status == 400
    assert client.get(f"/{task_id}/9/log").status == 404


@pytest.mark.timeout(30)
def test_follow_streams_before_the_step_ends(client: Client):
    task_id = client.submit([sh("echo first; while [ ! -e go ]; do sleep 0.02; done; echo second")])
    resp = open_stream(client, f"/{task_id}/0/log?follow=true")
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    first = resp.read1(100)
    while b"first" not in first:
        first += resp.read1(100)
    assert not client.executor.get(task_id).finished  # it arrived while the step still waits
    (client.executor.config.workspace(task_id) / "go").touch()
    rest = resp.read()
    assert (first + rest) == b"first\nsecond\n"
    assert client.executor.get(task_id).finished


@pytest.mark.timeout(60)
def test_hundred_thousand_lines_complete_and_ordered_in_stream_and_result(make_server):
    client = make_server(max_output=4 << 20)
    script = "i=0; while [ $i -lt 100000 ]; do echo line$i; i=$((i+1)); done"
    task_id = client.submit([{"command_type": "bash", "command_content": script}])
    resp = open_stream(client, f"/{task_id}/0/log?follow=true")
    streamed = resp.read().decode()
    expected = "".join(f"line{i}\n" for i in range(100000))
    assert streamed == expected
    assert client.wait(task_id, 60).json["data"][0]["message"] == expected


@pytest.mark.timeout(60)
def test_stream_says_when_the_output_cap_cuts_the_result(make_server):
    client = make_server(max_output=1000)
    task_id = client.submit([sh("i=0; while [ $i -lt 500 ]; do echo line$i; i=$((i+1)); done")])
    streamed = open_stream(client, f"/{task_id}/0/log?follow=true").read().decode()
    assert streamed.startswith("line0\n") and "line499\n" in streamed
    assert "over the 1000-byte cap" in streamed.splitlines()[-1]
    assert "bytes truncated" in client.wait(task_id).json["data"][0]["message"]


@pytest.mark.timeout(30)
def test_sse_resumes_with_last_event_id_without_gap_or_duplicate(client: Client):
    script = "i=0; while [ $i -lt 30 ]; do echo 行$i; i=$((i+1)); sleep 0.02; done"
    task_id = client.submit([sh(script)])
    resp = open_stream(client, f"/{task_id}/0/log?follow=true", {"Accept": "text/event-stream"})
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    raw = b""
    while raw.count(b"\n\n") < 4:  # a comment and at least three events
        raw += resp.read1(1)
    resp.close()
    first_part = parse_sse(raw[: raw.rindex(b"\n\n") + 2].decode())
    last_id = first_part[-1]["id"]
    received = "".join(e["data"] for e in first_part if e["event"] == "message")
    assert len(received.encode()) == last_id
    resp = open_stream(client, f"/{task_id}/0/log?follow=true", {"Accept": "text/event-stream", "Last-Event-ID": str(last_id)})
    rest = parse_sse(resp.read().decode())
    received += "".join(e["data"] for e in rest if e["event"] == "message")
    assert received == "".join(f"行{i}\n" for i in range(30))
    end = rest[-1]
    assert end["event"] == "end"
    record = json.loads(end["data"])
    assert record["state"] == "已结束" and record["code"] == 0 and record["step"] == 0


@pytest.mark.timeout(30)
def test_server_stop_ends_open_streams(make_server):
    from osreapi.http.app import HttpSettings, make_app
    from osreapi.http.server import HttpServer

    ex = make_server().executor
    server = HttpServer(make_app(ex, HttpSettings()), "127.0.0.1", 0)
    server.start()
    client = Client(server.url)
    task_id = client.submit([sh("echo up; sleep 300")])
    resp = open_stream(client, f"/{task_id}/0/log?follow=true")
    assert b"up" in resp.read1(10)
    server.stop()  # returns (bounded by the test's timeout) although a stream was open
    with pytest.raises(http.client.IncompleteRead):  # and the stream has ended, cut: the step still ran
        resp.read()


def test_health_and_version(client: Client):
    from osreapi import __version__

    health = client.get("/healthz")
    assert health.status == 200 and health.json["data"] == {"status": "ok"}
    assert client.get("/version").json["data"]["version"] == __version__


def metric_values(text: str) -> dict[tuple, float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


@pytest.mark.timeout(30)
def test_metrics_count_what_ran(make_server):
    client = make_server(pool_size=3)
    client.wait(client.submit([sh("true"), sh("true")]))
    client.wait(client.submit([sh("exit 1")]))
    client.wait(client.submit([sh("sleep 5", timeout="100ms")]))
    resp = client.get("/metrics")
    assert resp.status == 200 and resp.header("Content-Type").startswith("text/plain")
    families = {family.name: family.type for family in text_string_to_metric_families(resp.body.decode())}
    assert "unknown" not in families.values(), families  # every sample under its family's HELP/TYPE
    assert families["osreapi_steps_started"] == families["osreapi_http_requests"] == "counter"
    assert families["osreapi_step_duration_seconds"] == "histogram" and families["osreapi_tasks"] == "gauge"
    values = metric_values(resp.body.decode())
    assert values[("osreapi_steps_started_total", ())] == 4
    assert values[("osreapi_steps_finished_total", (("outcome", "succeeded"),))] == 2
    assert values[("osreapi_steps_finished_total", (("outcome", "failed"),))] == 1
    assert values[("osreapi_steps_finished_total", (("outcome", "timeout"),))] == 1
    assert values[("osreapi_step_duration_seconds_count", ())] == 4
    assert values[("osreapi_tasks", (("state", "stopped"),))] == 3
    assert values[("osreapi_pool_size", ())] == 3
    assert values[("osreapi_pool_busy", ())] == 0
    assert values[("osreapi_threads", ())] > 0 and values[("osreapi_store_bytes", ())] > 0
    assert values[("osreapi_http_requests_total", (("method", "POST"), ("route", "/"), ("status", "200")))] == 3


def response_schema(doc: dict, path: str, method: str, status: int, media: str = "application/json") -> dict:
    schema = doc["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]
    return {**schema, "components": doc["components"]}


def test_openapi_document_is_valid_and_matches_real_responses(client: Client):
    doc = client.get("/openapi.json").json
    assert doc == json.loads(json.dumps(document()))
    assert doc["openapi"].startswith("3.")
    jsonschema.Draft202012Validator.check_schema(doc["components"]["schemas"]["Step"])
    ok = client.submit([sh("echo ok", name="a")])
    client.wait(ok)
    bad = client.submit([sh("exit 2")])
    client.wait(bad)
    running = client.submit([sh("sleep 300")])
    checks = [
        ("/", "post", client.post("/", [sh("true")])),
        ("/", "post", client.post("/", "[]")),
        ("/", "get", client.get("/")),
        ("/{id}", "get", client.get(f"/{ok}")),
        ("/{id}", "get", client.get(f"/{bad}")),
        ("/{id}", "get", client.get(f"/{running}")),
        ("/{id}", "get", client.get("/missing")),
        ("/{id}/{step}", "get", client.get(f"/{ok}/a")),
        ("/{id}/{step}", "get", client.get(f"/{ok}/9")),
        ("/{id}", "put", client.request("PUT", f"/{running}?action=pause")),
        ("/{id}", "put", client.request("PUT", f"/{running}?action=pause")),
        ("/{id}/{step}", "put", client.request("PUT", f"/{running}/0?action=kill")),
        ("/healthz", "get", client.get("/healthz")),
        ("/version", "get", client.get("/version")),
    ]
    for path, method, resp in checks:
        assert str(resp.status) in doc["paths"][path][method]["responses"], (path, method, resp.status)
        jsonschema.validate(resp.json, response_schema(doc, path, method, resp.status))
    assert set(doc["paths"]) == {"/", "/{id}", "/{id}/{step}", "/{id}/{step}/log", "/healthz", "/version", "/metrics", "/openapi.json",
                                 "/events", "/ui/"}


@pytest.mark.timeout(30)
def test_killtree_console_script_finds_marked_trees_without_the_server(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OSREAPI_TASK_ID": "orphan-task"}
    proc = subprocess.Popen(["sh", "-c", "setsid sleep 300 & echo $! > esc; sleep 300"], cwd=tmp_path, env=env,
                            start_new_session=True)
    escaped = read_pid(tmp_path / "esc")
    dry = subprocess.run([console_script("osreapi-killtree"), "orphan-task", "--dry-run"], capture_output=True, text=True, timeout=20)
    assert dry.returncode == 0
    assert f"would kill {proc.pid}" in dry.stdout and f"would kill {escaped}" in dry.stdout
    assert proc.poll() is None and not gone(escaped)
    out = subprocess.run([console_script("osreapi-killtree"), "orphan-task", "--grace", "1"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and f"killed {escaped}" in out.stdout
    proc.wait(10)
    assert wait_until(lambda: gone(escaped), timeout=5)
    again = subprocess.run([console_script("osreapi-killtree"), "orphan-task"], capture_output=True, text=True, timeout=20)
    assert again.returncode == 1 and "no process carries OSREAPI_TASK_ID=orphan-task" in again.stderr  # as pkill


@pytest.mark.parametrize("grace", ["-1", "nan", "inf", "soon"])
def test_killtree_refuses_a_grace_that_is_not_seconds(grace):
    out = subprocess.run([console_script("osreapi-killtree"), "some-task", "--grace", grace], capture_output=True, text=True, timeout=20)
    assert out.returncode == 2 and "--grace" in out.stderr and "not a number of seconds" in out.stderr, out.stderr


def test_detail_view_lists_every_step_with_its_dependencies(client: Client):
    task_id = client.submit([sh("true", name="a"), sh("exit 3", name="b", depends_on=["a"]), sh("true", name="c")])
    assert client.wait(task_id).json["code"] == 1002
    plain = client.get(f"/{task_id}").json["data"]
    assert [s["name"] for s in plain] == ["b"]  # the seed's shape: only what did not succeed
    detail = client.get(f"/{task_id}?detail=true&lang=en").json["data"]
    assert detail["task"]["id"] == task_id and detail["task"]["mode"] == "dag"
    assert [(s["name"], s["depends_on"], s["code"]) for s in detail["steps"]] == [("a", [], 0), ("b", ["a"], 3), ("c", [], 0)]


def test_subscribers_hear_every_committed_change_in_order(executor):
    heard: list[tuple[str, str | None, tuple[str, ...]]] = []
    executor.subscribe(lambda tid, task, steps: heard.append(
        (tid, task.state.value if task else None, tuple(s.state.value for s in steps))))
    task_id = executor.submit([sh("true"), sh("true")])
    assert executor.wait(task_id, timeout=20).task.state.value == "stopped"
    assert wait_until(lambda: heard and heard[-1][1] == "stopped")
    assert heard[0] == (task_id, "pending", ("pending", "pending"))  # the creation
    assert {tid for tid, _, _ in heard} == {task_id}
    ended = [states for _, _, states in heard if "stopped" in states]
    assert len(ended) >= 2  # each step's end was published


def parse_sse_as_a_browser(raw: bytes) -> str:
    """The `data` of every message, as the SSE standard reads it: a line ends at CRLF, LF or CR; a
    line without a colon is a field with no value (ignored); messages' data concatenated."""
    text, data, out = raw.decode("utf-8"), [], []
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if data:
                out.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return "".join(out)


@pytest.mark.timeout(30)
def test_sse_log_keeps_what_follows_a_carriage_return(client: Client):
    """A progress bar's `\\r` arrives as a line break: sent raw, a reader ends the `data:` line
    there and drops the rest of it."""
    task_id = client.submit([sh("printf '10%%\\r20%%\\r\\ndone\\n'")])
    client.wait(task_id)
    resp = open_stream(client, f"/{task_id}/0/log", headers={"Accept": "text/event-stream"})
    events = parse_sse_as_a_browser(resp.read()).split("\n")
    assert events[:3] == ["10%", "20%", "done"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("first, second", [("ab\\303", "\\251cd"), ("x\\r", "\\ny"), ("q\\342", "\\202\\254!")])
def test_a_followed_log_holds_back_a_character_split_between_two_writes(client: Client, first, second):
    """A step wrote the first byte(s) of a character, then the rest a moment later: the followed SSE
    log sent the lone lead byte as one event (U+FFFD) and the rest as another (U+FFFD again); a CR
    cut from its LF was two line breaks. An incomplete end is held while the step may still write."""
    task_id = client.submit([sh(f"printf '{first}'; while [ ! -e go ]; do sleep 0.02; done; printf '{second}'")])
    stream = open_stream(client, f"/{task_id}/0/log?follow=true", {"Accept": "text/event-stream"})
    received = b""
    while b"data: " + first[0].encode() not in received:  # the first part has been read and sent
        chunk = stream.read(1)  # bounded by the socket timeout
        assert chunk, received
        received += chunk
    (client.executor.config.workspace(task_id) / "go").touch()
    events = parse_sse((received + stream.read()).decode("utf-8"))
    text = "".join(e["data"] for e in events if e["event"] == "message")
    expected = (first + second).encode().decode("unicode_escape").encode("latin-1").decode("utf-8")
    assert "\ufffd" not in text, text
    assert text == expected.replace("\r\n", "\n"), (text, expected)  # one line break for a CRLF


@pytest.mark.parametrize("accept, sse", [
    ("text/event-stream", True), ("text/plain, text/event-stream;q=0.5", True), ("TEXT/Event-Stream", True),
    ("text/event-stream;q=0", False), ("text/event-stream; q=0.0, text/plain", False), ("text/plain", False),
])
def test_a_log_is_sse_only_when_accept_asks_for_it_with_a_weight_above_zero(client: Client, accept, sse):
    """`Accept: text/event-stream;q=0` refuses SSE (RFC 9110): it was answered SSE all the same."""
    task_id = client.submit([sh("echo hi")])
    client.wait(task_id)
    resp = client.get(f"/{task_id}/0/log", headers={"Accept": accept})
    assert resp.status == 200
    assert resp.header("Content-Type").startswith("text/event-stream" if sse else "text/plain"), resp.headers


@pytest.mark.timeout(60)
def test_a_plain_follow_cut_by_a_server_stop_has_no_last_chunk(start_server):
    """A server that stopped while a step was still writing ended a plain follow with the last
    chunk, as the step's real end does: `curl -N .../log?follow=true` exited 0 with half a log.
    Without the last chunk, the client sees the body cut (curl: exit 18)."""
    import socket

    server = start_server()
    task_id = server.client.submit([sh("echo started; sleep 30")])
    with socket.create_connection((server.client.host, server.client.port), timeout=20) as sock:
        sock.sendall(f"GET /{task_id}/0/log?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while b"started" not in received:
            chunk = sock.recv(65536)  # bounded by the socket timeout
            assert chunk, received
            received += chunk
        assert b"Transfer-Encoding: chunked" in received
        assert server.terminate() == 0
        while chunk := sock.recv(65536):
            received += chunk
    assert not received.endswith(b"0\r\n\r\n"), received[-200:]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("offset, expected", [(1, "é!\n"), (2, "é!\n"), (3, "é!\n"), (4, "!\n")])
def test_an_sse_log_from_an_offset_inside_a_character_starts_at_the_next_one(client: Client, offset, expected):
    """An SSE log asked from a byte offset inside a character sent its continuation bytes as U+FFFD:
    its events now start at the next character, and the first event's id counts the bytes skipped."""
    task_id = client.submit([sh("printf '\\342\\202\\254\\303\\251!\\n'")])  # €é!
    client.wait(task_id)
    resp = open_stream(client, f"/{task_id}/0/log?offset={offset}", headers={"Accept": "text/event-stream"})
    events = [e for e in parse_sse(resp.read().decode("utf-8")) if e["event"] == "message"]
    assert "".join(e["data"] for e in events) == expected
    assert events[-1]["id"] == 7
