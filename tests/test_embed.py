"""The embedding API: the same actors in-process, no HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from osreapi import EngineClosed, Executor, InvalidRequest
from osreapi.vocabulary import State

from .conftest import gone, read_pid, wait_until


def test_context_manager_submit_wait_get(tmp_path):
    with Executor(tmp_path / "d", pool_size=2) as ex:
        task_id = ex.submit([{"command_type": "sh", "command_content": "echo $X", "env_vars": {"X": "1"}}])
        result = ex.wait(task_id, timeout=10)
        assert result.finished and result.task.state is State.STOPPED and result.task.succeeded
        assert result.steps[0].output == "1\n"
        assert ex.get(task_id) == result
        assert [t.id for t in ex.list()] == [task_id]
    with pytest.raises(EngineClosed):
        ex.submit([{"command_type": "sh", "command_content": "true"}])


def test_modes_and_ids(executor: Executor, tmp_path):
    steps = [{"command_type": "sh", "command_content": "sleep 0.3"}] * 3
    parallel = executor.submit(steps, mode="parallel", task_id="par-1")
    assert parallel == "par-1"
    result = executor.wait(parallel, 10)
    assert result.task.mode == "parallel"
    assert max(s.begin for s in result.steps) < min(s.end for s in result.steps)
    assert executor.submit(steps, mode="parallel", task_id="par-1") == "par-1"  # idempotent
    with pytest.raises(InvalidRequest):
        executor.submit([{"command_type": "sh"}])
    with pytest.raises(InvalidRequest):
        executor.submit(steps, task_id="../escape")


def test_wait_is_bounded_and_unknown_is_none(executor: Executor):
    assert executor.wait("missing", timeout=0.1) is None
    task_id = executor.submit([{"command_type": "sh", "command_content": "sleep 2"}])
    result = executor.wait(task_id, timeout=0.2)
    assert result is not None and not result.finished


def test_wait_wakes_on_end_from_other_threads(executor: Executor):
    task_id = executor.submit([{"command_type": "sh", "command_content": "sleep 0.2"}])
    results = []
    threads = [threading.Thread(target=lambda: results.append(executor.wait(task_id, 10))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(results) == 4 and all(r.finished for r in results)


def test_many_queued_tasks_cost_no_thread_each(make_executor):
    ex = make_executor(pool_size=2)
    before = threading.active_count()
    ids = [ex.submit([{"command_type": "sh", "command_content": "sleep 0.01"}]) for _ in range(300)]
    peak = threading.active_count()
    for task_id in ids:
        assert ex.wait(task_id, 60).task.succeeded
    # Live task actors are capped (pool + a constant); waiting tasks are data, not threads.
    assert peak - before <= 3 * 2 + ex.config.extra_live_tasks + 4


def test_kill_pause_resume_in_process(executor: Executor):
    import psutil

    from .conftest import step_pid

    task_id = executor.submit([{"command_type": "sh", "command_content": "sleep 300"}, {"command_type": "sh", "command_content": "true"}])
    assert wait_until(lambda: executor.get(task_id).steps[0].state is State.RUNNING)
    pid = step_pid(executor, task_id)
    executor.pause(task_id)  # SIGSTOP takes effect when the process next runs: polled, bounded
    assert wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    executor.resume(task_id)
    assert wait_until(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED)
    executor.kill(task_id)
    result = executor.wait(task_id, 10)
    assert result.task.state is State.KILLED and [s.state for s in result.steps] == [State.KILLED, State.SKIPPED]
    assert wait_until(lambda: gone(pid))
    with pytest.raises(InvalidRequest):
        executor.submit([{"command_type": "sh", "command_content": "true"}], mode="sideways")


@pytest.mark.timeout(60)
def test_a_program_that_never_closes_the_executor_still_exits_and_kills_its_steps(tmp_path):
    """A script that embeds the engine and ends with an exception, without close(): it exits
    (the engine's threads used to keep it alive for ever), its running step's tree is killed, and
    the task is recorded as interrupted."""
    data = tmp_path / "data"
    pid_file = tmp_path / "step.pid"
    script = textwrap.dedent(f"""
        import pathlib, time
        from osreapi import Executor
        ex = Executor({str(data)!r})
        ex.submit([{{"command_type": "sh", "command_content": "echo $$ > {pid_file}; sleep 60"}}], task_id="left")
        deadline = time.monotonic() + 20
        while not pathlib.Path({str(pid_file)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        raise SystemExit("ends without close()")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=40)
    assert done.returncode == 1 and "ends without close()" in done.stderr
    assert pid_file.exists() and gone(int(pid_file.read_text()))
    with Executor(data) as ex:
        assert ex.get("left").task.state is State.INTERRUPTED


@pytest.mark.timeout(60)
def test_a_forked_child_that_exits_leaves_the_parents_engine_alone(tmp_path):
    """A program forks while its engine runs a step; the child ends normally (atexit hooks run).
    The child exits at once and the parent's engine goes on. Before, the child's inherited hook
    closed an engine whose threads the child does not have: it waited for them a minute."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from osreapi import Executor
        ex = Executor({str(tmp_path / "data")!r})
        ex.submit([{{"command_type": "sh", "command_content": "sleep 60"}}], task_id="running")
        deadline = time.monotonic() + 20
        while ex.get("running").steps[0].state.value != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        child = os.fork()
        if child == 0:
            sys.exit(0)
        deadline, reaped = time.monotonic() + 20, 0
        while not reaped and time.monotonic() < deadline:
            reaped = os.waitpid(child, os.WNOHANG)[0]
            time.sleep(0.02)
        if not reaped:
            os.kill(child, 9)
        print("child exited" if reaped else "child still closing")
        print(ex.get("running").steps[0].state.value)
        after = ex.submit([{{"command_type": "sh", "command_content": "echo parent"}}])
        print(ex.wait(after, timeout=10).steps[0].output.strip())
        ex.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert done.stdout.splitlines() == ["child exited", "running", "parent"], done.stderr


@pytest.mark.timeout(60)
def test_a_program_that_ends_while_another_thread_closes_the_engine_waits_for_that_close(tmp_path):
    """A daemon thread (a shutdown hook) closes the engine while a TERM-ignoring step runs, and the
    program's main thread ends meanwhile. The exit waits for that close: the step is killed after
    its grace. Before, the atexit close saw the engine closing and returned, the program exited
    mid-close, and the step ran on after the program had gone."""
    data, pid_file = tmp_path / "data", tmp_path / "step.pid"
    script = textwrap.dedent(f"""
        import os, threading, time
        from osreapi import EngineClosed, Executor
        ex = Executor({str(data)!r}, kill_grace=1.0)
        ex.submit([{{"command_type": "sh",
                     "command_content": "echo $$ > {pid_file}; trap '' TERM; while :; do sleep 0.05; done"}}])
        deadline = time.monotonic() + 20
        # Its process runs (its record's begin is written before the process exists: not a sign).
        while not os.path.exists({str(pid_file)!r}) and time.monotonic() < deadline:
            time.sleep(0.02)
        threading.Thread(target=ex.close, daemon=True).start()
        while time.monotonic() < deadline:
            try:
                ex.check_health()
            except EngineClosed:
                break
            time.sleep(0.01)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    pid = read_pid(pid_file)
    try:
        assert done.returncode == 0, done.stderr
        assert wait_until(lambda: gone(pid), timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the old code leaves it running


@pytest.mark.timeout(60)
def test_a_task_accepted_while_the_engine_closes_runs_after_the_next_start(make_executor):
    """The engine closes between the task's record being written and its hand-off to the
    supervisor (a subscriber, run on the store's thread before the submit is answered, holds it
    there until the supervisor has stopped). The task is on disk and queued: submit returns its
    id, and it runs after the next start, as a queued task does (not pykka's ActorDeadError)."""
    ex = make_executor()
    closing: list[threading.Thread] = []

    def close_now(task_id, task, steps) -> None:
        if task_id == "racing" and not closing:
            closing.append(threading.Thread(target=ex.close))
            closing[0].start()
            wait_until(lambda: not ex._supervisor.is_alive())

    ex.subscribe(close_now)
    assert ex.submit([{"command_type": "sh", "command_content": "echo ran"}], task_id="racing") == "racing"
    closing[0].join(30)
    assert not ex._supervisor.is_alive() and not closing[0].is_alive()
    again = make_executor()  # the same data directory
    assert again.wait("racing", timeout=10).steps[0].output == "ran\n"


@pytest.mark.timeout(60)
def test_a_wait_for_a_task_left_queued_by_close_ends_with_engine_closed(make_executor):
    """close() leaves a task that never started queued (it runs after the next start), so its end
    is never published: a wait() without timeout for it returned only when the program ended, and
    a call on the closed engine raised lmdb's "closed object" error."""
    ex = make_executor(pool_size=1)
    first = ex.submit([{"command_type": "sh", "command_content": "sleep 30"}])
    queued = ex.submit([{"command_type": "sh", "command_content": "true"}])
    assert wait_until(lambda: ex.get(first).steps[0].state is State.RUNNING)
    outcome: list[object] = []

    def wait_for_queued() -> None:
        try:
            outcome.append(ex.wait(queued))
        except Exception as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_queued, daemon=True)
    waiter.start()
    assert wait_until(lambda: queued in ex._waiters)  # it waits now
    ex.close()
    waiter.join(10)
    assert not waiter.is_alive() and isinstance(outcome[0], EngineClosed), outcome
    with pytest.raises(EngineClosed):
        ex.get(queued)
