"""Review of the engine's actors against the design rules: a failure is an answer (never a caller
left waiting, a task never ended), and no message is assumed to overtake another from a different
sender (tests that failed before their fix)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
import time

import pytest

from osreapi import embed
from osreapi.actors.messages import (
    CreateTask,
    Enqueue,
    Flush,
    Ping,
    SaveRecords,
    ScheduledSweep,
    SignalStep,
)
from osreapi.actors.reply import Reply
from osreapi.actors.step import StepActor
from osreapi.actors.store import SWEEP_BATCH, StoreActor
from osreapi.errors import EngineBusy, EngineFailed
from osreapi.executor import process, treekill
from osreapi.executor.reaper import LogSink, Reaper
from osreapi.metrics import EngineMetrics
from osreapi.records import TaskRecord
from osreapi.storage.database import Database
from osreapi.vocabulary import State

from .conftest import gone, read_pid, sh, wait_until
from .test_fault_isolation import fail_once


@pytest.mark.timeout(60)
def test_a_named_task_is_known_to_the_supervisor_before_its_submitter_hears_it_is_stored(make_executor, monkeypatch):
    """A task submitted with its own id is stored first; its submitter then told the supervisor to
    queue it. A pause sent meanwhile (from another thread: an id anyone may name, a re-post of the
    same body answered at once) reached the supervisor first and was refused 'the task is not
    running here' for a task stored and pending. The store queues it, before the submit is answered."""
    held, release = threading.Event(), threading.Event()
    tell = embed.tell_if_alive

    def slow_enqueue(ref, message):  # the submitting thread, held between the store's answer and its Enqueue
        if isinstance(message, Enqueue):
            held.set()
            assert release.wait(20)
        return tell(ref, message)

    monkeypatch.setattr(embed, "tell_if_alive", slow_enqueue)
    ex = make_executor()
    submitted = threading.Event()
    step = sh("while [ ! -e go ]; do sleep 0.02; done; echo ran")
    submitter = threading.Thread(target=lambda: (ex.submit([step], task_id="named"), submitted.set()))
    submitter.start()
    try:
        assert wait_until(lambda: held.is_set() or submitted.is_set(), timeout=20)
        ex.pause("named")  # before: ActionRejected task_not_here
        assert ex.get("named").task.state.value == "paused"
    finally:
        release.set()
        submitter.join(20)
    assert submitted.is_set()
    ex.resume("named")
    (ex.config.workspace("named") / "go").touch()
    result = ex.wait("named", timeout=20)
    assert (result.task.state.value, result.steps[0].output) == ("stopped", "ran\n")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["kill_round", "scan_markers"])
def test_a_fault_in_a_kill_round_does_not_stop_the_kill(make_executor, monkeypatch, where):
    """The janitor's rounds run on a timer: a fault in one (a bug) was logged by the timer thread,
    and no round was scheduled again. A step that ignores TERM was never KILLed: it ran for ever,
    its task never ended and its pool slot stayed taken. The round that failed is followed by another."""
    left = fail_once(monkeypatch, treekill, where)
    ex = make_executor(kill_grace=0.3)
    task_id = ex.submit([sh("echo $$ > pid; trap '' TERM; while :; do sleep 0.05; done")])
    pid = read_pid(ex.config.workspace(task_id) / "pid")
    try:
        ex.kill(task_id)
        result = ex.wait(task_id, timeout=20)
        assert left == [0]
        assert result is not None and result.task.state.value == "killed", result
        assert gone(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the old code leaves it running
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, timeout=20).steps[0].output == "after\n"


