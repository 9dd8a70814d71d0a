"""Unit tests of the state table, output capping and tree kill."""

import subprocess
import threading

import psutil
import pytest

from osreapi.executor.output import read_output, with_exit_status
from osreapi.executor.treekill import kill_until_gone, marked_processes, marked_trees, process_tree
from osreapi.vocabulary import State, message, normalize_language

from .conftest import gone, read_pid, wait_until


def test_state_table_both_languages():
    assert [s.word("zh") for s in State] == ["等待中", "执行中", "已结束", "执行超时", "已终止", "已暂停", "已跳过", "已中断"]
    assert [s.word("en") for s in State] == [s.value for s in State]
    assert {s for s in State if s.finished} == {State.STOPPED, State.TIMEOUT, State.KILLED, State.SKIPPED, State.INTERRUPTED}


def test_messages_and_languages():
    assert message("failed", "zh", index=1) == "1, 执行失败"
    assert message("not_found") == "id不存在, 沒有数据"
    assert message("success", "en") == "success"
    assert normalize_language("en-US,en;q=0.9") == "en"
    assert normalize_language("zh-CN") == "zh"
    assert normalize_language("fr") is None


def test_output_whole_when_small(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"a\nb\xff\n")
    assert read_output(log, 100) == "a\nb\ufffd\n"
    assert read_output(tmp_path / "missing", 100) == ""


def test_output_head_and_tail_when_large(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"".join(b"line %06d\n" % i for i in range(100_000)))  # 1.2 MB
    text = read_output(log, 1000)
    assert text.startswith("line 000000\n")
    assert text.endswith("line 099999\n")
    assert f"... {1_200_000 - 1000} bytes truncated ..." in text
    assert len(text.encode()) < 1100


def test_output_cut_keeps_characters_whole(tmp_path):
    log = tmp_path / "log"
    log.write_bytes("汉".encode() * 1000)
    text = read_output(log, 101)
    assert "\ufffd" not in text


def test_exit_status_line():
    assert with_exit_status("boom\n", 3) == "boom\nexit status 3"
    assert with_exit_status("exit 100 exit status 100", 100) == "exit 100 exit status 100"
    assert with_exit_status("", 1) == "exit status 1"
    assert with_exit_status("no newline", 2) == "no newline\nexit status 2"


@pytest.mark.timeout(30)
def test_a_kill_until_gone_kills_group_children_and_marked_escapees(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OSREAPI_TASK_ID": "unit-kill", "OSREAPI_STEP_NAME": "s"}
    script = "sleep 300 & echo $! > child; setsid sleep 301 & echo $! > escaped; sleep 302"
    proc = subprocess.Popen(["sh", "-c", script], cwd=tmp_path, env=env, start_new_session=True)
    escaped = read_pid(tmp_path / "escaped")
    child = int((tmp_path / "child").read_text())
    assert wait_until(lambda: any(p.pid == escaped for p in marked_processes("unit-kill")))
    reaping = threading.Thread(target=proc.wait, daemon=True)  # our child: its group lives while it is a zombie
    reaping.start()

    def found() -> dict:
        return {**process_tree(proc.pid), **{p.pid: p for p in marked_trees("unit-kill", "s")}}

    killed = kill_until_gone(found, grace=1.0, groups=[proc.pid])  # as recovery kills a crashed step's
    reaping.join(5)
    assert {proc.pid, child, escaped} <= set(killed)
    assert wait_until(lambda: gone(child) and gone(escaped), timeout=5)
    assert not psutil.pid_exists(proc.pid)


def test_pool_grants_in_submission_order_not_arrival_order():
    from osreapi.actors.pool import WorkerPool

    workers = ["worker"]  # stands for the one StepActor ref; the pool only hands it around
    pool = WorkerPool(1, lambda: workers.pop())
    granted: list[str] = []
    assert pool.request("a", 0, lambda w: granted.append("never"), order=(1.0, 0)) == "worker"  # at once
    pool.request("c", 0, lambda w: granted.append("late"), order=(3.0, 0))
    pool.request("b", 1, lambda w: granted.append("b1"), order=(2.0, 1))
    pool.request("b", 0, lambda w: granted.append("b0"), order=(2.0, 0))
    pool.request("d", 0, lambda w: granted.append("cancelled"), order=(0.5, 0))
    assert pool.cancel("d") == [0]
    assert pool.stats() == (1, 1, 3)
    for _ in range(3):
        pool.release("worker")
    assert granted == ["b0", "b1", "late"]
    pool.release("worker")
    assert pool.stats() == (1, 0, 0)
    assert workers == []  # one worker was started and reused, never a second


def test_scheduler_runs_due_callbacks_and_forgets_cancelled_ones():
    import threading

    from osreapi.actors.timers import Scheduler

    scheduler = Scheduler()
    try:
        fired = threading.Event()
        scheduler.call_later(0.01, fired.set)
        handles = [scheduler.call_later(86400, lambda: None) for _ in range(200)]
        for handle in handles:
            handle.cancel()
        assert fired.wait(5)
        assert scheduler.pending() < 100  # cancelled day-long timers do not pile up
    finally:
        scheduler.stop()


def test_the_scheduler_does_not_wake_for_cancelled_timers():
    """Most steps end before their pid is due to be saved: the scheduler woke at each cancelled
    timer's due time only to drop it (a wake-up and a GIL hand-off per step). It drops cancelled
    timers at the front at once; counted here by its reads of the (injected) clock."""
    import threading
    import time

    from osreapi.actors.timers import Scheduler

    reads = []

    def clock() -> float:
        reads.append(threading.current_thread().name)
        return time.monotonic()

    scheduler = Scheduler(clock)
    try:
        fired = threading.Event()
        handles = [scheduler.call_later(0.2 + i / 1000, lambda: None) for i in range(50)]
        for handle in handles:
            handle.cancel()
        scheduler.call_later(0.4, fired.set)
        assert fired.wait(5)
        assert reads.count("osreapi-scheduler") < 10, reads.count("osreapi-scheduler")
    finally:
        scheduler.stop()


def test_record_with_copies_changes_and_refuses_an_unknown_field():
    from dataclasses import FrozenInstanceError

    from osreapi.records import StepRecord, TaskRecord

    step = StepRecord(index=2, name="b")
    changed = step.with_(state=State.RUNNING, begin=1.5)
    assert changed == StepRecord(index=2, name="b", state=State.RUNNING, begin=1.5) and step.begin is None
    assert hash(changed) == hash(StepRecord(index=2, name="b", state=State.RUNNING, begin=1.5))
    with pytest.raises(TypeError, match="no field 'bogus'"):
        step.with_(bogus=1)
    with pytest.raises(FrozenInstanceError):
        changed.code = 3
    task = TaskRecord(id="t", mode="sequential", count=1, accepted=0.0)
    assert task.with_(state=State.STOPPED).state is State.STOPPED and task.state is State.PENDING
