"""Faults the engine model test (tests/test_engine_model.py) found, each pinned on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil
import pytest

from osreapi import Executor
from osreapi.actors.taskstate import TaskState
from osreapi.errors import ActionRejected, DataDirInUse
from osreapi.records import StepRecord, TaskRecord
from osreapi.spec import StepSpec
from osreapi.vocabulary import State

from .conftest import sh, step_pid, wait_until


def states(executor: Executor, task_id: str) -> list[State]:
    return [step.state for step in executor.get(task_id).steps]


def test_task_resume_keeps_a_step_paused_on_its_own(executor: Executor):
    """A step paused on its own stays paused when its task is paused and resumed, whether it had
    started or not: only its own resume releases it. Before, the task's resume resumed a running
    step paused on its own (record and process), while one held before it started stayed held."""
    task_id = executor.submit([sh("sleep 30", name="a"), sh("sleep 30"), sh("true", name="held", depends_on=["a"])])
    running = step_pid(executor, task_id, 0)
    step_pid(executor, task_id, 1)
    executor.pause(task_id, 0)  # running: suspended
    executor.pause(task_id, "held")  # not started (it waits for a): held
    executor.pause(task_id)
    executor.resume(task_id)
    assert states(executor, task_id) == [State.PAUSED, State.RUNNING, State.PAUSED]
    assert psutil.Process(running).status() == psutil.STATUS_STOPPED
    executor.resume(task_id, 0)
    assert states(executor, task_id)[0] is State.RUNNING
    assert wait_until(lambda: psutil.Process(running).status() != psutil.STATUS_STOPPED)
    executor.kill(task_id)


def test_a_start_after_a_crash_waits_for_the_dead_engines_half_born_child(tmp_path):
    """An engine killed (SIGKILL) while it forks a step leaves a child that holds the data dir's
    lock until it execs or exits: a start just after the crash must wait for it (bounded), not
    refuse the data dir as in use by the dead pid. A live engine is still refused at once."""
    data = tmp_path / "data"
    script = textwrap.dedent(f"""
        import os, pathlib, sys, time
        from osreapi.storage.lock import lock_data_dir
        handle = lock_data_dir(pathlib.Path({str(data)!r}))
        if os.fork() == 0:  # as a step between fork and exec: every descriptor of its parent held
            time.sleep(1.0)
            os._exit(0)
        print("ready", flush=True)
        sys.stdin.read()  # until the test kills it
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdin.close()
    with Executor(data, pool_size=1) as ex:  # before: DataDirInUse, "in use by pid <the dead one>"
        assert ex.check_health() == "ok"
        with pytest.raises(DataDirInUse, match=f"in use by pid {os.getpid()}"):
            Executor(data)


def test_a_refused_control_never_runs_ahead_of_the_records(executor: Executor):
    """A pause refused because the step (or its task) has ended is answered once that end is on
    disk: a read right after the refusal sees the step ended, not running. Before, the refusal came
    from the runner's memory while the store had yet to commit the end (about one try in four)."""
    behind = []
    for _ in range(40):
        task_id = executor.submit([sh("true"), sh("sleep 0.2")], mode="parallel")
        for _ in range(5000):  # bounded: the step ends within a few hundred tries
            try:
                executor.pause(task_id, 0)
                executor.resume(task_id, 0)
            except ActionRejected as exc:
                if not executor.get(task_id).steps[0].state.finished:
                    behind.append(str(exc))
                break
    assert behind == []


def test_a_kill_that_comes_after_every_step_succeeded_leaves_the_task_succeeded():
    """A kill answered while the task's last step was exiting 0 (its exit not yet handled) finds
    nothing left to kill: every step succeeded, so the task did (code 0). Before, it ended killed
    with no failed step: code 1002 whose message named step 0 as failed."""
    spec = StepSpec("s0", "sh", "true")
    state = TaskState(TaskRecord(id="t", mode="sequential", count=1, accepted=0.0), [StepRecord(0, "s0")], (spec,))
    state.step_starting(0, now=1.0)
    assert state.control("kill", None, now=2.0) == [0]  # its process is to be stopped
    state.step_ended(0, State.STOPPED, 0, "", end=2.1)  # it had exited 0 already
    task = state.finish(now=2.2, key_expire=60.0)
    assert (task.state, task.failed_step, task.succeeded) == (State.STOPPED, None, True)


