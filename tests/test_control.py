"""Kill / pause / resume of tasks and steps, over HTTP against a real server and real processes."""

from __future__ import annotations

import time

import psutil
import pytest

from .conftest import Client, gone, read_pid, sh, step_pid, wait_until


def put(client: Client, path: str, action: str, lang: str = "zh"):
    return client.request("PUT", f"{path}?action={action}&lang={lang}")


def step_state(client: Client, task_id: str, step) -> str:
    return client.get(f"/{task_id}/{step}?lang=en").json["data"]["state"]


@pytest.mark.timeout(30)
def test_kill_task_kills_the_tree_and_skips_the_rest(client: Client):
    task_id = client.submit([sh("sleep 300 & echo $! > bg.pid; setsid sleep 300 & echo $! > esc.pid; sleep 300"), sh("echo never")])
    workspace = client.executor.config.workspace(task_id)
    bg, esc = read_pid(workspace / "bg.pid"), read_pid(workspace / "esc.pid")
    leader = step_pid(client.executor, task_id)
    resp = put(client, f"/{task_id}", "kill")
    assert resp.status == 200 and resp.json == {"code": 0, "message": "成功"}
    body = client.wait(task_id).json
    assert body["code"] == 1002 and body["message"] == "0, 执行失败"
    assert [(s["state"], s["code"]) for s in body["data"]] == [("已终止", 137), ("已跳过", -1)]
    listed = client.get("/").json["data"]["tasks"][0]
    assert listed["state"] == "已终止" and listed["code"] == 1002
    for pid in (leader, bg, esc):
        assert wait_until(lambda: gone(pid), timeout=5), pid
    assert not psutil.pid_exists(leader)


@pytest.mark.timeout(30)
def test_pause_and_resume_a_task_stretches_a_loop_of_short_sleeps(client: Client):
    loop = "i=0; while [ $i -lt 10 ]; do sleep 0.1; i=$((i+1)); echo $i >> count; done"
    task_id = client.submit([sh(loop)])
    count = client.executor.config.workspace(task_id) / "count"
    assert wait_until(lambda: count.exists())
    assert put(client, f"/{task_id}", "pause").status == 200
    assert client.get(f"/{task_id}?lang=en").json["data"][0]["state"] == "paused"
    assert client.get("/?lang=en").json["data"]["tasks"][0]["state"] == "paused"
    tree = [psutil.Process(step_pid(client.executor, task_id))]
    tree += tree[0].children(recursive=True)
    # Answered once signalled: every process of the tree stops when it next runs (a short-lived
    # child may be gone).
    assert wait_until(lambda: all(_stopped_or_gone(p) for p in tree))
    assert put(client, f"/{task_id}", "resume").status == 200
    body = client.wait(task_id).json
    assert body["code"] == 0 and count.read_text().split()[-1] == "10"


