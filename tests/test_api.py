"""The seed API against a real cheroot server on 127.0.0.1:0 with a real LMDB and real processes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from osreapi.http.app import HttpSettings

from .conftest import Client, hold_request, sh, wait_until

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d([+-]\d\d:\d\d|Z)$")
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?[\d.]+(s|ms|µs)$")



def test_submit_answer_shape_and_header(client: Client):
    resp = client.post("/", [sh("echo hi")])
    assert resp.status == 200
    body = resp.json
    assert body["code"] == 0 and body["message"] == "成功"
    assert body["data"]["count"] == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", body["data"]["id"])
    assert resp.header("X-Task-ID") == body["data"]["id"]
    assert resp.header("Content-Type").startswith("application/json")


def test_sequential_success_lists_every_step(client: Client):
    task_id = client.submit([sh("echo one"), sh("echo two >&2"), {"command_type": "python3", "command_content": "print('three')"}])
    body = client.wait(task_id).json
    assert body["code"] == 0 and body["message"] == "成功"
    assert [s["step"] for s in body["data"]] == [0, 1, 2]
    assert [s["message"] for s in body["data"]] == ["one\n", "two\n", "three\n"]
    for s in body["data"]:
        assert s["state"] == "已结束" and s["code"] == 0
        assert s["name"] == f"{task_id}-{s['step']}"
        assert RFC3339.match(s["times"]["begin"]) and RFC3339.match(s["times"]["end"])
        assert GO_DURATION.match(s["times"]["ttl"])


def test_sequential_failure_stops_and_skips(client: Client, tmp_path: Path):
    marker = tmp_path / "never"
    task_id = client.submit([sh("echo ok"), sh("echo bad; exit 100"), sh(f"touch {marker}")])
    resp = client.wait(task_id)
    body = resp.json
    assert resp.status == 200
    assert body["code"] == 1002 and body["message"] == "1, 执行失败"
    assert [(s["step"], s["state"], s["code"]) for s in body["data"]] == [(1, "已结束", 100), (2, "已跳过", -1)]
    assert body["data"][0]["message"] == "bad\nexit status 100"
    assert "end" not in body["data"][1]["times"]
    assert not marker.exists()


def test_parallel_failure_stops_none_of_the_others(client: Client, tmp_path: Path):
    done = tmp_path / "done"
    task_id = client.submit([sh("exit 3"), sh(f"sleep 0.2; touch {done}")], "?ansync=true")
    body = client.wait(task_id).json
    assert body["code"] == 1002 and body["message"] == "0, 执行失败"
    assert [s["step"] for s in body["data"]] == [0]
    assert done.exists()


def test_parallel_steps_overlap(client: Client):
    task_id = client.submit([sh("sleep 0.5")] * 4, "?async=true")
    client.wait(task_id)
    steps = client.executor.get(task_id).steps
    assert max(s.begin for s in steps) < min(s.end for s in steps)  # all four ran at the same time


def test_dag_skips_dependents_and_runs_independent_branches(client: Client, tmp_path: Path):
    steps = [
        sh("exit 1", name="root"),
        sh(f"touch {tmp_path / 'child'}", name="child", depends_on=["root"]),
        sh(f"touch {tmp_path / 'grandchild'}", name="grandchild", depends_on=["child"]),
        sh("echo ok", name="other"),
        sh(f"touch {tmp_path / 'after'}", name="after", depends_on=["other"]),
    ]
    body = client.wait(client.submit(steps)).json
    assert body["code"] == 1002 and body["message"] == "0, 执行失败"
    assert [(s["name"], s["state"]) for s in body["data"]] == [("root", "已结束"), ("child", "已跳过"), ("grandchild", "已跳过")]
    assert (tmp_path / "after").exists()
    assert not (tmp_path / "child").exists() and not (tmp_path / "grandchild").exists()


def test_dag_order_respects_dependencies(client: Client, tmp_path: Path):
    log = tmp_path / "order"
    steps = [
        sh(f"echo c >> {log}", name="c", depends_on=["a", "b"]),
        sh(f"sleep 0.2; echo a >> {log}", name="a"),
        sh(f"echo b >> {log}", name="b", depends_on=["a"]),
    ]
    assert client.wait(client.submit(steps, "?ansync=true")).json["code"] == 0
    assert log.read_text().split() == ["a", "b", "c"]


def test_environment_markers_and_shared_workspace(client: Client):
    steps = [
        sh('echo "$A|$B|$OSREAPI_TASK_ID|$OSREAPI_STEP_NAME"; pwd; echo hello > shared.txt',
           env_vars=["A=1", "B=x=y"], name="first"),
        sh("cat shared.txt; echo $C", env_vars={"C": "obj"}),
    ]
    task_id = client.submit(steps)
    data = client.wait(task_id).json["data"]
    line, cwd = data[0]["message"].splitlines()
    assert line == f"1|x=y|{task_id}|first"
    workspace = Path(client.executor.config.data_dir) / "workspace" / task_id
    assert Path(cwd) == workspace
    assert data[1]["message"] == "hello\nobj\n"
    assert (workspace / "shared.txt").read_text() == "hello\n"


def test_curl_default_form_content_type_is_accepted(client: Client):
    resp = client.post("/", json.dumps([sh("echo form")]), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200
    assert client.wait(resp.json["data"]["id"]).json["data"][0]["message"] == "form\n"


def test_english_on_request(client: Client):
    task_id = client.submit([sh("exit 2")])
    client.wait(task_id)
    body = client.get(f"/{task_id}?lang=en").json
    assert body["message"] == "0, execution failed" and body["data"][0]["state"] == "stopped"
    body = client.get(f"/{task_id}", headers={"Accept-Language": "en-US,en;q=0.9"}).json
    assert body["message"] == "0, execution failed"
    assert client.get("/nope?lang=en").json["message"] == "id does not exist, no data"


def test_english_by_default_with_lang_setting(make_server):
    client = make_server(settings=HttpSettings(lang="en"))
    assert client.get("/nope").json["message"] == "id does not exist, no data"
    assert client.get("/nope?lang=zh").json["message"] == "id不存在, 沒有数据"


def test_unknown_id_answers_404_1003(client: Client):
    resp = client.get("/does-not-exist")
    assert resp.status == 404
    assert resp.json == {"code": 1003, "message": "id不存在, 沒有数据"}


def test_running_task_answers_1001_with_progress(client: Client, tmp_path):
    gate = tmp_path / "gate"
    task_id = client.submit([sh(f"echo started; while [ ! -e {gate} ]; do sleep 0.02; done"), sh("true")])
    assert wait_until(lambda: "started" in client.get(f"/{task_id}").body.decode(), timeout=10)
    resp = client.get(f"/{task_id}")
    body = resp.json
    assert resp.status == 200 and body["code"] == 1001 and body["message"] == "执行中"
    assert [s["state"] for s in body["data"]] == ["执行中", "等待中"]
    assert body["data"][0]["message"] == "started\n"
    assert "end" not in body["data"][0]["times"] and "ttl" not in body["data"][0]["times"]
    gate.touch()
    assert client.wait(task_id).json["code"] == 0


def test_list_fields_sorting_and_running_count(client: Client, tmp_path):
    ok = client.submit([sh("true")])
    client.wait(ok)
    bad = client.submit([sh("exit 1")])
    client.wait(bad)
    slow = client.submit([sh(f"while [ ! -e {tmp_path / 'gate'} ]; do sleep 0.02; done")])
    assert wait_until(lambda: client.get("/").json["data"]["running"] == 1)
    body = client.get("/").json
    assert body["code"] == 0 and body["data"]["total"] == 3
    tasks = {t["id"]: t for t in body["data"]["tasks"]}
    assert tasks[ok]["message"] == "所有步骤执行成功" and tasks[ok]["code"] == 0 and tasks[ok]["state"] == "已结束"
    assert tasks[bad]["message"] == "0, 执行失败" and tasks[bad]["code"] == 1002 and tasks[bad]["count"] == 1
    assert tasks[slow]["code"] == 1001 and tasks[slow]["state"] == "执行中"
    assert set(tasks[ok]) == {"id", "state", "code", "count", "message", "times"}
    assert [t["id"] for t in body["data"]["tasks"]] == [ok, bad, slow]
    by_end = [t["id"] for t in client.get("/?sort=end").json["data"]["tasks"]]
    assert by_end[-1] == slow  # no end yet: last
    by_ttl = [t["id"] for t in client.get("/?sort=expired").json["data"]["tasks"]]
    assert by_ttl == [ok, bad, slow]
    resp = client.get("/?sort=size")
    assert resp.status == 400 and "sort" in resp.json["message"]
    (tmp_path / "gate").touch()
    assert client.wait(slow).json["code"] == 0


@pytest.mark.parametrize(
    "body, expected",
    [
        ("not json", "invalid JSON"),
        ('{"a":1}', "expected a JSON array"),
        ("[]", "empty"),
        ('[{"command_type":"sh","command_content":"touch MARK"}, {"command_type":"sh"}]', "step 1: command_content is required"),
        ('[{"command_type":"sh","command_content":"touch MARK","name":"a","depends_on":["b"]},'
         '{"command_type":"sh","command_content":"x","name":"b","depends_on":["a"]}]', "dependency cycle"),
        ('[{"command_type":"sh","command_content":"touch MARK","timeout":"10"}]', "step 0: timeout"),
        ('[{"command_type":"sh","command_content":"touch MARK","env_vars":["X"]}]', "step 0: env_vars[0]"),
    ],
)
def test_bad_input_answers_400_and_runs_nothing(client: Client, tmp_path: Path, body: str, expected: str):
    mark = tmp_path / "mark"
    resp = client.post("/?lang=en", body.replace("MARK", str(mark)))
    assert resp.status == 400
    assert resp.json["code"] == 400 and expected in resp.json["message"]
    assert client.get("/").json["data"]["total"] == 0  # nothing was accepted, so nothing can run
    assert not mark.exists() and list(client.executor.config.workspace_root.iterdir()) == []


def test_bad_query_values_answer_400(client: Client):
    assert client.post("/?async=maybe", [sh("true")]).status == 400
    for bad_id in ["..", "a/b", "-x", "x" * 65, "healthz"]:
        resp = client.post(f"/?id={bad_id}", [sh("true")])
        assert resp.status == 400 and "id" in resp.json["message"]
    assert client.get("/").json["data"]["total"] == 0


def test_body_over_limit_answers_413(make_server, tmp_path: Path):
    client = make_server(settings=HttpSettings(max_body=200))
    mark = tmp_path / "big"
    resp = client.post("/", [sh(f"touch {mark}; echo " + "x" * 300)])
    assert resp.status == 413 and resp.json["code"] == 413
    assert not mark.exists()
    assert client.post("/", [sh("true")]).status == 200


def test_idempotent_submit_with_id(client: Client, tmp_path: Path):
    counter = tmp_path / "runs"
    steps = [sh(f"echo run >> {counter}"), sh("true")]
    first = client.post("/?id=deploy-42", steps)
    assert first.json == {"code": 0, "message": "成功", "data": {"id": "deploy-42", "count": 2}}
    client.wait("deploy-42")
    again = client.post("/?id=deploy-42", steps)
    assert again.status == 200 and again.json["data"] == {"id": "deploy-42", "count": 2}
    other = client.post("/?id=deploy-42", [sh("echo other")])
    assert other.status == 409 and other.json["code"] == 409 and "deploy-42" in other.json["message"]
    assert client.get("/").json["data"]["total"] == 1 and client.executor.stats()["pool_busy"] == 0
    assert counter.read_text() == "run\n"
    assert client.get("/deploy-42").json["code"] == 0


def test_max_requests_answers_429_only_past_the_limit(make_server):
    client = make_server(settings=HttpSettings(max_requests=1))
    held = hold_request(client)
    try:
        assert client.get("/").json["code"] == 429
    finally:
        held.close()
    # One after another, never 429.
    assert wait_until(lambda: client.get("/").status == 200, timeout=5)
    for _ in range(20):
        assert client.get("/").status == 200


def test_engine_timeout_answers_503(make_server):
    client = make_server(call_timeout=1e-6)
    resp = client.post("/", [sh("true")])
    assert resp.status == 503 and resp.json["code"] == 503


def test_unknown_routes_and_methods_answer_json(client: Client):
    resp = client.get("/a/b/c")
    assert resp.status == 404 and resp.json["code"] == 1003
    resp = client.request("PATCH", "/x")
    assert resp.status == 405 and "code" in resp.json


def test_many_steps_and_concurrent_submitters(client: Client):
    import concurrent.futures

    def one(i: int) -> int:
        return client.wait(client.submit([sh(f"echo {i}")] * 3), timeout=60).json["code"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(40)))
    assert codes == [0] * 40
    assert client.get("/").json["data"]["total"] == 40
