"""Small faults left from earlier reviews: a fault in publishing a committed create, a pidfd left
open by a fault in an exit's handling, a save of a dropped task told after a failed flush (tests
that failed before their fix)."""

from __future__ import annotations

import errno
import os

import pytest

from osreapi.actors import task as task_module
from osreapi.actors.messages import Ping
from osreapi.embed import Executor
from osreapi.errors import DiskFull
from osreapi.executor.reaper import Reaper
from osreapi.storage.database import Database

from .conftest import sh, wait_until
from .test_fault_isolation import fail_once

# -- 1. a fault while acknowledging a committed create ----------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("named", [True, False], ids=["stored-then-queued", "written-by-its-runner"])
def test_a_fault_in_publishing_a_committed_create_acknowledges_it_and_the_task_runs(make_executor, monkeypatch, named):
    """The store tells the commit hook (events, waiters, subscribers) before it answers a create:
    a fault there (a bug) was the create's answer. The submitter heard it failed, yet the task was
    stored, and nobody ran it: a named task was never queued (it ran after a restart), and the
    runner of an unnamed one never got its first steps (running for ever). It is logged; the
    create is acknowledged and the task runs."""
    ex = make_executor(call_timeout=20)
    left = fail_once(monkeypatch, Executor, "_tell", lambda self, listeners, kind, *args: kind == "record")
    submitted = ex.submit([sh("echo ran")], task_id="acked" if named else None)
    assert left == [0]  # the fault met the create's own publication
    result = ex.wait(submitted, 20)
    assert result is not None and result.task.state.finished, result
    assert result.steps[0].output == "ran\n", result


# -- 2. a fault in handling a step's exit left its pidfd open -----------------------------------


def _pidfds() -> set[int]:
    """This process's open pidfds (a closed one's number may be reused by anything else)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[pidfd]":
                found.add(int(name))
        except OSError:  # the listing's own descriptor, closed since
            pass
    return found


def _is_pidfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
    except OSError:
        return False


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the reaper watches pidfds on Linux only")
def test_a_fault_in_handling_a_steps_exit_closes_its_pidfd_and_the_step_ends(make_executor, monkeypatch):
    """The reaper closed an exited step's pidfd in the middle of handling the exit: a fault before
    that point (a bug) was logged, the step's end reported, and its pidfd left open for the life of
    the server (one descriptor per such step, until EMFILE refused every start)."""
    ex = make_executor(call_timeout=20)
    before = _pidfds()
    left = fail_once(monkeypatch, Reaper, "_forget", lambda reaper, fd: _is_pidfd(fd))
    result = ex.wait(ex.submit([sh("echo ended")]), 20)
    assert left == [0]  # the fault met the exit's handling
    assert result is not None and result.task.state.finished, result
    assert result.steps[0].output == "ended\n", result
    assert _pidfds() == before  # its pidfd is closed (before its end was reported)
    after = ex.wait(ex.submit([sh("echo after")]), 20)
    assert after.steps[0].output == "after\n" and _pidfds() == before, after


# -- 4. a save of a dropped task told after a failed flush ---------------------------------------


def _steps_stored(ex: Executor, task_id: str) -> list:
    """The step records LMDB holds under a task's id, with or without its task record."""
    with ex._db._reading() as txn:
        return ex._db._steps_in(txn, task_id)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("written", [True, False], ids=["save-written", "save-kept-for-the-retry"])
def test_a_save_behind_a_create_whose_flush_failed_is_neither_published_nor_written(make_executor, monkeypatch, written):
    """A runner writes its task's create with its first save, and may send more before the flush
    (here its workspace could not be made: it interrupts the task, and its not-started step's skip
    is saved without a flush). When that flush failed, the create was refused and deleted, yet the
    save behind it was told as written (not promised durable), or, when the full disk had refused
    it too, kept and written by the retry: the subscribers heard of a task the submitter was told
    does not exist, and LMDB kept step records without their task. Neither is told nor kept."""
    ex = make_executor(call_timeout=20)
    seen: list[str] = []
    ex.subscribe(lambda task_id, task, steps: seen.append(task_id))
    created, faults = [], []
    create_task, save_many, sync = Database.create_task, Database.save_many, Database.sync

    def creating(db, task, *args, **kwargs):  # the runner's next save waits behind its (first) create
        if not created:
            faults.append(wait_until(lambda: not ex._store.actor_inbox.empty(), timeout=10))
        created.append(task.id)
        return create_task(db, task, *args, **kwargs)

    def saving(db, changes):  # unless `written`, the disk refuses that save too, once
        changes = list(changes)
        if not written and len(faults) == 1 and any(change[0] == created[0] for change in changes):
            faults.append("save")
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        return save_many(db, changes)

    def syncing(db):  # the flush of that create and that save fails (a full disk), once
        if len(faults) == (1 if written else 2):
            faults.append("sync")
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        return sync(db)

    monkeypatch.setattr(Database, "create_task", creating)
    monkeypatch.setattr(Database, "save_many", saving)
    monkeypatch.setattr(Database, "sync", syncing)
    left = fail_once(monkeypatch, task_module.process, "prepare_workspace")
    with pytest.raises(DiskFull):
        ex.submit([sh("echo never", name="a"), sh("echo never", name="b")])
    assert wait_until(lambda: ex.check_health() == "ok", timeout=20)  # the retry found room, and wrote what it kept
    ex._store.ask(Ping(), timeout=10)
    assert left == [0] and faults == ([True, "sync"] if written else [True, "save", "sync"]), faults
    assert ex.get(created[0]) is None and _steps_stored(ex, created[0]) == []
    assert seen == [], seen  # no event of a task that was not stored
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, 20).steps[0].output == "after\n"


# -- 3. whether a fault goes back is the message's type alone: an asked sweep's does -------------


@pytest.mark.timeout(60)
def test_a_fault_in_an_asked_sweep_goes_back_to_the_asker_and_the_store_goes_on(make_executor, monkeypatch):
    """(A guard of a refactor, passing before it too.) Executor.sweep asks the store (SweepExpired),
    the timer tells it (ScheduledSweep, see test_review17): the asker hears the fault, and the store
    goes on."""
    ex = make_executor(call_timeout=20, sweep_interval=3600)  # no scheduled sweep meets the fault first
    left = fail_once(monkeypatch, Database, "expired")
    with pytest.raises(RuntimeError, match="injected fault"):
        ex.sweep()
    assert left == [0] and ex.sweep() == 0
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, 20).steps[0].output == "after\n"
    assert ex.check_health() == "ok"
