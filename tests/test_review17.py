"""Review of this session's fault isolation, LMDB fatal state and parser refusals: what a fault
still ended, left hanging or said in English (tests that failed before their fix)."""

from __future__ import annotations

import errno
import logging

import lmdb
import pytest

from osreapi.actors.messages import InterruptStored, Ping
from osreapi.actors.store import StoreActor
from osreapi.errors import DiskFull, EngineClosed, StoreUnavailable
from osreapi.executor.reaper import LogSink
from osreapi.storage.database import Database
from osreapi.vocabulary import State, message

from .conftest import sh, wait_until
from .test_fault_isolation import fail_once
from .test_http_front_input import envelope_of, raw_request
from .test_mend16 import failing_sync  # noqa: F401 - a fixture
from .test_submit_failures import _Hold, hold_runners


@pytest.mark.timeout(60)
def test_a_fault_in_a_scheduled_sweep_is_logged_and_the_store_goes_on(make_executor, monkeypatch):
    """The engine's timer tells the store to sweep (a tell, not an ask): a fault in it was raised
    out of the store as for an ask, and pykka stopped the store (the single writer) for good."""
    left = fail_once(monkeypatch, Database, "expired")
    ex = make_executor(call_timeout=20, sweep_interval=0.05)
    assert wait_until(lambda: left == [0], timeout=20)  # a scheduled sweep met the fault
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, 20).steps[0].output == "after\n"
    assert ex.check_health() == "ok"


@pytest.mark.timeout(60)
def test_a_fault_before_a_save_is_written_refuses_it_and_its_step_does_not_wait_for_ever(make_executor, monkeypatch):
    """A fault in merging a save with what a full disk had refused came before the write's own
    guard: the store went on, but the save's `otherwise` (its step's StartNotRecorded) was never
    told, and the task stayed running for ever. It is refused as a save the write refused."""
    left = fail_once(monkeypatch, StoreActor, "_merge_unsaved", lambda store, task_id, *rest: task_id == "faulty")
    ex = make_executor(call_timeout=20)
    ex.submit([sh("echo never", name="a")], task_id="faulty")
    result = ex.wait("faulty", 20)
    assert left == [0]
    assert result is not None and result.task.state.finished, result
    assert result.steps[0].output == "step not started: its start could not be recorded", result
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, 20).steps[0].output == "after\n"


@pytest.mark.timeout(60)
def test_a_fault_after_a_flush_is_logged_and_every_write_is_told(make_executor, monkeypatch):
    """The flush that acknowledges committed writes runs after a message's handling, outside the
    store's guard: a fault there (here in giving back removed tasks' workspace names) stopped
    the store, and the writes it held were never told (a submitter waited its whole timeout)."""
    left = fail_once(monkeypatch, StoreActor, "_give_back")
    ex = make_executor(call_timeout=20)
    first = ex.submit([sh("echo first")])
    assert left == [0]
    assert ex.wait(first, 20).steps[0].output == "first\n"
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, 20).steps[0].output == "after\n"


@pytest.mark.timeout(60)
def test_a_fault_while_the_reaper_copies_a_long_output_still_ends_that_step(make_executor, monkeypatch):
    """After a fault in copying a step's output its pipe was no longer read nor closed: a step
    writing more than a pipe holds (64 KiB) blocked in write() for ever, and its task never ended."""
    left = fail_once(monkeypatch, LogSink, "pump")
    ex = make_executor()
    task = ex.submit([sh("head -c 1000000 /dev/zero; echo done >&2")])
    result = ex.wait(task, 30)
    assert left == [0]
    assert result is not None and result.task.state.finished, result
    after = ex.wait(ex.submit([sh("echo after")]), 20)
    assert after.steps[0].output == "after\n", after


@pytest.mark.parametrize(
    ("head", "status", "said"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Note : a\r\n", 400, message("bad_http", "zh", detail=message("http_header_space", "zh"))),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Note: a\r\n b\r\n", 400, message("bad_http", "zh", detail=message("http_header_fold", "zh"))),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Note: a\x00b\r\n", 400, message("bad_http", "zh", detail=message("http_header_control", "zh"))),
        (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n", 405, message("method", "zh")),
    ],
)
def test_the_head_readers_own_refusals_are_in_the_requests_language(client, head, status, said):
    """The refusals of our own header reader (a space before a colon, a fold, a NUL) and cheroot's
    405 for CONNECT were still English in a zh answer, the 405 called a malformed request."""
    answer = raw_request(client, head + b"Accept-Language: zh\r\n\r\n")
    assert envelope_of(answer) == (status, {"code": status, "message": said}), answer


