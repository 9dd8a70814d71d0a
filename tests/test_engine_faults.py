"""The engine under crashes, races and odd control sequences: each test reproduces a failure of
the first engine (issue 8) and asserts what the OS and the store say afterwards."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pykka
import pytest

from osreapi import Executor
from osreapi.actors.messages import Enqueue, Ping, StepEnded, StepStarted
from osreapi.actors.step import EXIT_CANNOT_START
from osreapi.actors.task import TaskActor
from osreapi.executor import treekill
from osreapi.executor.reaper import LogSink, Reaper
from osreapi.records import StepRecord, TaskRecord
from osreapi.spec import StepSpec
from osreapi.storage.database import Database
from osreapi.vocabulary import State

from .conftest import (
    Client,
    console_script,
    gone,
    no_descriptor_free,
    read_pid,
    sh,
    wait_until,
)
from .test_storage import FakeClock


def put(client: Client, path: str, action: str):
    return client.request("PUT", f"{path}?action={action}")


def state_of(client: Client, task_id: str, step=0) -> str:
    return client.get(f"/{task_id}/{step}?lang=en").json["data"]["state"]


def marked_left(task_id: str) -> list[psutil.Process]:
    return treekill.marked_processes(task_id)


def saved_step(data: Path, task_id: str, index: int = 0) -> StepRecord:
    db = Database(data / "db")  # a second reader of the live store (or of a dead server's)
    try:
        return db.get_steps(task_id)[index]
    finally:
        db.close()


# -- 1. at most once -----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_step_never_runs_twice_when_the_server_is_killed_right_after_accepting(start_server, tmp_path):
    ledger = tmp_path / "ledger"
    for attempt, crash_after in enumerate((0.0, 0.001, 0.002, 0.003, 0.005, 0.008)):
        data = tmp_path / f"data{attempt}"
        server = start_server("--pool_size=2", data_dir=data)
        task_id = server.client.submit([sh(f'echo "$OSREAPI_TASK_ID $$" >> {ledger}; sleep 30')])
        time.sleep(crash_after)  # not a wait for anything: the crash window is swept on purpose
        server.kill()  # SIGKILL a few ms after POST answered
        restarted = start_server("--pool_size=2", data_dir=data)
        # Either recovery interrupted it (it may have started) or it runs now for the first time.
        assert wait_until(lambda: state_of(restarted.client, task_id) in ("interrupted", "running"), timeout=20)
        if state_of(restarted.client, task_id) == "running":
            assert wait_until(lambda: task_id in ledger.read_text() if ledger.exists() else False)
        runs = [line for line in (ledger.read_text().splitlines() if ledger.exists() else []) if task_id in line]
        assert len(runs) <= 1, runs
        assert restarted.terminate() == 0
        for line in runs:
            assert wait_until(lambda: gone(int(line.split()[1])), timeout=10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("paused", ["step", "task"])
def test_a_step_paused_while_it_ran_reads_interrupted_after_a_crash_not_skipped(start_server, tmp_path, paused):
    """Recovery took a step paused while it ran for one held before it started: the step that ran
    read "skipped", and a later step that never ran read "interrupted" in its place."""
    data = tmp_path / "data"
    server = start_server("--pool_size=2", data_dir=data)
    ledger = tmp_path / "ledger"
    task_id = server.client.submit([sh(f"echo $$ >> {ledger}; sleep 30", name="a"), sh("true", name="b")])
    pid = read_pid(ledger)
    assert put(server.client, f"/{task_id}" + ("/a" if paused == "step" else ""), "pause").status == 200
    assert wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    server.kill()
    restarted = start_server("--pool_size=2", data_dir=data)
    assert wait_until(lambda: gone(pid), timeout=20)
    assert state_of(restarted.client, task_id, "a") == "interrupted"
    assert state_of(restarted.client, task_id, "b") == "skipped"
    assert restarted.client.get(f"/{task_id}").json["message"].startswith("0, ")  # step a is the one that failed


@pytest.mark.timeout(60)
def test_a_tree_that_dropped_its_marker_is_killed_after_a_crash_by_its_saved_pid(start_server, tmp_path):
    """A running step's pid and its process's create time are saved once it has run a moment (a
    short step's go with its end); after a crash, recovery kills the tree by them when no marker
    is left to find it by."""
    data = tmp_path / "data"
    server = start_server("--pool_size=2", data_dir=data)
    task_id = server.client.submit([sh("echo $$ > pid; exec env -i sleep 300")])  # same pid, no marker
    pid = read_pid(data / "workspace" / task_id / "pid")

    def saved() -> StepRecord:
        return saved_step(data, task_id)

    assert wait_until(lambda: saved().pid_created is not None, timeout=10)
    assert saved().pid == pid and abs(saved().pid_created - psutil.Process(pid).create_time()) < 0.01
    assert not marked_left(task_id)  # only the saved pid can find it
    server.kill()
    restarted = start_server("--pool_size=2", data_dir=data)
    assert wait_until(lambda: gone(pid), timeout=20)
    assert state_of(restarted.client, task_id) == "interrupted"


@pytest.mark.timeout(120)
def test_a_crash_before_the_pid_is_saved_leaves_no_setsid_child_of_a_term_ignoring_step(start_server, tmp_path):
    """SIGKILL within PID_SAVE_DELAY of a step's start: only its run marker finds its processes.
    The step ignores TERM and starts a setsid child every few ms; recovery's one snapshot of the
    marked processes TERMed them, waited the grace and KILLed the snapshot, and the children
    started during the grace ran on. Recovery scans until nothing carries the marker."""
    ledger = tmp_path / "ledger"
    script = f"echo run >> {ledger}; echo $$ > pid; trap '' TERM; while :; do setsid sleep 1606 & sleep 0.02; done"
    for attempt in range(3):  # the crash must land before the pid is saved (0.2 s): almost always at once
        data = tmp_path / f"data{attempt}"
        server = start_server("--pool_size=2", data_dir=data)
        task_id = server.client.submit([sh(script)])
        read_pid(data / "workspace" / task_id / "pid")
        server.kill()
        if saved_step(data, task_id).pid is None:
            break
        treekill.kill_marked(task_id, grace=0.0)
    else:
        pytest.skip("the crash never landed before the pid was saved")
    try:
        restarted = start_server("--pool_size=2", data_dir=data)
        assert state_of(restarted.client, task_id) == "interrupted"  # recovery ran before it listened
        assert not marked_left(task_id)
        assert ledger.read_text().splitlines().count("run") == attempt + 1  # never run again
        assert restarted.terminate() == 0
    finally:
        treekill.kill_marked(task_id, grace=0.0)  # what the old recovery leaves


@pytest.mark.timeout(120)
def test_recovery_kills_every_leftover_run_at_once_not_one_grace_after_another(start_server, tmp_path):
    """Two steps were running at the crash, both ignoring TERM. Recovery TERMed the first, waited
    out the whole grace, KILLed it, and only then TERMed the second: a grace per leftover step
    (2 s each by default) before the restarted server listened. Now every leftover gets its TERM
    first and one grace serves them all: the second hears its TERM while the first still lives."""
    data = tmp_path / "data"
    server = start_server("--pool_size=2", data_dir=data)
    steps = [
        sh("echo $$ > a.pid; trap '' TERM; while :; do sleep 0.05; done", name="a"),
        # Its output is not the dead server's pipe: a write there (sh's "Terminated") is a SIGPIPE.
        # a's liveness from its state: a KILLed orphan may wait a moment as a zombie.
        sh("exec >/dev/null 2>&1; trap 'if grep -q \"^State:.[RS]\" /proc/$(cat a.pid)/status; then "
           "echo while-a-lives; else echo after-a; fi >> termed' TERM; echo $$ > b.pid; while :; do sleep 0.05; done", name="b"),
    ]
    task_id = server.client.submit(steps, "?async=true")
    workspace = data / "workspace" / task_id
    pids = [read_pid(workspace / "a.pid"), read_pid(workspace / "b.pid")]
    server.kill()
    try:
        restarted = start_server("--pool_size=2", data_dir=data)  # recovery runs before it listens
        assert all(gone(pid) for pid in pids) and not marked_left(task_id)
        assert (workspace / "termed").read_text().split() == ["while-a-lives"]
        assert restarted.terminate() == 0
    finally:
        treekill.kill_marked(task_id, grace=0.0)


# -- 3, 4, 5: control races and sequences --------------------------------------------------


@pytest.mark.timeout(60)
def test_pause_right_after_start_is_recorded_and_resume_finishes_the_step(client: Client):
    for _ in range(10):
        task_id = client.submit([sh("sleep 0.3; echo done", name="a")])
        assert put(client, f"/{task_id}/a", "pause").status == 200
        assert state_of(client, task_id, "a") == "paused"  # answered after it was recorded
        resumed = put(client, f"/{task_id}/a", "resume")
        assert resumed.status == 200, resumed.body
        body = client.wait(task_id).json
        assert body["code"] == 0 and body["data"][0]["message"] == "done\n"
    assert client.executor.stats()["pool_busy"] == 0


@pytest.mark.timeout(30)
def test_a_held_step_whose_dependency_was_killed_is_skipped_and_the_task_ends(client: Client):
    task_id = client.submit([sh("sleep 5", name="a"), sh("true", name="b")])
    assert put(client, f"/{task_id}/b", "pause").status == 200
    assert wait_until(lambda: state_of(client, task_id, "a") == "running")
    assert put(client, f"/{task_id}/a", "kill").status == 200
    assert wait_until(lambda: state_of(client, task_id, "a") == "killed")
    resumed = put(client, f"/{task_id}/b", "resume")
    assert resumed.status == 400  # b was skipped when a was killed: nothing left to resume
    body = client.wait(task_id).json
    assert body["code"] == 1002
    assert [(s["name"], s["state"]) for s in body["data"]] == [("a", "已终止"), ("b", "已跳过")]


@pytest.mark.timeout(60)
def test_resume_after_restart_of_a_task_paused_while_queued(make_executor, tmp_path):
    data = tmp_path / "data"
    first = make_executor(data, pool_size=1, extra_live_tasks=0)
    running = first.submit([sh("sleep 30")])
    waiting = first.submit([sh("sleep 30")])
    held = first.submit([sh("echo held")])
    first.pause(held)
    assert wait_until(lambda: first.get(running).steps[0].pid is not None)
    first.close()
    second = make_executor(data, pool_size=1, extra_live_tasks=0)
    assert second.get(running).task.state.value == "interrupted"
    assert wait_until(lambda: second.get(waiting).steps[0].pid is not None)
    second.resume(held)  # it waits behind `waiting` in the queue, not in the held set
    assert second.get(held).task.state.value == "pending"
    second.kill(waiting)
    result = second.wait(held, timeout=20)
    assert result.task.state.value == "stopped" and result.steps[0].output == "held\n"


@pytest.mark.timeout(30)
def test_kill_does_not_block_the_step_and_a_pause_meanwhile_is_refused(make_server):
    client = make_server(kill_grace=3.0, call_timeout="2s")
    task_id = client.submit([sh("trap '' TERM; echo $$ > pid; sleep 30", name="a")])
    pid = read_pid(client.executor.config.workspace(task_id) / "pid")
    assert put(client, f"/{task_id}/a", "kill").status == 200
    during = put(client, f"/{task_id}/a", "pause&lang=en")  # inside the 3 s grace: TERM is ignored
    assert during.status == 400 and "being killed" in during.json["message"]
    assert state_of(client, task_id, "a") != "paused"
    body = client.wait(task_id).json
    assert [(s["state"], s["code"]) for s in body["data"]] == [("已终止", 137)]
    assert wait_until(lambda: gone(pid), timeout=10)


@pytest.mark.timeout(60)
def test_control_right_after_submit_reaches_a_step_still_starting(executor):
    """A kill or pause sent while the step's start is being written overtakes the start itself."""
    for _ in range(10):
        killed = executor.submit([sh("sleep 30")])
        executor.kill(killed)
        result = executor.wait(killed, timeout=10)
        assert result.finished and result.steps[0].state.value == "killed", result
        paused = executor.submit([sh("echo $$ > pid; sleep 0.2; echo done")])
        executor.pause(paused)
        assert executor.get(paused).task.state.value == "paused"
        executor.resume(paused)
        result = executor.wait(paused, timeout=10)
        assert result.finished and result.steps[0].output == "done\n", result
    assert executor.stats()["pool_busy"] == 0


@pytest.mark.timeout(60)
def test_a_report_about_another_run_of_a_step_changes_nothing(make_executor):
    """A task runner serves one task after another: a late report (a pid timer, a stray end) is
    for a run that is not its step's current one, and is dropped; it once ended a running step."""
    executor = make_executor(pool_size=1, extra_live_tasks=0)
    task_id = executor.submit([sh("echo $$ > pid; sleep 30")])
    pid = read_pid(executor.config.workspace(task_id) / "pid")
    stray = (StepStarted(run=10**9, index=0, pid=1), StepEnded(10**9, 0, State.STOPPED, 0, "stray", time.time(), 1))
    for runner in pykka.ActorRegistry.get_by_class(TaskActor):
        for report in stray:
            runner.tell(report)
        runner.ask(StepStarted(run=10**9 + 1, index=0, pid=1), timeout=10)  # after the others: all handled
    step = executor.get(task_id).steps[0]
    assert step.state is State.RUNNING and step.pid != 1 and not gone(pid)
    executor.kill(task_id)
    result = executor.wait(task_id, timeout=20)
    assert result.steps[0].state is State.KILLED and wait_until(lambda: gone(pid), timeout=10)


# -- 8. nothing escapes ---------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_setsid_children_started_during_the_kill_grace_are_all_killed(make_server):
    client = make_server(kill_grace=1.0)
    task_id = client.submit([sh("trap '' TERM; while :; do sleep 0.3; setsid sleep 1000 & done", timeout="1s")])
    body = client.wait(task_id).json
    assert body["data"][0]["state"] == "执行超时"
    assert wait_until(lambda: not marked_left(task_id), timeout=15), [p.pid for p in marked_left(task_id)]


@pytest.mark.timeout(30)
def test_background_children_end_with_their_step_unless_kept(client: Client):
    plain = client.submit([sh("sleep 60 & echo $! > bg.pid")])
    kept = client.submit([sh("sleep 60 & echo $! > bg.pid", keep_background=True)])
    assert client.wait(plain).json["code"] == 0 and client.wait(kept).json["code"] == 0
    plain_bg = read_pid(client.executor.config.workspace(plain) / "bg.pid")
    kept_bg = read_pid(client.executor.config.workspace(kept) / "bg.pid")
    try:
        assert wait_until(lambda: gone(plain_bg), timeout=10)
        assert not gone(kept_bg)  # a daemon a step asked to keep
    finally:
        psutil.Process(kept_bg).kill()


@pytest.mark.timeout(40)
def test_a_term_ignoring_step_without_a_marker_is_killed_through_its_group(make_executor):
    """`env -i` drops the marker: the process group still holds it, and is killed at the grace."""
    ex = make_executor(kill_grace=0.5)
    task_id = ex.submit([sh("trap '' TERM; exec env -i sleep 300", timeout="1s")])
    result = ex.wait(task_id, timeout=15)
    assert result.finished and result.steps[0].state.value == "timeout"
    assert wait_until(lambda: gone(result.steps[0].pid), timeout=10)


@pytest.mark.timeout(40)
def test_a_kept_daemon_survives_a_new_task_that_reuses_its_expired_id(make_executor):
    now = [1000.0]
    ex = make_executor(key_expire="1s", clock=lambda: now[0])
    ex.submit([sh("sleep 300 >/dev/null 2>&1 & echo $! > ../daemon.pid", name="a", keep_background=True)], task_id="reused")
    assert ex.wait("reused", timeout=10).finished
    daemon = read_pid(ex.config.workspace_root / "daemon.pid")
    try:
        now[0] += 5  # the record expired: the id is free again
        ex.submit([sh("true", name="a")], task_id="reused")  # same task id, same step name
        assert ex.wait("reused", timeout=10).task.state.value == "stopped"
        assert wait_until(lambda: not ex._services.janitor.busy())  # its clean-up is done
        assert not gone(daemon)  # another run's daemon: not this step's to kill
    finally:
        psutil.Process(daemon).kill()


def test_no_descriptor_leaks_when_a_log_cannot_be_opened(executor):
    """An earlier step makes the next step's log path a directory. The log is made at the step's
    first byte: the step runs, its record keeps its output and says why the log has none."""
    steps = [sh("mkdir -p .osreapi/step-1.log", name="a"), sh("echo hi", name="b")]
    executor.wait(executor.submit(steps), timeout=10)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        result = executor.wait(executor.submit(steps), timeout=10)
        assert result.steps[1].code == 0 and result.steps[1].output.startswith("hi\n")
        assert "no log file (the log could not be written: Is a directory)" in result.steps[1].output
    assert len(os.listdir("/proc/self/fd")) - before < 3


def test_a_task_whose_workspace_cannot_be_made_says_why(make_executor, tmp_path):
    ex = make_executor()
    ex.config.workspace_root.mkdir(parents=True, exist_ok=True)
    (ex.config.workspace_root / "blocked").write_text("a file where the workspace goes")
    ex.submit([sh("true", name="a")], task_id="blocked")
    result = ex.wait("blocked", timeout=10)
    assert result.task.state.value == "stopped" and result.steps[0].pid is None  # it never ran
    # Its runner's try at the workspace fails quietly; the step's own start fails at its script and says why.
    assert result.steps[0].code == EXIT_CANNOT_START and "cannot start step" in result.steps[0].output
    assert "Not a directory" in result.steps[0].output, result.steps[0].output
    assert ex.wait(ex.submit([sh("echo next")]), timeout=10).steps[0].output == "next\n"


# -- 2. full disk and the log cap ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_full_disk_answers_507_keeps_reads_and_recovers_by_itself(make_server, small_disk):
    client = make_server(data_dir=small_disk / "data", max_log=1 << 20)
    before = client.submit([sh("echo before")])
    assert client.wait(before).json["code"] == 0
    running = client.submit([sh("while [ ! -e go ]; do sleep 0.05; done; head -c 3000000 /dev/zero | tr '\\0' x; echo")])
    assert wait_until(lambda: state_of(client, running) == "running")
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=40"], capture_output=True)
    (client.executor.config.workspace(running) / "go").touch()  # it prints 3 MB onto the full disk
    big = [sh("echo during # " + "x" * 600_000)]  # needs new pages: freed ones cannot hold it
    refused = client.post("/", big)
    assert refused.status == 507 and refused.json["code"] == 507
    assert "磁盘已满" in refused.json["message"]
    assert client.get(f"/{before}").json["code"] == 0  # reads go on
    assert client.get("/healthz").json["data"]["status"] == "disk full"
    filler.unlink()
    # By itself: the store probes for room every second, nobody has to submit first.
    assert wait_until(lambda: client.get("/healthz").json["data"]["status"] == "ok", timeout=10)
    assert client.post("/", big).status == 200
    body = client.wait(running).json
    assert body["code"] in (0, 1002)  # ended, and recorded once the disk had room


@pytest.mark.timeout(60)
def test_deleting_tasks_frees_a_disk_their_logs_filled(make_server, small_disk):
    """The steps' own logs filled the disk: every DELETE answered 507 (its record's deletion needs a
    write) and removed nothing, so the API could not free the disk it had filled. A delete removes
    the task's files first: the space comes back, and the record goes with a second try at worst."""
    client = make_server(data_dir=small_disk / "data")
    tasks = [client.submit([sh("head -c 3000000 /dev/zero | tr '\\0' y")]) for _ in range(4)]
    for task_id in tasks:
        assert client.wait(task_id).json["code"] == 0
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=1M", "count=40"], capture_output=True)
    assert wait_until(lambda: client.post("/", [sh("echo " + "x" * 600_000)]).status == 507)  # the disk is full
    for task_id in tasks:
        first = client.request("DELETE", f"/{task_id}")
        assert first.status in (200, 507), first.body
        assert not client.executor.config.workspace(task_id).exists()  # its files are gone either way
        if first.status == 507:
            assert wait_until(lambda: client.request("DELETE", f"/{task_id}").status in (200, 404), timeout=10)
        assert client.get(f"/{task_id}").status == 404
    assert wait_until(lambda: client.get("/healthz").json["data"]["status"] == "ok", timeout=10)


@pytest.mark.timeout(60)
def test_the_sweep_frees_a_disk_the_expired_tasks_logs_filled(make_executor, small_disk):
    """The same for expired tasks: the sweep's deletion of their records failed on the full disk,
    before it removed their files, so the disk stayed full for good."""
    now = [time.time()]
    ex = make_executor(small_disk / "data", clock=lambda: now[0], key_expire="1h")
    tasks = [ex.submit([sh("head -c 3000000 /dev/zero | tr '\\0' y")]) for _ in range(4)]
    for task_id in tasks:
        assert ex.wait(task_id, timeout=20).task.state is State.STOPPED
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=1M", "count=40"], capture_output=True)
    now[0] += 7200
    ex.sweep()
    assert not any(ex.config.workspace(task_id).exists() for task_id in tasks)  # their files went first
    # Then the records (an expired one already reads as gone: look at the store itself).
    assert wait_until(lambda: ex.sweep() >= 0 and all(ex._db.get_task(t) is None for t in tasks), timeout=10)


@pytest.mark.timeout(30)
def test_log_files_are_capped_on_disk_with_a_marker_and_the_tail(make_server):
    client = make_server(max_log=256 * 1024)
    task_id = client.submit([sh("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo the-last-line")])
    body = client.wait(task_id).json
    assert body["code"] == 0
    log_file = client.executor.log_path(task_id, 0)
    assert log_file.stat().st_size < 256 * 1024 + 64 * 1024 + 200
    text = log_file.read_text()
    assert "bytes of output dropped (over the --max_log cap)" in text
    assert text.rstrip().endswith("the-last-line")


# -- 6. one failure does not stop the engine -------------------------------------------------


@pytest.mark.timeout(30)
def test_a_task_that_cannot_start_ends_interrupted_and_the_engine_goes_on(make_executor, tmp_path):
    data = tmp_path / "data"
    db = Database(data / "db")
    broken = TaskRecord(id="broken", mode="dag", count=1, accepted=1.0)
    spec = StepSpec(name="a", command_type="sh", content="true", depends_on=("missing",))
    db.create_task(broken, (StepRecord(0, "a"),), (spec,), now=1.0)
    db.close()
    ex = make_executor(data)
    assert wait_until(lambda: ex.get("broken").task.state.value == "interrupted", timeout=10)
    assert "task not started" in ex.get("broken").steps[0].output
    ex._supervisor.tell(Enqueue("broken"))  # an ended task queued again is simply dropped
    task_id = ex.submit([sh("echo alive")])
    assert ex.wait(task_id, timeout=20).steps[0].output == "alive\n"


def fail_when_a_step_starts(monkeypatch, task_id: str, index: int) -> None:
    """Inject a fault where a task runner records a step as starting (a worker in its hand)."""
    from osreapi.actors.taskstate import TaskState

    starting = TaskState.step_starting

    def failing(self, step_index, now):
        if self.task.id == task_id and step_index == index:
            raise RuntimeError("injected fault")
        return starting(self, step_index, now)

    monkeypatch.setattr(TaskState, "step_starting", failing)


@pytest.mark.timeout(60)
def test_a_task_runner_that_fails_holding_a_granted_worker_gives_it_back(make_executor, monkeypatch):
    """A fault injected where a task runner takes a worker the pool granted it (the only way to
    reach this window): the task ends interrupted with the reason, the worker goes back to the
    pool, and with a pool of one the next task still runs. Before, the runner died with the
    worker in hand and the pool had no worker left, for good."""
    fail_when_a_step_starts(monkeypatch, "faulty", 1)
    ex = make_executor(pool_size=1)
    blocker = ex.submit([sh("while [ ! -e go ]; do sleep 0.02; done")])  # holds the only worker
    assert wait_until(lambda: ex.get(blocker).steps[0].state.value == "running")
    ex.submit([sh("true", name="a"), sh("true", name="b")], task_id="faulty")  # b's worker comes by message
    (ex.config.workspace(blocker) / "go").touch()
    result = ex.wait("faulty", timeout=20)
    assert result.task.state.value == "interrupted"
    assert "the engine failed" in result.steps[1].output and "injected fault" in result.steps[1].output
    assert wait_until(lambda: ex.stats()["pool_busy"] == 0, timeout=10)
    assert ex.wait(ex.submit([sh("echo next")]), timeout=20).steps[0].output == "next\n"


@pytest.mark.timeout(60)
def test_a_step_about_to_start_when_its_runner_fails_never_runs(make_executor, monkeypatch):
    """Two parallel steps: the first is granted a worker and about to start (its start not yet
    saved) when taking the second fails. The first must not run (the task is recorded as
    interrupted), both workers go back to the pool, the engine goes on."""
    fail_when_a_step_starts(monkeypatch, "faulty", 1)
    ex = make_executor(pool_size=2)
    ex.submit([sh("touch ran", name="a"), sh("true", name="b")], mode="parallel", task_id="faulty")
    result = ex.wait("faulty", timeout=20)
    assert result.task.state.value == "interrupted"
    assert result.steps[0].state.value == "interrupted" and "injected fault" in result.steps[0].output
    assert not (ex.config.workspace("faulty") / "ran").exists()
    assert wait_until(lambda: ex.stats()["pool_busy"] == 0, timeout=10)
    assert ex.wait(ex.submit([sh("echo next")] * 3, mode="parallel"), timeout=20).steps[2].output == "next\n"


def fail_on_control(monkeypatch, task_id: str) -> None:
    """Inject a fault where a queued or running task applies a control request."""
    from osreapi.actors.taskstate import TaskState

    control = TaskState.control

    def failing(self, action, index, now):
        if self.task.id == task_id:
            raise RuntimeError("injected fault")
        return control(self, action, index, now)

    monkeypatch.setattr(TaskState, "control", failing)


def fail_interrupts_in_the_runner(monkeypatch, task_id: str) -> None:
    """Inject a fault every time the task's runner interrupts it (while failing, and again in
    pykka's on_failure): the runner stops."""
    from osreapi.actors.taskstate import TaskState

    interrupt = TaskState.interrupt

    def failing(self, *args, **kwargs):
        if self.task.id == task_id and threading.current_thread().name.startswith("TaskActor"):
            raise RuntimeError("injected fault while failing")
        return interrupt(self, *args, **kwargs)

    monkeypatch.setattr(TaskState, "interrupt", failing)


def hold_then_fail_control(monkeypatch, task_id: str, action: str | None = None) -> tuple[threading.Event, threading.Event]:
    """Inject a fault where the task's runner applies a control request (`action` only, when
    given), held there until the test sets `release`; `entered` is set once it is held."""
    from osreapi.actors.taskstate import TaskState

    control = TaskState.control
    entered, release = threading.Event(), threading.Event()

    def failing(self, what, index, now):
        if self.task.id == task_id and action in (None, what):
            entered.set()
            assert release.wait(20)
            raise RuntimeError("injected fault")
        return control(self, what, index, now)

    monkeypatch.setattr(TaskState, "control", failing)
    return entered, release


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["supervisor", "task runner"])
def test_a_failure_handling_a_control_request_answers_it_and_the_engine_goes_on(make_server, monkeypatch, where):
    """A fault injected while a queued task is paused: by the supervisor (the task waits there:
    it would read the task's record, where an LMDB error would do the same) or by its task runner.
    That request answers 500 at once and the engine goes on. Before, the supervisor stopped (no
    queued task started again, every later submit failed), and the runner left the request
    unanswered until it timed out (503)."""
    fail_on_control(monkeypatch, "faulty")
    client = make_server(pool_size=1, extra_live_tasks=0 if where == "supervisor" else 16)
    blocker = client.submit([sh("while [ ! -e go ]; do sleep 0.02; done")])  # holds the only worker
    assert wait_until(lambda: state_of(client, blocker) == "running")
    client.submit([sh("echo queued")], "?id=faulty")
    answer = put(client, "/faulty", "pause")
    assert answer.status == 500 and answer.json["code"] == 500  # the engine's fault, said as such
    (client.executor.config.workspace(blocker) / "go").touch()
    ended = client.wait("faulty").json
    if where == "supervisor":
        assert ended["code"] == 0  # the queued task still starts and runs
    else:
        assert ended["code"] == 1002 and "injected fault" in json.dumps(ended, ensure_ascii=False)
    assert client.wait(client.submit([sh("echo later")])).json["code"] == 0