@pytest.mark.timeout(60)
def test_a_worker_fault_while_it_pauses_its_step_answers_the_pause(make_executor, monkeypatch):
    """A fault (a bug) while a worker signals its step's tree stopped the worker (its step ends
    interrupted, as designed), but the pause it was signalling was never answered: its caller
    waited its whole call timeout and heard the engine was busy. It hears the fault at once."""
    left = fail_once(monkeypatch, treekill, "signal_tree")
    ex = make_executor(call_timeout=20)
    task_id = ex.submit([sh("echo $$ > pid; while :; do sleep 0.05; done")])
    pid = read_pid(ex.config.workspace(task_id) / "pid")
    try:
        with pytest.raises(RuntimeError, match="injected fault"):  # before: EngineBusy after 20 s
            ex.pause(task_id)
        assert left == [0]
        result = ex.wait(task_id, timeout=20)
        assert result.task.state.finished and result.steps[0].state.value == "interrupted", result
        assert wait_until(lambda: gone(pid), timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, timeout=20).steps[0].output == "after\n"


@pytest.mark.timeout(60)
def test_a_worker_fault_as_its_step_ends_still_ends_the_step(make_executor, monkeypatch):
    """A fault (a bug) in the last moment of a step's end, after the worker had let go of its run:
    the worker stopped and told nobody the step had ended; its task ran for ever. The end is told
    whatever fails after it is known."""
    left = fail_once(monkeypatch, EngineMetrics, "step_ended")
    ex = make_executor(call_timeout=20)
    task_id = ex.submit([sh("echo first"), sh("echo second")])
    result = ex.wait(task_id, timeout=20)
    assert left == [0]
    assert result is not None and result.task.state.finished, result
    assert result.steps[0].output == "first\n"
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, timeout=20).steps[0].output == "after\n"


@pytest.mark.timeout(60)
def test_a_pause_parked_for_a_start_its_worker_fails_on_is_answered(make_executor, monkeypatch):
    """A pause that reaches a worker before its run's start (that one comes through the store,
    once on disk) waits there for it; a fault (a bug) while the worker started that run stopped
    the worker and left the parked pause unanswered: its caller waited its whole call timeout and
    heard the engine was busy. It hears the engine failed, at once; the step ends interrupted."""
    holding, release, parked = threading.Event(), threading.Event(), threading.Event()
    save_many = Database.save_many

    def held_start(db, changes):  # the store, about to write the step's start: held until the pause is parked
        if not holding.is_set() and any(task_id == "held" and steps for task_id, _, steps in changes):
            holding.set()
            assert release.wait(20)
        return save_many(db, changes)

    receive = StepActor.on_receive

    def seeing(self, message):
        if isinstance(message, SignalStep):
            parked.set()
        return receive(self, message)

    monkeypatch.setattr(Database, "save_many", held_start)
    monkeypatch.setattr(StepActor, "on_receive", seeing)
    left = fail_once(monkeypatch, process, "start_step")
    ex = make_executor(call_timeout=20)
    answer: list[BaseException | None] = []

    def pause() -> None:
        try:
            ex.pause("held")
            answer.append(None)
        except BaseException as exc:  # noqa: BLE001 - what the caller heard
            answer.append(exc)

    ex.submit([sh("echo never")], task_id="held")
    assert holding.wait(20)
    pauser = threading.Thread(target=pause)
    pauser.start()
    try:
        assert parked.wait(20)
    finally:
        release.set()
    pauser.join(30)
    assert left == [0]
    assert len(answer) == 1 and isinstance(answer[0], EngineFailed), answer  # before: EngineBusy after 20 s
    result = ex.wait("held", timeout=20)
    assert result.task.state.finished and result.steps[0].state.value == "interrupted", result
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, timeout=20).steps[0].output == "after\n"


