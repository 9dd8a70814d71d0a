"""DELETE /<id>: a finished task's record and workspace go; 409 while it runs; 404 when unknown."""

from __future__ import annotations

import json
import logging
import time

import pytest

from .conftest import Client, sh, wait_until


@pytest.mark.timeout(30)
def test_delete_removes_a_finished_task_record_and_workspace(client: Client, caplog):
    task_id = client.submit([sh("echo kept > file.txt; echo out")])
    assert client.wait(task_id).json["code"] == 0
    workspace = client.executor.config.workspace(task_id)
    assert (workspace / "file.txt").exists()
    with caplog.at_level(logging.INFO, logger="osreapi.audit"):
        resp = client.request("DELETE", f"/{task_id}")
    assert resp.status == 200 and resp.json == {"code": 0, "message": "成功"}
    assert not workspace.exists()
    assert client.executor.get(task_id) is None
    assert client.get(f"/{task_id}").json["code"] == 1003
    assert all(t["id"] != task_id for t in client.get("/").json["data"]["tasks"])
    audited = [json.loads(r.getMessage()) for r in caplog.records if r.name == "osreapi.audit"]
    assert [(a["method"], a["task_id"], a["status"]) for a in audited] == [("DELETE", task_id, 200)]
    again = client.request("DELETE", f"/{task_id}?lang=en")
    assert again.status == 404 and again.json == {"code": 1003, "message": "id does not exist, no data"}


@pytest.mark.timeout(30)
def test_delete_of_a_running_task_is_409_and_changes_nothing(client: Client):
    task_id = client.submit([sh("sleep 30")])
    assert wait_until(lambda: client.get(f"/{task_id}?lang=en").json["data"][0]["state"] == "running")
    resp = client.request("DELETE", f"/{task_id}?lang=en")
    assert resp.status == 409 and resp.json["code"] == 409
    assert task_id in resp.json["message"] and "kill" in resp.json["message"]
    assert client.get(f"/{task_id}").json["code"] == 1001
    assert client.executor.config.workspace(task_id).exists()
    assert client.request("PUT", f"/{task_id}?action=kill").status == 200
    client.wait(task_id)
    assert client.request("DELETE", f"/{task_id}").status == 200
    assert client.get(f"/{task_id}").status == 404


def test_deleted_id_is_free_again_and_leaves_no_expiry_entry(make_server):
    shift = [0.0]
    client = make_server(clock=lambda: time.time() + shift[0])
    client.wait(client.submit([sh("echo first")], "?id=reused"))
    assert client.request("DELETE", "/reused").status == 200
    assert client.submit([sh("echo second")], "?id=reused") == "reused"
    assert client.wait("reused").json["data"][0]["message"] == "second\n"
    assert client.request("DELETE", "/reused").status == 200
    shift[0] = 49 * 3600  # past --key_expire: an expiry entry left behind would be swept now
    assert client.executor.sweep() == 0


def test_delete_of_an_unknown_task_is_404_in_the_envelope(client: Client):
    resp = client.request("DELETE", "/no-such-task")
    assert resp.status == 404 and resp.json == {"code": 1003, "message": "id不存在, 沒有数据"}
