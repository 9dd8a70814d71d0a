"""Running steps as OS process trees: pool bound, time limits, tree kill, output, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from osreapi import Executor
from osreapi.vocabulary import State

from .conftest import gone, sh, wait_until


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(b, 1) for b, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def test_pool_bounds_processes_across_tasks(make_executor):
    ex: Executor = make_executor(pool_size=2)
    ids = [ex.submit([sh("sleep 0.2")] * 3, mode="parallel") for _ in range(2)]
    results = [ex.wait(task_id, 20) for task_id in ids]
    intervals = [(s.begin, s.end) for r in results for s in r.steps]
    assert all(s.code == 0 for r in results for s in r.steps)
    assert max_overlap(intervals) == 2  # bounded by the pool, and the pool is used


def test_pool_waits_in_fifo_order(make_executor, tmp_path):
    """Steps that wait for a worker get one in the order their tasks were accepted. (Two tasks
    submitted together while a worker is free race for it: the first holds it here.)"""
    ex: Executor = make_executor(pool_size=1)
    gate = tmp_path / "gate"
    ids = [ex.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.02; done")])]
    assert wait_until(lambda: ex.get(ids[0]).task.state is State.RUNNING)
    ids += [ex.submit([sh("sleep 0.05")]) for _ in range(4)]
    gate.touch()
    results = [ex.wait(task_id, 20) for task_id in ids]
    begins = [r.steps[0].begin for r in results]
    assert begins == sorted(begins)


def test_waiting_task_is_pending_until_its_step_starts(make_executor, tmp_path):
    ex: Executor = make_executor(pool_size=1)
    gate = tmp_path / "gate"
    first = ex.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.02; done")])
    assert wait_until(lambda: ex.get(first).task.state is State.RUNNING)  # it holds the one worker
    second = ex.submit([sh("true")])
    waiting = ex.get(second)
    assert waiting.task.state is State.PENDING and waiting.task.begin is None
    gate.touch()
    assert ex.wait(second, 10).task.state is State.STOPPED


@pytest.mark.timeout(30)
def test_timeout_kills_the_whole_tree_grandchildren_included(make_executor):
    ex: Executor = make_executor()
    script = "sleep 300 & echo $! > bg.pid; setsid sleep 300 & echo $! > escaped.pid; echo started; sleep 300"
    task_id = ex.submit([sh(script, timeout="500ms"), sh("echo never")])
    result = ex.wait(task_id, 20)
    step = result.steps[0]
    assert step.state is State.TIMEOUT and step.code == 124
    assert step.output.startswith("started\n") and step.output.endswith("exit status 124")
    assert result.steps[1].state is State.SKIPPED
    workspace = ex.config.workspace(task_id)
    for pid_file in ("bg.pid", "escaped.pid"):
        pid = int((workspace / pid_file).read_text())
        assert wait_until(lambda: gone(pid), timeout=5), f"{pid_file} {pid} survived"
    assert not psutil.pid_exists(step.pid)


def test_default_exec_timeout_applies(make_executor):
    ex: Executor = make_executor(exec_timeout="300ms")
    result = ex.wait(ex.submit([sh("sleep 30")]), 20)
    assert result.steps[0].state is State.TIMEOUT


def test_zero_timeout_means_no_limit(make_executor):
    ex: Executor = make_executor(exec_timeout="100ms")
    result = ex.wait(ex.submit([sh("sleep 0.3", timeout="0")]), 20)
    assert result.steps[0].state is State.STOPPED and result.steps[0].code == 0


def test_a_term_ignoring_step_is_killed_after_the_grace(make_executor):
    ex: Executor = make_executor(kill_grace=0.3)
    result = ex.wait(ex.submit([sh("trap '' TERM; sleep 30 & wait; sleep 30", timeout="200ms")]), 20)
    assert result.steps[0].state is State.TIMEOUT and not psutil.pid_exists(result.steps[0].pid)


def test_signal_death_reports_128_plus_n(executor: Executor):
    result = executor.wait(executor.submit([sh("kill -9 $$")]), 10)
    assert result.steps[0].state is State.STOPPED and result.steps[0].code == 137
    assert result.steps[0].output.endswith("exit status 137")


def test_large_output_is_capped_head_and_tail(make_executor):
    ex: Executor = make_executor(max_output=64 * 1024)
    script = "i=0; while [ $i -lt 200000 ]; do echo line$i; i=$((i+1)); done"
    result = ex.wait(ex.submit([{"command_type": "bash", "command_content": script}]), 60)
    text = result.steps[0].output
    assert result.steps[0].code == 0
    assert text.startswith("line0\nline1\n") and text.endswith("line199999\n")
    assert "bytes truncated" in text
    assert len(text.encode()) <= 64 * 1024 + 100


def test_output_keeps_arrival_order_and_bad_bytes(executor: Executor):
    script = "import sys\nprint('out1')\nprint('err1', file=sys.stderr)\nprint('out2')\nsys.stdout.buffer.write(b'\\xff\\n')"
    result = executor.wait(executor.submit([{"command_type": "python", "command_content": script}]), 10)
    assert result.steps[0].output == "out1\nerr1\nout2\n\ufffd\n"


def test_steps_read_an_empty_stdin(executor: Executor):
    """stdin is /dev/null for every step (one descriptor shared by all): reads end at once."""
    tasks = [executor.submit([sh("cat; echo end; ls -l /proc/$$/fd/0")]) for _ in range(3)]
    for task_id in tasks:
        output = executor.wait(task_id, 10).steps[0].output
        assert output.startswith("end\n") and output.rstrip().endswith("/dev/null")


def test_step_script_is_a_file_in_the_workspace(executor: Executor):
    task_id = executor.submit([sh("echo $0")])
    result = executor.wait(task_id, 10)
    script = Path(result.steps[0].output.strip())
    assert script.parent.parent == executor.config.workspace(task_id)
    assert script.read_text() == "echo $0"


@pytest.mark.timeout(30)
def test_no_polling_sleep_in_the_engine(executor: Executor, capsys):
    """A one-step `true` task ends within a few ms of its process exiting (figure printed, not asserted)."""
    gaps, results = [], []
    for _ in range(20):
        result = executor.wait(executor.submit([sh("true")]), 10)
        results.append(result)
        gaps.append((result.task.end - result.steps[0].end) * 1000)
    gaps.sort()
    with capsys.disabled():
        print(f"\n[figure] process exit -> task ended: median {gaps[10]:.2f} ms, max {gaps[-1]:.2f} ms")
    # What could fail: a task ending before its step, or a timer left armed to poll (only the
    # expiry sweep may stay scheduled once every task has ended).
    assert all(result.task.end >= result.steps[0].end for result in results)
    assert wait_until(lambda: not executor._services.janitor.busy())
    assert wait_until(lambda: executor._scheduler.armed() == 1)  # the sweep, nothing polling


def test_a_steps_pid_is_recorded_while_it_runs_and_with_its_end(executor: Executor, tmp_path):
    """The pid is saved with the task's next change, or a moment after the start: a short step's
    end carries it, a long step's record gets it while it runs."""
    short = executor.wait(executor.submit([sh("echo $$")]), 10).steps[0]
    assert short.pid == int(short.output.strip())
    long = executor.submit([sh(f"echo $$ > {tmp_path}/pid; sleep 30")])
    assert wait_until(lambda: (tmp_path / "pid").exists() and executor.get(long).steps[0].pid is not None, 10)
    assert executor.get(long).steps[0].pid == int((tmp_path / "pid").read_text())
    executor.kill(long)


