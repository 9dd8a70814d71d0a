"""One suite for the TaskRunner protocol, run against the in-process Executor and against the HTTP
Client talking to a real server: a tool switches between them by changing one line."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from osreapi.api import TaskRunner
from osreapi.client import Client
from osreapi.errors import ActionRejected, InvalidRequest, NotFound, TaskActive, TaskConflict
from osreapi.vocabulary import State

from .conftest import gone, read_pid, sh, wait_until


@pytest.fixture(params=["executor", "client"])
def runner(request: pytest.FixtureRequest, make_executor: Callable, make_server: Callable) -> TaskRunner:
    if request.param == "executor":
        return make_executor()
    client = Client(make_server().url, timeout=10)
    request.addfinalizer(client.close)
    return client


def states(runner: TaskRunner, task_id: str) -> list[State]:
    result = runner.get(task_id)
    return [] if result is None else [step.state for step in result.steps]


def test_both_satisfy_the_protocol(runner: TaskRunner):
    assert isinstance(runner, TaskRunner)


def test_sequential_task_succeeds_with_every_step_and_epoch_times(runner: TaskRunner):
    before = time.time() - 1  # the wire keeps whole seconds
    task_id = runner.submit([sh("echo one"), sh("echo two >&2", name="second")], task_id="seq-1")
    result = runner.wait(task_id, timeout=20)
    assert task_id == "seq-1" and result is not None and result.finished
    assert result.task.succeeded and result.task.state is State.STOPPED and result.task.count == 2
    assert result.task.mode == "sequential" and result.task.failed_step is None
    assert [(s.index, s.name, s.state, s.code) for s in result.steps] == [
        (0, "seq-1-0", State.STOPPED, 0),
        (1, "second", State.STOPPED, 0),
    ]
    assert [s.output for s in result.steps] == ["one\n", "two\n"]
    first, second = result.steps
    assert before <= first.begin <= first.end <= second.begin <= second.end <= time.time() + 1
    assert result.task.expires > time.time() + 3600  # the default 48 h key expiry


def test_failed_task_lists_every_step_and_names_the_failure(runner: TaskRunner):
    task_id = runner.submit([sh("true"), sh("echo broken; exit 3"), sh("echo never")])
    result = runner.wait(task_id, timeout=20)
    assert not result.task.succeeded and result.task.failed_step == 1
    assert [(s.state, s.code) for s in result.steps] == [
        (State.STOPPED, 0),
        (State.STOPPED, 3),
        (State.SKIPPED, -1),
    ]
    assert result.steps[1].output.startswith("broken\n")


def test_parallel_and_dag_modes(runner: TaskRunner, tmp_path: Path):
    gate = tmp_path / "gate"
    # In parallel the second step opens the gate the first waits for: they must run at once.
    parallel = runner.submit(
        [sh(f"while [ ! -e {gate} ]; do sleep 0.01; done"), sh(f"touch {gate}")], mode="parallel"
    )
    assert runner.wait(parallel, timeout=20).task.succeeded
    dag = runner.submit([sh("exit 1", name="a"), sh("true", name="b", depends_on=["a"]), sh("true", name="c")])
    result = runner.wait(dag, timeout=20)
    assert result.task.mode == "dag"
    assert [s.state for s in result.steps] == [State.STOPPED, State.SKIPPED, State.STOPPED]


def test_unknown_ids_and_bad_input(runner: TaskRunner):
    assert runner.get("no-such-task") is None
    assert runner.wait("no-such-task", timeout=1) is None
    for call in (runner.kill, runner.pause, runner.resume, runner.delete):
        with pytest.raises(NotFound):
            call("no-such-task")
    with pytest.raises(NotFound):
        runner.logs("no-such-task", 0)
    with pytest.raises(InvalidRequest, match="command_content"):
        runner.submit([{"command_type": "sh"}])
    with pytest.raises(InvalidRequest, match="mode"):
        runner.submit([sh("true")], mode="sideways")
    with pytest.raises(InvalidRequest, match="sort"):
        runner.list(sort="sideways")


def test_same_id_twice_is_idempotent_and_another_body_conflicts(runner: TaskRunner):
    assert runner.submit([sh("echo once")], task_id="same") == "same"
    assert runner.submit([sh("echo once")], task_id="same") == "same"
    with pytest.raises(TaskConflict):
        runner.submit([sh("echo other")], task_id="same")
    result = runner.wait("same", timeout=20)
    assert result.task.succeeded and result.task.count == 1 and result.steps[0].output == "once\n"
    assert [task.id for task in runner.list()] == ["same"]


def test_list_sorts_by_end(runner: TaskRunner, tmp_path: Path):
    gate = tmp_path / "gate"
    slow = runner.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.01; done")], task_id="slow")
    fast = runner.submit([sh("true")], task_id="fast")
    assert runner.wait(fast, timeout=20).task.succeeded
    by_end = [task.id for task in runner.list(sort="end")]
    assert by_end == ["fast", "slow"]  # a task without an end comes last
    gate.touch()
    assert runner.wait(slow, timeout=20).task.succeeded
    listed = {task.id: task for task in runner.list(sort="start")}
    assert set(listed) == {"slow", "fast"} and all(t.state is State.STOPPED for t in listed.values())


def test_wait_is_bounded(runner: TaskRunner, tmp_path: Path):
    gate = tmp_path / "gate"
    task_id = runner.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.01; done")])
    result = runner.wait(task_id, timeout=0.3)
    assert result is not None and not result.finished
    gate.touch()
    assert runner.wait(task_id, timeout=20).task.succeeded


def test_logs_follow_offset_and_whole(runner: TaskRunner, tmp_path: Path):
    gate = tmp_path / "gate"
    script = f"echo first; while [ ! -e {gate} ]; do sleep 0.01; done; printf 'héllo\\nlast'"
    task_id = runner.submit([sh(script, name="talk")])
    chunks = runner.logs(task_id, "talk", follow=True)
    assert next(chunks) == "first\n"  # live, before the step ends
    gate.touch()
    assert "".join(chunks) == "héllo\nlast"
    assert "".join(runner.logs(task_id, 0)) == "first\nhéllo\nlast"
    offset = len("first\nh".encode())
    assert "".join(runner.logs(task_id, "talk", offset=offset)) == "éllo\nlast"
    with pytest.raises(InvalidRequest, match="past the end"):
        runner.logs(task_id, "talk", offset=1000)


def test_kill_pause_resume_and_delete(runner: TaskRunner, tmp_path: Path):
    pid_file = tmp_path / "pid"
    task_id = runner.submit([sh(f"echo $$ > {pid_file}; exec sleep 300"), sh("true")])
    pid = read_pid(pid_file)
    assert wait_until(lambda: states(runner, task_id)[:1] == [State.RUNNING])
    runner.pause(task_id)
    assert wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    assert runner.get(task_id).task.state is State.PAUSED
    with pytest.raises(ActionRejected):
        runner.pause(task_id)
    runner.resume(task_id)
    assert wait_until(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED)
    with pytest.raises(TaskActive):
        runner.delete(task_id)
    runner.kill(task_id)
    result = runner.wait(task_id, timeout=20)
    assert result.task.state is State.KILLED and [s.state for s in result.steps] == [State.KILLED, State.SKIPPED]
    assert wait_until(lambda: gone(pid))
    with pytest.raises(ActionRejected):
        runner.kill(task_id)
    runner.delete(task_id)
    assert runner.get(task_id) is None


def test_one_step_of_a_parallel_task_is_killed_by_name(runner: TaskRunner, tmp_path: Path):
    gate = tmp_path / "gate"
    task_id = runner.submit(
        [sh("exec sleep 300", name="stuck"), sh(f"while [ ! -e {gate} ]; do sleep 0.01; done", name="ok")],
        mode="parallel",
    )
    assert wait_until(lambda: states(runner, task_id) == [State.RUNNING, State.RUNNING])
    runner.kill(task_id, "stuck")
    gate.touch()
    result = runner.wait(task_id, timeout=20)
    assert [(s.name, s.state) for s in result.steps] == [("stuck", State.KILLED), ("ok", State.STOPPED)]
    assert result.task.failed_step == 0


def test_logs_keep_carriage_returns_and_replace_bad_bytes(runner: TaskRunner):
    task_id = runner.submit([sh("printf 'step 1/2\\rstep 2/2\\r\\ndone\\n'; printf 'bad \\377 byte\\n'")])
    result = runner.wait(task_id, timeout=20)
    expected = "step 1/2\rstep 2/2\r\ndone\nbad \ufffd byte\n"
    assert result.steps[0].output == expected
    assert "".join(runner.logs(task_id, 0)) == expected
    assert "".join(runner.logs(task_id, 0, follow=True)) == expected