class FakeMonotonic:
    """The engine's deadline clock, moved by the test: time limits without waiting for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, executor, seconds: float) -> None:
        self.now += seconds
        executor.poke()


@pytest.mark.timeout(30)
def test_a_time_limit_fires_on_the_engine_clock(make_executor):
    clock = FakeMonotonic()
    ex = make_executor(monotonic=clock)
    task_id = ex.submit([sh("sleep 300", timeout="1h")])
    pid = step_pid(ex, task_id)
    clock.advance(ex, 3599)
    assert not ex.get(task_id).finished  # a second short of its limit
    clock.advance(ex, 2)
    result = ex.wait(task_id, timeout=10)
    assert result.steps[0].state.value == "timeout" and result.steps[0].code == 124
    assert wait_until(lambda: gone(pid))


@pytest.mark.timeout(30)
def test_paused_time_does_not_count_against_the_step_timeout(make_server):
    clock = FakeMonotonic()
    client = make_server(monotonic=clock)
    task_id = client.submit([sh("while [ ! -e go ]; do sleep 0.02; done; echo done", timeout="10s")])
    step_pid(client.executor, task_id)
    assert put(client, f"/{task_id}/0", "pause").status == 200
    clock.advance(client.executor, 60)  # far past the limit, all of it paused
    assert step_state(client, task_id, 0) == "paused"
    assert put(client, f"/{task_id}/0", "resume").status == 200
    (client.executor.config.workspace(task_id) / "go").touch()
    body = client.wait(task_id).json
    assert body["code"] == 0, body
    assert body["data"][0]["message"] == "done\n"


@pytest.mark.timeout(30)
def test_kill_of_a_paused_task_ends_it(client: Client):
    task_id = client.submit([sh("sleep 300")])
    assert wait_until(lambda: step_state(client, task_id, 0) == "running")
    pid = step_pid(client.executor, task_id)
    assert put(client, f"/{task_id}", "pause").status == 200
    assert put(client, f"/{task_id}", "kill").status == 200
    assert client.wait(task_id).json["data"][0]["code"] == 137
    assert wait_until(lambda: gone(pid), timeout=5)


def test_illegal_actions_answer_errors_and_change_nothing(client: Client):
    task_id = client.submit([sh("sleep 300")])
    assert wait_until(lambda: step_state(client, task_id, 0) == "running")
    resume = put(client, f"/{task_id}", "resume", lang="en")
    assert resume.status == 400 and resume.json["code"] == 400 and "not paused" in resume.json["message"]
    bad = put(client, f"/{task_id}", "explode", lang="en")
    assert bad.status == 400 and "action" in bad.json["message"]
    assert put(client, f"/{task_id}", "").status == 400
    assert put(client, f"/{task_id}", "pause").status == 200
    twice = put(client, f"/{task_id}", "pause", lang="en")
    assert twice.status == 400 and "already paused" in twice.json["message"]
    assert put(client, f"/{task_id}/0", "resume").status == 400  # the task is paused, not the step alone
    assert step_state(client, task_id, 0) == "paused"
    assert put(client, "/no-such-task", "kill").status == 404
    missing_step = put(client, f"/{task_id}/7", "kill")
    assert missing_step.status == 404 and missing_step.json["code"] == 1003
    assert put(client, f"/{task_id}/nope", "kill").status == 404
    assert put(client, f"/{task_id}", "kill").status == 200
    client.wait(task_id)
    for action in ("kill", "pause", "resume"):
        ended = put(client, f"/{task_id}", action, lang="en")
        assert ended.status == 400 and "ended" in ended.json["message"]
    assert client.get(f"/{task_id}").json["data"][0]["state"] == "已终止"


def test_kill_one_step_by_name_in_a_dag(client: Client, tmp_path):
    steps = [
        sh("sleep 300", name="slow"),
        sh(f"touch {tmp_path / 'dependent'}", name="after", depends_on=["slow"]),
        sh("sleep 0.3; echo ok", name="other"),
    ]
    task_id = client.submit(steps)
    assert wait_until(lambda: step_state(client, task_id, "slow") == "running")
    assert put(client, f"/{task_id}/slow", "kill").status == 200
    body = client.wait(task_id).json
    assert body["code"] == 1002
    assert [(s["name"], s["state"], s["code"]) for s in body["data"]] == [("slow", "已终止", 137), ("after", "已跳过", -1)]
    assert client.get(f"/{task_id}/other").json["data"]["message"] == "ok\n"
    assert not (tmp_path / "dependent").exists()


def test_a_step_not_started_can_be_held_and_released(client: Client, tmp_path):
    mark = tmp_path / "second"
    task_id = client.submit([sh("sleep 0.3"), sh(f"touch {mark}")])
    assert put(client, f"/{task_id}/1", "pause").status == 200
    assert step_state(client, task_id, 1) == "paused"
    assert wait_until(lambda: step_state(client, task_id, 0) == "stopped")
    assert client.executor.stats()["pool_busy"] == 0  # step 0's worker is back; step 1 is held
    assert not mark.exists()
    assert client.get(f"/{task_id}").json["code"] == 1001
    assert put(client, f"/{task_id}/1", "resume").status == 200
    assert client.wait(task_id).json["code"] == 0 and mark.exists()


def test_control_of_tasks_waiting_for_their_turn(make_server, tmp_path):
    client = make_server(pool_size=1, extra_live_tasks=0)
    gate = tmp_path / "gate"
    first = client.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.02; done")])
    held = client.submit([sh(f"touch {tmp_path / 'held'}")])
    killed = client.submit([sh(f"touch {tmp_path / 'killed'}"), sh("true")])
    assert client.get(f"/{held}").json["data"][0]["state"] == "等待中"
    assert put(client, f"/{held}", "pause").status == 200
    assert put(client, f"/{held}", "pause").status == 400
    assert put(client, f"/{killed}", "kill").status == 200
    body = client.wait(killed).json
    assert body["code"] == 1002 and [s["state"] for s in body["data"]] == ["已跳过", "已跳过"]
    listed = {t["id"]: t for t in client.get("/").json["data"]["tasks"]}
    assert listed[killed]["state"] == "已终止" and listed[killed]["code"] == 1002
    gate.touch()
    assert client.wait(first).json["code"] == 0
    assert wait_until(lambda: client.executor.stats()["tasks_live"] == 0)  # the slot is free, yet
    assert client.executor.stats()["pool_busy"] == 0 and not (tmp_path / "held").exists()
    assert client.get(f"/{held}?lang=en").json["code"] == 1001
    assert put(client, f"/{held}", "resume").status == 200
    assert client.wait(held).json["code"] == 0 and (tmp_path / "held").exists()
    assert not (tmp_path / "killed").exists()


def test_one_step_route_by_index_and_name(client: Client):
    task_id = client.submit([sh("echo a", name="first"), sh("exit 5", name="second")])
    client.wait(task_id)
    ok = client.get(f"/{task_id}/first").json
    assert ok["code"] == 0 and ok["data"]["step"] == 0 and ok["data"]["message"] == "a\n"
    by_index = client.get(f"/{task_id}/0").json
    by_index["data"].pop("times"), ok["data"].pop("times")
    assert by_index == ok
    failed = client.get(f"/{task_id}/1").json
    assert failed["code"] == 1002 and failed["message"] == "1, 执行失败" and failed["data"]["code"] == 5
    assert set(failed["data"]) == {"step", "name", "state", "code", "message", "times"}
    assert client.get(f"/{task_id}/2").status == 404
    assert client.get("/nope/0").status == 404


def test_an_unknown_step_of_a_known_task_says_the_step_is_missing_not_the_id(client: Client):
    """The seed's 'id不存在' for a step sent its reader after an id that exists."""
    task_id = client.submit([sh("echo a")])
    client.wait(task_id)
    for method, path, step in (("GET", f"/{task_id}/7", "7"), ("GET", f"/{task_id}/nope/log", "nope"),
                               ("PUT", f"/{task_id}/nope?action=kill", "nope")):
        zh = client.request(method, path)
        assert zh.status == 404 and zh.json == {"code": 1003, "message": f"该任务没有步骤 '{step}' (以序号或名称指定)"}
        en = client.request(method, path, headers={"Accept-Language": "en"})
        assert en.json["message"] == f"the task has no step '{step}' (by index or name)"
    assert client.get("/nope/0").json == {"code": 1003, "message": "id不存在, 沒有数据"}  # an unknown task: the seed's


def _stopped_or_gone(process: psutil.Process) -> bool:
    try:
        return process.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