@pytest.mark.timeout(90)
def test_close_after_a_failed_reopen_closes_the_engine(failing_sync, make_executor, tmp_path, monkeypatch):
    """A reopen after LMDB's fatal error that fails (no descriptor for lmdb.open, say) leaves the
    environment closed: Database.close() then raised on its flush, Executor.close() raised, and
    the data dir's lock and the waiters were left as they were. Nothing is flushed (the last
    commit failed); the engine closes, and a new one finds every commit before the failed one."""
    switch = failing_sync(tmp_path / "data")
    ex = make_executor(call_timeout=20)
    before = ex.submit([sh("echo before")])
    assert ex.wait(before, 30).steps[0].output == "before\n"
    switch.fail_meta()
    with monkeypatch.context() as patch:
        patch.setattr(lmdb, "open", lambda *a, **k: (_ for _ in ()).throw(lmdb.Error("refused")))
        with pytest.raises(DiskFull):  # its commit's meta page refused, and the reopen too
            ex.submit([sh("true")])
        ex.close()
    switch.heal()
    again = make_executor(call_timeout=20)
    assert again.get(before).task.state is State.STOPPED


@pytest.mark.timeout(60)
def test_a_fault_in_saving_a_tasks_end_does_not_leave_it_running_on_disk(make_executor, monkeypatch):
    """A save refused by a bug is not kept: when it held the task's end, nothing else came for
    the task, and it stayed running on disk (and in every read) for ever."""
    def ends(db, changes):
        return any(task is not None and task.state.finished for _, task, _ in changes)

    left = fail_once(monkeypatch, Database, "save_many", ends)
    ex = make_executor(call_timeout=20)
    task = ex.submit([sh("echo done")])
    assert wait_until(lambda: left == [0], timeout=20)
    assert wait_until(lambda: ex.get(task).task.state.finished, timeout=20), ex.get(task)
    assert ex.get(task).task.state is State.INTERRUPTED


@pytest.mark.timeout(60)
def test_a_task_whose_every_save_of_its_end_fails_is_not_retried_for_ever(make_executor, monkeypatch):
    """The interrupt that follows a refused end is tried once: its own save meeting the same bug
    is refused, and the store goes on."""
    original, calls = Database.save_many, []

    def failing(db, changes):
        if any(task is not None and task.state.finished and task.id == "doomed" for _, task, _ in changes):
            calls.append(1)
            raise RuntimeError("injected fault")
        return original(db, changes)

    monkeypatch.setattr(Database, "save_many", failing)
    ex = make_executor(call_timeout=20)
    ex.submit([sh("true")], task_id="doomed")
    assert wait_until(lambda: len(calls) >= 2, timeout=20)  # its end, then its interrupt
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, 20).steps[0].output == "after\n"
    assert len(calls) == 2