@pytest.mark.timeout(60)
def test_a_runner_failure_while_a_step_runs_waits_for_its_end_and_the_next_task_is_untouched(
    make_executor, monkeypatch
):
    """A fault injected while a task runner applies a pause to a running, TERM-ignoring step (no
    real input reaches this window). The task ends interrupted with the reason once its process is
    gone, and the task queued behind it, run next by the same runner, runs its step. Before, the
    task was recorded ended at once, its process still in the kill grace, and that step's late end
    was applied to the next task's step 0, recorded 'killed on request' without ever running."""
    fail_on_control(monkeypatch, "faulty")
    ex = make_executor(pool_size=1, extra_live_tasks=0, kill_grace=2.0)  # one runner, one worker
    ex.submit([sh("echo $$ > pid; trap '' TERM; while :; do sleep 0.05; done")], task_id="faulty")
    pid = read_pid(ex.config.workspace("faulty") / "pid")
    following = ex.submit([sh("echo ran")])  # queued: it gets the same runner
    with pytest.raises(RuntimeError, match="injected fault"):
        ex.control("faulty", "pause")
    result = ex.wait("faulty", timeout=20)
    assert result.task.state.value == "interrupted"
    assert result.steps[0].state.value == "interrupted" and "injected fault" in result.steps[0].output
    assert gone(pid)  # ended only once its process had
    after = ex.wait(following, timeout=20)
    assert after.task.state.value == "stopped"
    assert (after.steps[0].state.value, after.steps[0].code, after.steps[0].output) == ("stopped", 0, "ran\n")


