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


@pytest.mark.timeout(60)
def test_a_save_behind_a_create_whose_flush_failed_is_not_published(make_executor, monkeypatch):
    """A runner writes its task's create with its first save, and may send more before the flush
    (here its workspace could not be made: it interrupts the task, and its not-started step's skip
    is saved without a flush). When that flush failed, the create was refused and deleted, yet the
    save behind it, not promised durable, was told as written: the subscribers heard of a task
    the submitter was told does not exist. It is refused, as the saves sent after it are."""
    ex = make_executor(call_timeout=20)
    seen: list[str] = []
    ex.subscribe(lambda task_id, task, steps: seen.append(task_id))
    created, queued = [], []
    create_task, sync = Database.create_task, Database.sync

    def creating(db, task, *args, **kwargs):  # the runner's next save waits behind its (first) create
        if not created:
            queued.append(wait_until(lambda: not ex._store.actor_inbox.empty(), timeout=10))
        created.append(task.id)
        return create_task(db, task, *args, **kwargs)

    def failing_sync(db):  # the flush of that create and that save fails (a full disk), once
        if len(created) == 1 and len(queued) == 1:
            queued.append(True)
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        return sync(db)

    monkeypatch.setattr(Database, "create_task", creating)
    monkeypatch.setattr(Database, "sync", failing_sync)
    left = fail_once(monkeypatch, task_module.process, "prepare_workspace")
    with pytest.raises(DiskFull):
        ex.submit([sh("echo never", name="a"), sh("echo never", name="b")])
    ex._store.ask(Ping(), timeout=10)  # the failed flush has told everything it held
    assert left == [0] and queued == [True, True], queued  # the save was behind the create in that flush
    assert ex.get(created[0]) is None
    assert seen == [], seen  # no event of a task that was not stored
    assert wait_until(lambda: ex.check_health() == "ok", timeout=20)  # the retry found room
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, 20).steps[0].output == "after\n"