@pytest.mark.parametrize("target", [b"http://[::1/", b"http://[zz]/x", b"//[::1"])
def test_a_target_whose_ipv6_host_does_not_parse_is_refused_not_a_500(client, target):
    """cheroot catches only a UnicodeError of urlsplit on the request target: its ValueError for a
    bracketed host that does not parse left the parser, and the client's bad target was a 500."""
    answer = raw_request(client, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\n\r\n")
    said = message("bad_http", "en", detail=message("http_target", "en"))
    assert envelope_of(answer) == (400, {"code": 400, "message": said}), answer


@pytest.mark.timeout(60)
def test_a_queued_tasks_start_left_in_a_stopped_runners_mailbox_runs_on_another(make_executor, monkeypatch):
    """A runner that stops with a stored task's start still in its mailbox never handles it: the
    supervisor kept the task live on the stopped runner, its slot taken and the task pending for
    ever (until a restart). It goes back to the queue and runs on another runner."""
    hold_runners(monkeypatch)
    ex = make_executor(call_timeout=20)
    ex.wait(ex.submit([sh("true")]), 20)
    supervisor = ex._supervisor._actor_weakref()  # its runners: read here, between its messages
    assert wait_until(lambda: len(supervisor._idle) == 1 and not supervisor._live, timeout=10)
    runner, hold = supervisor._idle[0], _Hold()
    runner.tell(hold)
    assert hold.taken.wait(10)
    runner.stop(block=False)  # queued behind the hold: the start the supervisor tells next is never handled
    ex.submit([sh("echo ran")], task_id="queued")
    assert wait_until(lambda: supervisor._live.get("queued") is runner, timeout=10)
    hold.go.set()
    result = ex.wait("queued", 20)
    assert result is not None and result.task.state is State.STOPPED, result
    assert result.steps[0].output == "ran\n"


@pytest.mark.timeout(60)
def test_a_fault_in_the_retry_of_a_kept_end_does_not_leave_the_task_running(make_executor, monkeypatch):
    """A task's end a full disk refused is kept and written again by the retry. A fault (a bug)
    in that write lost the records it had taken, and no retry came again: the task stayed running
    on disk, and the health check said "disk full", for ever."""
    original, faults = Database.save_many, [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("injected")]

    def failing(db, changes):
        if faults and any(task is not None and task.state.finished for _, task, _ in changes):
            raise faults.pop(0)  # the end's write: the disk is full; its retry: a bug
        return original(db, changes)

    monkeypatch.setattr(Database, "save_many", failing)
    ex = make_executor(call_timeout=20)
    task = ex.submit([sh("true")])
    assert wait_until(lambda: not faults, timeout=20)
    assert wait_until(lambda: ex.get(task).task.state.finished, timeout=20), ex.get(task)
    assert ex.get(task).task.state is State.INTERRUPTED
    assert wait_until(lambda: ex.check_health() == "ok", timeout=20)


def test_the_stores_size_after_close_is_engine_closed_not_a_reopen(tmp_path):
    """size_bytes() after close() said the store was being opened again after a failed write (a
    503 with Retry-After for /metrics), as if it would answer shortly; reads say EngineClosed."""
    db = Database(tmp_path / "db")
    assert db.size_bytes() > 0
    db.close()
    with pytest.raises(EngineClosed):
        db.get_task("t1")
    with pytest.raises(EngineClosed):
        db.size_bytes()


@pytest.mark.timeout(60)
def test_a_reopen_that_fails_after_the_fatal_error_is_logged(failing_sync, tmp_path, monkeypatch, caplog):
    """The reopen after LMDB's fatal error that failed was suppressed without a word: the log said
    only that a write failed (once), while every read was refused until the next write."""
    switch = failing_sync(tmp_path / "data")
    db = Database(tmp_path / "data" / "db")
    try:
        switch.fail_meta()
        with monkeypatch.context() as patch, caplog.at_level(logging.ERROR, logger="osreapi.storage.database"):
            patch.setattr(lmdb, "open", lambda *a, **k: (_ for _ in ()).throw(lmdb.Error("refused")))
            with pytest.raises(lmdb.Error):
                db.probe()
        assert any("cannot be opened again" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    finally:
        switch.heal()
        db.close()


@pytest.mark.timeout(90)
def test_an_interrupt_the_store_cannot_read_for_yet_is_done_once_it_can(failing_sync, make_executor, tmp_path, monkeypatch):
    """A task to end interrupted (its runner stopped) is read first; while LMDB could not be opened
    again after its fatal error that read failed, and the task stayed running on disk for ever
    (until a restart). It is tried again, as the refused writes are, and ends once it can be read."""
    switch = failing_sync(tmp_path / "data")
    ex = make_executor(call_timeout=20)
    task = ex.submit([sh("sleep 60")])
    assert wait_until(lambda: ex.get(task).steps[0].pid is not None, timeout=20)
    switch.fail_meta()
    with monkeypatch.context() as patch:
        patch.setattr(lmdb, "open", lambda *a, **k: (_ for _ in ()).throw(lmdb.Error("refused")))
        with pytest.raises(DiskFull):  # its commit's meta page refused, and the reopen too
            ex.submit([sh("true")])
        ex._store.tell(InterruptStored(task, "task interrupted: its runner failed inside the engine"))
        ex._store.ask(Ping())  # handled while the database cannot be read
    switch.heal()

    def state() -> State | None:
        try:
            return ex.get(task).task.state
        except StoreUnavailable:  # until the store's retry opens it again
            return None

    assert wait_until(lambda: state() is not None and state().finished, timeout=20), ex.get(task)
    assert state() is State.INTERRUPTED