def test_a_killed_task_with_a_step_killed_stays_killed():
    spec = StepSpec("s0", "sh", "sleep 9")
    state = TaskState(TaskRecord(id="t", mode="sequential", count=2, accepted=0.0),
                      [StepRecord(0, "s0"), StepRecord(1, "s1")], (spec, StepSpec("s1", "sh", "true")))
    state.step_starting(0, now=1.0)
    state.control("kill", None, now=2.0)
    state.step_ended(0, State.KILLED, 137, "", end=2.1)
    task = state.finish(now=2.2, key_expire=60.0)
    assert (task.state, task.failed_step) == (State.KILLED, 0)


@pytest.mark.timeout(60)
def test_a_pause_of_a_step_whose_process_has_exited_is_refused(make_executor, monkeypatch):
    """The step's process had exited, its end not yet reported: a pause of that step was answered
    OK and recorded, and the step then ended without a resume (the model's pause-versus-exit
    race, made certain here by holding the reaper's report). Now the pause is refused, saying the
    process had exited; the step ends as it ran."""
    import threading

    from osreapi.executor.reaper import Reaper

    exited, release, report = threading.Event(), threading.Event(), Reaper._exited

    def holding(self, watch):
        if not release.is_set():
            exited.set()
            release.wait(20)
        return report(self, watch)

    monkeypatch.setattr(Reaper, "_exited", holding)
    ex = make_executor()
    task_id = ex.submit([sh("true", name="a")])
    answers: list[BaseException | None] = []

    def pause() -> None:
        try:
            ex.pause(task_id, "a")
            answers.append(None)
        except ActionRejected as exc:
            answers.append(exc)

    pausing = threading.Thread(target=pause)
    try:
        assert exited.wait(20)  # reaped, its end not yet told to its worker
        pausing.start()
        # recorded paused: the signal is in the worker's mailbox, ahead of the exit held back
        assert wait_until(lambda: ex.get(task_id).steps[0].state is State.PAUSED, timeout=20)
    finally:
        release.set()
    pausing.join(20)
    assert len(answers) == 1 and isinstance(answers[0], ActionRejected), answers
    assert "exited" in str(answers[0]) or "has ended" in str(answers[0]), answers
    step = ex.get(task_id).steps[0]  # the refusal came once the end was on its way to disk
    assert step.state.finished, step
    step = ex.wait(task_id, 20).steps[0]
    assert (step.state, step.code) == (State.STOPPED, 0), step


@pytest.mark.timeout(60)
def test_a_pause_that_meets_the_steps_exit_half_way_is_refused(make_executor, monkeypatch):
    """The worker checks that the step's process is alive, lists its marked processes (a scan of
    /proc), then sends SIGSTOP: a process that exits inside that window was answered "paused",
    its orphan left stopped. The worker now checks again after the signal: it resumes what it
    stopped and refuses the pause behind the step's end. The exit is made certain here by ending
    the process from inside the scan."""
    import signal

    from osreapi.executor import treekill

    scan, ended = treekill.marked_processes, []

    def exit_inside_the_window(task_id, step_name=None, run_id=None):
        if not ended:
            root = psutil.Process(pid)
            os.kill(pid, signal.SIGKILL)
            ended.append(pid)
            assert wait_until(lambda: not root.is_running() or root.status() == psutil.STATUS_ZOMBIE)
        return scan(task_id, step_name, run_id)

    ex = make_executor()
    task_id = ex.submit([sh("sleep 30 & wait", name="a")])
    pid = step_pid(ex, task_id)
    assert wait_until(lambda: psutil.Process(pid).children())
    child = psutil.Process(pid).children()[0]  # orphaned by the exit, stopped by the pause
    monkeypatch.setattr(treekill, "marked_processes", exit_inside_the_window)
    with pytest.raises(ActionRejected):
        ex.pause(task_id, "a")
    assert ended == [pid]
    step = ex.wait(task_id, 20).steps[0]
    assert step.state.finished and step.state is not State.PAUSED, step
    assert wait_until(lambda: not child.is_running() or child.status() != psutil.STATUS_STOPPED)