SHORT_WRITES = """
import os, resource, signal, sys
from pathlib import Path
from osreapi.executor.reaper import LogSink
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit a write is short, then fails (EFBIG)
log = Path(sys.argv[1])
read_end, write_end = os.pipe()
sink = LogSink(read_end, log, cap=10 << 20)
resource.setrlimit(resource.RLIMIT_FSIZE, (6000, resource.RLIM_INFINITY))
os.write(write_end, b"x" * 10000)
os.close(write_end)
sink.pump()
sink.close()
kept = sink.small_output()
print(len(kept) if kept is not None else "file", log.stat().st_size, log.read_bytes().count(b"dropped"))
"""


def test_a_log_written_short_is_read_back_as_it_is_on_disk(tmp_path):
    """A disk (here a file size limit) that takes part of a write: the record's output is what the
    log file holds, with the drop marker, never bytes the file does not have."""
    out = subprocess.run([sys.executable, "-c", SHORT_WRITES, str(tmp_path / "step.log")],
                         capture_output=True, text=True, timeout=30, check=True)
    kept, size, markers = out.stdout.split()
    assert kept == "file" and int(size) == 6000 and markers == "0"  # the marker did not fit either


def test_a_reused_task_runner_still_saves_the_pid_of_a_long_step(executor: Executor, tmp_path):
    """A short task leaves its pid-save timer behind; the runner that takes the next task must
    still save that task's pid while its step runs."""
    executor.wait(executor.submit([sh("true")]), 10)
    assert wait_until(lambda: executor._cleanup_timer.armed() == 0, 10)  # the timer came and went
    long = executor.submit([sh(f"echo $$ > {tmp_path}/pid; sleep 30")])
    assert wait_until(lambda: executor.get(long).steps[0].pid is not None, 10)
    assert executor.get(long).steps[0].pid == int((tmp_path / "pid").read_text())
    executor.kill(long)


def test_tasks_submitted_together_start_in_the_order_they_were_accepted(make_executor):
    """With one worker free, two tasks submitted back to back raced for it: whichever runner
    asked first got it (the second task ran first in about 1 pair in 20 on a busy machine)."""
    ex: Executor = make_executor(pool_size=1)
    for _ in range(200):
        first, second = ex.submit([sh("true")]), ex.submit([sh("true")])
        begins = [ex.wait(task_id, 20).steps[0].begin for task_id in (first, second)]
        assert begins[0] < begins[1]
