"""Faults found by attacking the real server (the fault hunt): each test reproduces one against a
real cheroot server and real processes, and fails without its fix."""

from __future__ import annotations

import json
import socket

import pytest

from osreapi.http.app import HttpSettings

from .conftest import Client, sh, start_step


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


def test_a_body_within_max_body_is_invited_once(make_server):
    client = make_server(settings=HttpSettings(max_body=1000))
    body = json.dumps([sh("echo hi")]).encode()
    head = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(4096):  # the server closes after its answer (Connection: close)
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