@pytest.mark.timeout(30)
def test_a_fault_in_a_process_own_waiter_still_reports_its_end(tmp_path, monkeypatch):
    """Where no pidfd can be had (none free, or no pidfd at all), a process gets a waiting thread
    of its own. A fault (a bug) while that thread copied its output ended the thread: the exit was
    never reported, the step ran for ever, its pool slot taken. The end is reported, the output
    cut short."""
    reaper = Reaper(time.time)

    def no_pidfd(pid, *args):
        raise OSError(errno.EMFILE, "no descriptor free")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd, raising=False)
    left = fail_once(monkeypatch, LogSink, "pump")
    proc = subprocess.Popen(["sh", "-c", "echo out; sleep 0.2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = os.dup(proc.stdout.fileno())
    proc.stdout.close()
    sink = LogSink(out, tmp_path / "step.log", 1 << 20)
    ended: list[int] = []
    try:
        reaper.watch(proc, sink, lambda returncode, at: ended.append(returncode))
        assert wait_until(lambda: ended, timeout=10), "the process's end was never reported"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reaper.close()
    assert left == [0] and ended == [0] and sink.closed


@pytest.mark.timeout(60)
def test_a_scheduled_sweep_of_many_expired_tasks_lets_other_work_through_between_batches(make_executor, monkeypatch):
    """The timer's sweep removed every expired task in one message, batch after batch, each task's
    files with it: thousands of tasks expiring together (a burst two days ago) held the store, the
    single writer, for all of it, and no step started meanwhile. It does one batch, and the next
    comes behind what was told to the store meanwhile."""
    ex = make_executor(sweep_interval=3600)
    now = ex.clock()
    for i in range(SWEEP_BATCH * 2 + 1):  # expired records, stored as they would be after two days
        task = TaskRecord(id=f"old-{i}", mode="sequential", count=0, accepted=now - 10, state=State.STOPPED,
                          begin=now - 10, end=now - 9, expires=now - 5)
        ex._store.tell(CreateTask(task, (), (), Reply()))
        ex._store.tell(SaveRecords(task.id, task, durable=True))  # its end, with its expiry
    assert ex._store.ask(Flush(), timeout=20) is None and len(ex._db.expired(ex.clock(), 1000)) == SWEEP_BATCH * 2 + 1
    order: list[str] = []
    delete_expired, handle = Database.delete_expired, StoreActor._handle

    def batch(db, at, limit):
        order.append("batch")
        if len(order) == 1:  # told while the store sweeps: handled before the next batch, not after all of them
            ex._store.tell(Ping())
        return delete_expired(db, at, limit)

    def seeing(store, message):
        if isinstance(message, Ping):
            order.append("other work")
        return handle(store, message)

    monkeypatch.setattr(Database, "delete_expired", batch)
    monkeypatch.setattr(StoreActor, "_handle", seeing)
    ex._store.tell(ScheduledSweep())
    assert wait_until(lambda: ex._db.get_task(f"old-{SWEEP_BATCH * 2}") is None and order.count("batch") >= 3), order
    assert order[:3] == ["batch", "other work", "batch"], order
    assert not any(ex._db.get_task(f"old-{i}") for i in range(SWEEP_BATCH * 2 + 1))  # all swept all the same


@pytest.mark.timeout(60)
def test_a_named_task_whose_submit_timed_out_runs_once_it_is_stored(make_executor, monkeypatch):
    """A named task's submitter queued it only once the store had answered: a submit that timed out
    (the disk slow to flush, 503 said 'the engine did not answer') left the task stored once the
    flush came, pending, and never run until the server's next start. It is queued by the store."""
    slow, release = threading.Event(), threading.Event()
    sync = Database.sync

    def slow_flush(db):
        if slow.is_set():
            assert release.wait(20)
        return sync(db)

    monkeypatch.setattr(Database, "sync", slow_flush)
    ex = make_executor(call_timeout=1)
    slow.set()
    try:
        with pytest.raises(EngineBusy):
            ex.submit([sh("echo ran")], task_id="slow")
    finally:
        slow.clear()
        release.set()
    assert wait_until(lambda: ex.task("slow") is not None, timeout=20)  # stored once the flush came
    result = ex.wait("slow", timeout=20)
    assert (result.task.state.value, result.steps[0].output) == ("stopped", "ran\n"), result
