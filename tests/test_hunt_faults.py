"""Faults found by attacking the real server (the fault hunt): each test reproduces one against a
real cheroot server and real processes, and fails without its fix."""

from __future__ import annotations

import pytest

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