@pytest.mark.timeout(60)
def test_a_runner_failure_while_the_server_stops_its_steps_still_kills_them(make_executor, monkeypatch, tmp_path):
    """A fault injected right after a task runner marks its steps as stopping on the server's stop,
    before it sends the stops (no real input reaches this window). The runner's failure handling
    sends them: the step's tree is killed and the task reads back interrupted. Before, the step was
    recorded lost and its process ran on after close()."""
    from osreapi.actors.taskstate import TaskState

    end_all = TaskState.end_all

    def failing(self, state):
        targets = end_all(self, state)
        if self.task.id == "faulty" and state.value == "interrupted" and targets:
            raise RuntimeError("injected fault")
        return targets

    monkeypatch.setattr(TaskState, "end_all", failing)
    ex = make_executor(tmp_path / "data")
    ex.submit([sh("echo $$ > pid; sleep 300")], task_id="faulty")
    pid = read_pid(ex.config.workspace("faulty") / "pid")
    try:
        ex.close(timeout=10)
        assert wait_until(lambda: gone(pid), timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the old code leaves it running
    monkeypatch.undo()
    result = make_executor(tmp_path / "data").get("faulty")
    assert result.task.state.value == "interrupted" and "injected fault" in result.steps[0].output


@pytest.mark.timeout(60)
def test_a_task_killed_before_the_server_stops_is_recorded_killed(make_executor, tmp_path):
    """A kill under way (its step ignores TERM and waits out the grace) when the server stops: the
    task ends killed, as asked, not interrupted by the stop."""
    data = tmp_path / "data"
    ex = make_executor(data, kill_grace=1.0)
    task_id = ex.submit([sh("trap '' TERM; echo go > started; while :; do sleep 0.05; done")])
    assert wait_until(lambda: (ex.config.workspace(task_id) / "started").exists())
    ex.kill(task_id)
    ex.close()
    with Executor(data) as again:
        assert again.get(task_id).task.state is State.KILLED


@pytest.mark.timeout(60)
def test_a_runner_that_fails_while_failing_still_kills_its_steps(make_executor, monkeypatch, tmp_path):
    """Faults injected twice: a pause fails, then the interrupt that handles it fails once. The
    runner stops (pykka), but its running step's tree is killed: it used to run on, holding its
    pool slot, with nobody left to stop it."""
    from osreapi.actors.taskstate import TaskState

    fail_on_control(monkeypatch, "faulty")
    interrupt, failed = TaskState.interrupt, []

    def failing_once(self, *args, **kwargs):
        if self.task.id == "faulty" and not failed:
            failed.append(True)
            raise RuntimeError("injected fault while failing")
        return interrupt(self, *args, **kwargs)

    monkeypatch.setattr(TaskState, "interrupt", failing_once)
    pid_file = tmp_path / "pid"
    ex = make_executor()
    ex.submit([sh(f"echo $$ > {pid_file}; exec sleep 60")], task_id="faulty")
    pid = read_pid(pid_file)
    with pytest.raises(RuntimeError, match="injected fault"):
        ex.pause("faulty")
    assert wait_until(lambda: gone(pid))
    assert wait_until(lambda: ex.stats()["pool_busy"] == 0)
    assert ex.wait("faulty", timeout=10).task.state is State.INTERRUPTED  # and the task ended


@pytest.mark.timeout(60)
def test_a_runner_that_fails_three_times_frees_its_slot_and_its_task_still_ends(make_executor, monkeypatch, tmp_path):
    """Faults injected three times in a row in one task runner: a pause fails, then every interrupt
    it tries (while failing, then in pykka's on_failure). The runner stops without ending its
    task. The supervisor still frees its slot, kills its step's tree and ends the task from the
    store; before, the dead runner stayed live: its slot taken and the server's stop waiting out
    its timeout."""
    fail_on_control(monkeypatch, "faulty")
    fail_interrupts_in_the_runner(monkeypatch, "faulty")
    pid_file = tmp_path / "pid"
    ex = make_executor(pool_size=1, extra_live_tasks=0)
    ex.submit([sh(f"echo $$ > {pid_file}; exec sleep 60")], task_id="faulty")
    pid = read_pid(pid_file)
    with pytest.raises(RuntimeError, match="injected fault"):
        ex.pause("faulty")
    assert wait_until(lambda: gone(pid), timeout=20)
    result = ex.wait("faulty", timeout=20)
    assert result.task.state is State.INTERRUPTED and "its runner failed" in result.steps[0].output
    assert wait_until(lambda: ex.stats()["pool_busy"] == 0 and ex.stats()["tasks_live"] == 0, timeout=10)
    assert ex.wait(ex.submit([sh("echo next")]), timeout=20).steps[0].output == "next\n"  # the slot is free


@pytest.mark.timeout(60)
def test_a_control_request_queued_to_a_runner_that_stops_is_answered_not_left_to_time_out(make_executor, monkeypatch):
    """A pause fails in its task runner, and so does every interrupt it tries: the runner stops
    (pykka). A kill queued behind that pause in the runner's mailbox was dropped with the mailbox:
    pykka answers the asks it drops, not a tell carrying our Reply, so the kill's caller waited out
    its whole call_timeout and was told the engine was busy. It is answered at once now."""
    from osreapi.errors import EngineBusy, EngineFailed

    entered, release = hold_then_fail_control(monkeypatch, "faulty", "pause")  # until the kill waits behind it
    fail_interrupts_in_the_runner(monkeypatch, "faulty")
    ex = make_executor(pool_size=1, extra_live_tasks=0, call_timeout="20s")
    ex.submit([sh("exec sleep 60")], task_id="faulty")
    assert wait_until(lambda: ex.get("faulty").steps[0].state is State.RUNNING)
    (runner,) = pykka.ActorRegistry.get_by_class(TaskActor)
    paused: list[BaseException] = []
    pausing = threading.Thread(target=lambda: paused.append(pytest.raises(RuntimeError, ex.pause, "faulty").value))
    pausing.start()
    assert entered.wait(10)
    killed: list[BaseException] = []

    def kill() -> None:
        try:
            ex.kill("faulty")
        except Exception as exc:  # noqa: BLE001 - which one is the point
            killed.append(exc)

    killing = threading.Thread(target=kill)
    killing.start()
    assert wait_until(lambda: not runner.actor_inbox.empty())  # the kill waits behind the pause
    release.set()
    pausing.join(20)
    killing.join(30)
    assert not killing.is_alive() and len(killed) == 1
    assert not isinstance(killed[0], EngineBusy), killed[0]  # answered, not timed out
    assert isinstance(killed[0], EngineFailed), killed[0]  # ours, not pykka's ActorDeadError
    assert ex.wait("faulty", timeout=20).task.state is State.INTERRUPTED  # the supervisor ended it


@pytest.mark.timeout(60)
def test_a_step_whose_start_reaches_its_worker_after_its_runner_stopped_does_not_run(make_executor, monkeypatch):
    """A task runner stops (a pause fails, then every interrupt it tries) while its step's start
    is on its way through the store. The supervisor has the janitor kill the step's run by its
    marker, but a process not started yet has no marker to find: the janitor's scan comes back
    empty and it is done, and the worker then ran the step for a runner that no longer existed,
    its process running on to its end, holding its pool slot, in a task recorded interrupted.
    (The worker's start is held here until the janitor is done, which a busy host does too.) A
    worker now starts no step for a runner that has stopped, and a step whose runner is gone by
    the time its pid is due stops itself."""
    from osreapi.actors.store import StoreActor
    from osreapi.executor import process

    fail_on_control(monkeypatch, "faulty")
    fail_interrupts_in_the_runner(monkeypatch, "faulty")
    save, start_step = StoreActor._save, process.start_step
    holding, release = threading.Event(), threading.Event()

    def slow_save(self, messages):
        if any(m.task_id == "faulty" and m.then for m in messages) and not holding.is_set():
            holding.set()
            assert release.wait(20)  # the start waits in the store until the runner has stopped
        return save(self, messages)

    def late_start(*args, **kwargs):
        janitor = ex._services.janitor
        assert wait_until(janitor.busy) and wait_until(lambda: not janitor.busy())  # it found nothing
        return start_step(*args, **kwargs)

    monkeypatch.setattr(StoreActor, "_save", slow_save)
    monkeypatch.setattr(process, "start_step", late_start)
    ex = make_executor(pool_size=1, extra_live_tasks=0)
    ex.submit([sh("exec sleep 60")], task_id="faulty")
    assert holding.wait(10)
    (runner,) = pykka.ActorRegistry.get_by_class(TaskActor)
    with pytest.raises(RuntimeError, match="injected fault"):
        ex.pause("faulty")
    assert wait_until(lambda: not runner.is_alive())
    release.set()
    assert ex.wait("faulty", timeout=20).task.state is State.INTERRUPTED
    try:
        assert wait_until(lambda: ex.stats()["pool_busy"] == 0, timeout=20)  # the worker is free again
        assert not marked_left("faulty")
    finally:
        treekill.kill_marked("faulty", grace=0.0)  # what the old worker leaves running


@pytest.mark.timeout(60)
def test_a_worker_granted_to_a_runner_that_stops_goes_back_to_the_pool(make_executor, tmp_path, monkeypatch):
    """The only worker is granted to a task's runner while that runner is failing (a pause fails,
    then every interrupt it tries): the grant waits in the runner's mailbox, which pykka drops
    when the runner stops. The worker was never given back: the pool stayed full for good and no
    step ran again. A grant left in a stopped runner's mailbox now returns its worker."""
    entered, release = hold_then_fail_control(monkeypatch, "faulty")  # until the grant waits behind it
    fail_interrupts_in_the_runner(monkeypatch, "faulty")
    ex = make_executor(pool_size=1)
    go = tmp_path / "go"
    blocker = ex.submit([sh(f"while [ ! -e {go} ]; do sleep 0.02; done")])  # holds the only worker
    assert wait_until(lambda: ex.get(blocker).steps[0].state is State.RUNNING)
    ex.submit([sh("echo never")], task_id="faulty")
    assert wait_until(lambda: ex.stats()["pool_waiting"] == 1)
    runner = next(ref for ref in pykka.ActorRegistry.get_by_class(TaskActor)
                  if getattr(ref._actor_weakref()._state, "task", None) and ref._actor_weakref()._state.task.id == "faulty")
    pausing = threading.Thread(target=lambda: pytest.raises(RuntimeError, ex.pause, "faulty"))
    pausing.start()
    assert entered.wait(10)
    go.touch()
    assert wait_until(lambda: not runner.actor_inbox.empty())  # the grant waits behind the pause
    release.set()
    pausing.join(20)
    assert ex.wait("faulty", timeout=20).task.state is State.INTERRUPTED
    assert ex.wait(blocker, timeout=20).task.state is State.STOPPED
    after = ex.wait(ex.submit([sh("echo next")]), timeout=20)  # the worker is back in the pool
    assert after is not None and after.steps[0].output == "next\n", after
    assert wait_until(lambda: ex.stats()["pool_busy"] == 0)


@pytest.mark.timeout(60)
def test_a_runner_that_stops_is_ended_from_its_last_saves_not_from_before_them(make_executor, monkeypatch):
    """A step's end is on its way through the store when its task runner stops (a pause fails,
    then every interrupt it tries). The supervisor read the store before that save was committed,
    and its interrupted records, saved after it, overwrote the step that had succeeded. The runner's
    stop now reaches the supervisor through the store, behind the runner's own saves."""
    from osreapi.actors.store import StoreActor

    fail_on_control(monkeypatch, "faulty")
    fail_interrupts_in_the_runner(monkeypatch, "faulty")
    save = StoreActor._save
    holding, release = threading.Event(), threading.Event()

    def slow_end(self, messages):
        ended = any(m.task_id == "faulty" and any(s.index == 0 and s.state is State.STOPPED for s in m.steps)
                    for m in messages)
        if ended and not holding.is_set():
            holding.set()
            assert release.wait(20)  # step 0's end waits in the store until the runner has stopped
        return save(self, messages)

    monkeypatch.setattr(StoreActor, "_save", slow_end)
    ex = make_executor(extra_live_tasks=0)  # one runner
    ex.submit([sh("echo done", name="quick"), sh("exec sleep 60", name="long")], task_id="faulty", mode="parallel")
    assert holding.wait(10)
    (runner,) = pykka.ActorRegistry.get_by_class(TaskActor)
    pausing = threading.Thread(target=lambda: pytest.raises(RuntimeError, ex.pause, "faulty"))
    pausing.start()
    assert wait_until(lambda: not runner.is_alive())
    release.set()
    pausing.join(20)
    result = ex.wait("faulty", timeout=20)
    assert result.task.state is State.INTERRUPTED
    quick, long = result.steps
    assert (quick.state, quick.code, quick.output) == (State.STOPPED, 0, "done\n")  # as it ended
    assert long.state is State.INTERRUPTED and "its runner failed" in long.output
    assert wait_until(lambda: not marked_left("faulty"))


@pytest.mark.timeout(60)
def test_a_runner_that_stops_while_the_disk_is_full_is_ended_from_the_records_the_store_kept(
    make_executor, small_disk, tmp_path, monkeypatch
):
    """A step's end is refused by a full disk (the store keeps it in memory and writes it again
    later) when its task's runner stops. The supervisor read the task back from LMDB, where that
    step still ran, marked it interrupted, and its save, merged over what the store kept,
    overwrote the real end: once the disk had room, the wrong record was written. The store now
    builds the interrupted records itself, from what it kept over what LMDB holds."""
    fail_on_control(monkeypatch, "faulty")
    fail_interrupts_in_the_runner(monkeypatch, "faulty")
    ex = make_executor(small_disk / "data", extra_live_tasks=0)  # one runner
    go, printed = tmp_path / "go", "x" * 600_000  # an end whose record needs new pages: refused
    ex.submit([sh(f"printf {printed}; while [ ! -e {go} ]; do sleep 0.02; done", name="quick"),
               sh("exec sleep 60", name="long")], task_id="faulty", mode="parallel")
    log = ex.log_path("faulty", 0)
    assert wait_until(lambda: log.exists() and log.stat().st_size == len(printed))  # on disk while there was room
    assert wait_until(lambda: all(s.state is State.RUNNING for s in ex.get("faulty").steps))
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=40"], capture_output=True, check=False)
    (runner,) = pykka.ActorRegistry.get_by_class(TaskActor)
    go.touch()  # outside the full disk
    assert wait_until(lambda: runner._actor_weakref()._state.steps[0].state is State.STOPPED)  # its end goes to the store
    with pytest.raises(RuntimeError, match="injected fault"):
        ex.pause("faulty")  # the runner fails, then stops
    assert wait_until(lambda: not runner.is_alive() and ex.stats()["tasks_live"] == 0)
    assert wait_until(lambda: not marked_left("faulty"))  # the long step's processes are killed
    ex._store.ask(Ping())  # the store has handled what the supervisor told it
    assert ex.check_health() == "disk full"
    assert [s.state for s in ex.get("faulty").steps] == [State.RUNNING, State.RUNNING]  # LMDB is stale
    filler.unlink()
    assert wait_until(lambda: ex.check_health() == "ok", timeout=10)  # every kept record is written
    task, (quick, long) = ex._db.get_task_and_steps("faulty")  # what LMDB holds now
    assert task.state is State.INTERRUPTED
    assert (quick.state, quick.code, quick.output) == (State.STOPPED, 0, printed)  # as it ended
    assert long.state is State.INTERRUPTED and "its runner failed" in long.output
    assert not marked_left("faulty")


def refuse_writes(monkeypatch) -> threading.Event:
    """While the event is set, every write of records fails as on a full disk (a real one lets a
    small record into pages freed before, so it could not refuse a control's write for sure)."""
    save_many = Database.save_many
    full = threading.Event()

    def refusing(self, changes):
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return save_many(self, changes)

    monkeypatch.setattr(Database, "save_many", refusing)
    return full


@pytest.mark.timeout(60)
def test_a_task_that_cannot_start_while_the_disk_is_full_keeps_the_kill_the_store_kept(
    make_executor, tmp_path, monkeypatch
):
    """A queued task's step is killed while the disk is full (the store keeps the change in
    memory), then no runner can be started for the task. The supervisor built the interrupted
    records from LMDB, where that step was still pending: it was saved as skipped over the kill."""
    from osreapi.actors.supervisor import SupervisorActor
    from osreapi.errors import DiskFull

    full = refuse_writes(monkeypatch)

    def no_runner(self):
        raise RuntimeError("injected fault: no runner")

    ex = make_executor(pool_size=1, extra_live_tasks=0)  # one task at a time
    go = tmp_path / "go"
    blocker = ex.submit([sh(f"while [ ! -e {go} ]; do sleep 0.02; done")])
    assert wait_until(lambda: ex.get(blocker).steps[0].state is State.RUNNING)
    ex.submit([sh("echo a", name="a"), sh("echo b", name="b")], task_id="faulty")
    full.set()
    with pytest.raises(DiskFull):
        ex.control("faulty", "kill", 1)  # refused, and kept to be written once there is room
    monkeypatch.setattr(SupervisorActor, "_task_runner", no_runner)
    go.touch()
    assert wait_until(lambda: ex.stats()["tasks_queued"] == 0 and ex.stats()["tasks_live"] == 0)
    ex._store.ask(Ping())  # the store has handled what the supervisor told it
    assert ex.get("faulty").steps[1].state is State.PENDING  # LMDB is stale
    full.clear()
    assert wait_until(lambda: ex.check_health() == "ok", timeout=10)  # every kept record is written
    task, (first, killed) = ex._db.get_task_and_steps("faulty")
    assert task.state is State.INTERRUPTED
    assert first.state is State.INTERRUPTED and "task not started" in first.output
    assert killed.state is State.KILLED
    assert ex.get(blocker).task.state is State.STOPPED


# -- 9, 10: ids and data dirs ----------------------------------------------------------------


def test_an_expired_id_posted_again_is_a_new_task(make_executor, tmp_path):
    now = [1000.0]
    ex = make_executor(key_expire="1s", clock=lambda: now[0])
    first = ex.submit_task([sh("echo run >> ../runs")], task_id="again")
    assert ex.wait("again", timeout=20).finished
    assert ex.submit_task([sh("echo run >> ../runs")], task_id="again").created is False  # still kept
    now[0] += 2  # past its expiry, before any sweep
    second = ex.submit_task([sh("echo run >> ../runs")], task_id="again")
    assert first.created and second.created
    assert ex.wait("again", timeout=20).task.state.value == "stopped"
    assert (ex.config.workspace_root / "runs").read_text() == "run\nrun\n"


@pytest.mark.timeout(30)
def test_a_second_server_on_the_same_data_dir_exits_and_changes_nothing(start_server, tmp_path):
    data = tmp_path / "data"
    first = start_server(data_dir=data)
    task_id = first.client.submit([sh("echo $$ > pid; sleep 30")])
    pid = read_pid(data / "workspace" / task_id / "pid")
    second = subprocess.run(
        [console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(data)],
        capture_output=True, timeout=20, stdin=subprocess.DEVNULL,
    )
    assert second.returncode != 0
    assert f"is in use by pid {first.proc.pid}" in second.stderr.decode()
    assert not gone(pid) and state_of(first.client, task_id) == "running"
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(20) == 0


# -- the reaper: one epoll batch, while it closes fds that other threads reuse ----------------


def _started(argv: list[str], stdin: int = subprocess.DEVNULL) -> tuple[subprocess.Popen, int]:
    """A process with its output into a pipe, as a step's; returns it and the pipe's read end."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=write_end, stderr=subprocess.STDOUT)
    finally:
        os.close(write_end)
    return proc, read_end


def _has_exited(proc: subprocess.Popen) -> bool:
    """Exited and not reaped yet (reaping is the reaper's)."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


@pytest.mark.timeout(60)
def test_a_watch_made_while_the_reaper_works_through_a_batch_reports_its_process_end(tmp_path):
    """The reaper closes an ended step's fds while it works through one epoll batch; a step that
    starts meanwhile on another thread may get those numbers. A later event of the batch for a
    closed fd is stale: it must not act on the new step's watch, which watch() has put in the
    reaper's table but not yet in its epoll set (the reaper closed the new step's pipe and watch()
    failed with EBADF: the step ended "interrupted: the engine failed", about 1 start in 10,000
    with 16 threads starting `true`). Here A's end, first in a batch whose next event is A's
    output, starts B on A's pipe number; B's watch() is held right before it registers until
    the batch is done."""
    reaper = Reaper(time.time)
    if not reaper._use_pidfd:
        pytest.skip("the reaper waits with a thread per process here (no pidfd): no epoll batches")
    held, release, paused, resume, batch_done = (threading.Event() for _ in range(5))
    ends: dict[str, int] = {}
    failures: list[BaseException] = []
    sinks: dict[str, LogSink] = {}

    def watch(name: str, proc: subprocess.Popen, out: int, then: Callable[[], object] = lambda: None) -> None:
        sinks[name] = LogSink(out, tmp_path / f"{name}.log", 1 << 20)
        reaper.watch(proc, sinks[name], lambda returncode, at: (ends.setdefault(name, returncode), then()))

    def hold_at_register(frame, event, arg) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") == "register" and not paused.is_set():
            paused.set()
            resume.wait(10)

    def start_b() -> None:  # a StepActor's start, on A's pipe number (closed just now)
        proc, out = _started(["true"])
        assert wait_until(lambda: _has_exited(proc))  # its pipe is at its end: a stale event closes it
        if out != sinks["a"].fd:
            os.dup2(out, sinks["a"].fd)
            os.close(out)
        sys.setprofile(hold_at_register)
        try:
            watch("b", proc, sinks["a"].fd)
        except BaseException as exc:
            failures.append(exc)
        finally:
            sys.setprofile(None)

    def a_ended() -> None:  # on the reaper's thread, first in its batch
        starting = threading.Thread(target=start_b, daemon=True)
        starting.start()
        paused.wait(10)

    z_in, z_control = os.pipe()
    a_in, a_control = os.pipe()
    try:
        # Z's end holds the reaper's thread while A's end, A's output and Y's end queue up in order.
        z, z_out = _started(["sh", "-c", "exec >/dev/null 2>&1; read x; exit 0"], stdin=z_in)
        watch("z", z, z_out, then=lambda: (held.set(), release.wait(10)))
        assert wait_until(lambda: sinks["z"].closed)
        os.close(z_control)
        assert held.wait(10)
        # A exits at once; its background child keeps A's pipe and writes to it when told
        a, a_out = _started(["sh", "-c", "exec 3<&0; (read x <&3; echo late) & exit 0"], stdin=a_in)
        watch("a", a, a_out, then=a_ended)
        assert wait_until(lambda: _has_exited(a))
        os.write(a_control, b"go\n")
        assert wait_until(lambda: select.select([a_out], [], [], 0)[0] != [])
        y, y_out = _started(["true"])
        watch("y", y, y_out, then=batch_done.set)
        assert wait_until(lambda: _has_exited(y))
        release.set()
        assert batch_done.wait(10) and paused.is_set()
        resume.set()
        assert wait_until(lambda: "b" in ends or failures, timeout=10)
        assert not failures and ends == {"z": 0, "a": 0, "y": 0, "b": 0}
    finally:
        for event in (release, paused, resume):
            event.set()
        reaper.close()
        for fd in (z_in, a_in, a_control):
            os.close(fd)


@pytest.mark.timeout(60)
def test_a_task_whose_runner_starts_late_in_a_shutdown_stays_queued(make_executor, monkeypatch):
    """close() while a queued task's runner had not yet handled its start: the first task's worker,
    freed by the interrupt, was given to it, so its step "started" in the shutdown and ended
    interrupted, where a task that never started stays queued for the next start. (It failed
    test_embed's close test once in ten runs.) No step starts once the shutdown has begun."""
    from osreapi.actors.task import TaskActor as Runner

    entered, release = threading.Event(), threading.Event()
    load = Runner._load

    def slow_load(self, task, steps, specs, *create):
        if task.id == "late":
            entered.set()
            assert release.wait(20)
        return load(self, task, steps, specs, *create)

    monkeypatch.setattr(Runner, "_load", slow_load)
    ex = make_executor(pool_size=1)
    first = ex.submit([sh("sleep 30")])
    assert wait_until(lambda: ex.get(first).steps[0].state is State.RUNNING)
    ex.submit([sh("true")], task_id="late")
    assert entered.wait(10)
    closing = threading.Thread(target=ex.close)
    closing.start()
    assert wait_until(lambda: ex._services.pool.stats()[1] == 0, timeout=20)  # the first task's worker is free
    release.set()
    closing.join(30)
    assert not closing.is_alive()
    reopened = make_executor(pool_size=1)
    assert reopened.wait("late", timeout=20).task.state is State.STOPPED  # it ran after the next start
    assert reopened.get(first).task.state is State.INTERRUPTED


@pytest.mark.timeout(60)
def test_a_step_whose_worker_fails_before_its_start_arrives_ends_interrupted(make_executor, monkeypatch):
    """A worker failed right after it had given itself back to the pool: the next task's step,
    granted that worker, had its start saved and then sent to a dead actor, and waited for ever
    (its task never ended). The start goes back to its runner: the step ends interrupted, saying
    why, and the pool has a worker again."""
    from osreapi.actors.step import StepActor

    end = StepActor._end

    def failing_end(self, *args, **kwargs):
        job = self._job
        end(self, *args, **kwargs)
        if job is not None and job.task_id == "first":
            raise RuntimeError("injected fault after the worker went back to the pool")

    monkeypatch.setattr(StepActor, "_end", failing_end)
    ex = make_executor(pool_size=1)
    ex.submit([sh("sleep 0.3")], task_id="first")
    ex.submit([sh("echo second")], task_id="second")
    result = ex.wait("second", timeout=20)
    assert result is not None and result.finished, result
    assert result.steps[0].state is State.INTERRUPTED, result  # it was granted the failing worker
    assert "its worker failed inside the engine" in result.steps[0].output
    assert ex.wait(ex.submit([sh("echo third")]), timeout=20).steps[0].output == "third\n"


@pytest.mark.timeout(60)
def test_a_running_task_survives_a_spell_without_file_descriptors(make_executor, tmp_path):
    """With no descriptor free (EMFILE), reading a step's create time for its pid's save failed and
    interrupted its running task; a pause failed in the step worker (listing /proc) and interrupted
    the step; the janitor's round failed its /proc scan and was never run again, so a setsid child
    of a killed step lived on; reading a running step's output raised. Now: the pid is saved without
    its create time, the pause stops the step's process group, the janitor kills the group and scans
    again once descriptors free, and the output read says it could not be."""
    ex = make_executor(kill_grace=0.5)
    escaped = tmp_path / "escaped"
    # Both ignore TERM: the group dies of the janitor's KILL, after the grace, in a round.
    task_id = ex.submit([sh(f"trap '' TERM; setsid sh -c 'echo $$ > {escaped}; exec sleep 60' & exec sleep 60", name="s")])
    escapee = read_pid(escaped)
    with no_descriptor_free():
        assert wait_until(lambda: ex.step(task_id, "s", output=False)[1].pid is not None, timeout=5)  # its pid was saved
        assert ex.task(task_id).state is State.RUNNING
        assert "could not be read" in ex.get(task_id).steps[0].output  # a read says so, never raises
        ex.control(task_id, "pause")
    step_process = psutil.Process(ex.step(task_id, "s", output=False)[1].pid)
    assert wait_until(lambda: step_process.status() == psutil.STATUS_STOPPED, timeout=5)
    with no_descriptor_free():
        ex.control(task_id, "kill")
        assert wait_until(lambda: ex.task(task_id).state is State.KILLED, timeout=10)  # its group is
    assert wait_until(lambda: not psutil.pid_exists(escapee), timeout=10)  # found by its marker once /proc could be read


@pytest.mark.timeout(30)
def test_a_process_watched_while_no_descriptor_is_free_has_its_end_reported(tmp_path):
    """Without a descriptor for a pidfd (EMFILE; another thread took the ones the step's start had
    just freed), the reaper falls back to a thread of the process's own; that thread made an epoll
    selector, which takes a descriptor too: it died at its start, the exit was never reported, and
    the step stayed running for ever with its pool slot. The fallback now needs no descriptor."""
    reaper = Reaper(time.time)
    proc, out = _started(["sh", "-c", "echo out; sleep 0.2"])
    sink = LogSink(out, tmp_path / "step.log", 1 << 20)
    ended: list[int] = []
    try:
        with no_descriptor_free():
            reaper.watch(proc, sink, lambda returncode, at: ended.append(returncode))
            assert wait_until(lambda: ended, timeout=10), "the process's end was never reported"
    finally:
        if proc.poll() is None:
            proc.kill()
        reaper.close()
    # The log, made at the first byte, could not be opened in the spell: the output is kept for the record.
    assert ended == [0] and sink.small_output().startswith(b"out\n")


def test_a_marker_scan_that_cannot_open_an_environment_file_for_want_of_a_descriptor_says_so(monkeypatch):
    """scan_markers skipped a process whose environ file it could not open, whatever the reason: with
    no descriptor free, a run looked clean to the janitor while a marked setsid child still lived. A
    shortage now raises (the janitor's round counts as unscanned and comes again); a process that is
    gone or not ours is still skipped."""
    real_open = open

    def short_of_descriptors(path, *args, **kwargs):
        if str(path).endswith("/environ"):
            raise OSError(errno.EMFILE, "Too many open files", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", short_of_descriptors)
    with pytest.raises(OSError, match="Too many open files"):
        treekill.scan_markers({"some-run"})
    monkeypatch.setattr("builtins.open", real_open)
    assert treekill.scan_markers({"some-run"}) == {}


def test_a_workspace_removed_while_no_descriptor_is_free_goes_with_its_record_and_its_tree_later(make_executor):
    """A delete or a sweep removed the workspace with errors ignored, then the record: with no
    descriptor free, rmtree could open none of the workspace's directories, and the files stayed
    for good, owned by no record. The record was then kept until its files could go; now the
    tree is moved aside (a rename takes no descriptor) and the task goes at once: the tree is
    removed once descriptors free (or after the next start)."""
    clock = FakeClock()
    ex = make_executor(key_expire="1h", clock=clock, sweep_interval=3600)
    deleted, swept = (ex.submit([sh("mkdir -p a/b && echo x > a/b/file")]) for _ in range(2))
    for task_id in (deleted, swept):
        assert ex.wait(task_id, 10).task.state == State.STOPPED
    with no_descriptor_free():
        ex.delete(deleted)
        clock.now += 3601
        assert ex.sweep() == 1
    for task_id in (deleted, swept):
        assert ex._db.get_task(task_id) is None
        assert not (ex.config.workspace(task_id) / "a").exists()
    assert ex._discarder.wait_idle(10) and list((ex.config.data_dir / "trash").iterdir()) == []


@pytest.mark.timeout(60)
def test_on_a_full_disk_a_workspace_not_removed_for_want_of_descriptors_keeps_its_record(make_executor, small_disk):
    """While the disk is full a deletion removes the files in place (the room is wanted now, for
    the record's removal): with no descriptor free the tree cannot be walked, and the record stays
    (a delete is refused) until its files can go, or they would stay for good with no record."""
    ex = make_executor(small_disk / "data")
    task_id = ex.submit([sh("mkdir -p a/b && echo x > a/b/file")])
    assert ex.wait(task_id, 10).task.state == State.STOPPED
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=1M", "count=40"], capture_output=True)
    from osreapi.errors import DiskFull

    with pytest.raises(DiskFull):  # the store learns that the disk is full
        for _ in range(50):
            ex.submit([sh("true")] * 50)
    with no_descriptor_free():
        with pytest.raises(OSError) as refused:
            ex.delete(task_id)
    assert refused.value.errno == errno.EMFILE
    assert (ex.config.workspace(task_id) / "a" / "b" / "file").exists() and ex._db.get_task(task_id) is not None
    (small_disk / "filler").unlink()
    ex.delete(task_id)
    assert ex.get(task_id) is None and not (ex.config.workspace(task_id) / "a").exists()


def test_an_unexpected_failure_while_creating_a_task_is_the_caller_answer_and_the_store_goes_on(make_executor, monkeypatch):
    """Only write errors were caught around a task's creation: anything else (a RecursionError in
    the workspace removal of an expired id was one) stopped the store actor, the single writer, and
    with it the engine. The caller now hears the failure, and the next submission is stored."""
    from osreapi.storage.database import Database

    create = Database.create_task
    failing = threading.Event()
    failing.set()

    def create_once_failing(self, *args, **kwargs):
        if failing.is_set():
            failing.clear()
            raise RuntimeError("injected fault")
        return create(self, *args, **kwargs)

    monkeypatch.setattr(Database, "create_task", create_once_failing)
    ex = make_executor()
    with pytest.raises(RuntimeError, match="injected fault"):
        ex.submit([sh("echo first")])
    assert ex.wait(ex.submit([sh("echo next")]), timeout=10).steps[0].output == "next\n"
