"""Small faults left from earlier reviews: a fault in publishing a committed create, a pidfd left
open by a fault in an exit's handling, a save of a dropped task told after a failed flush (tests
that failed before their fix)."""

from __future__ import annotations

import os

import pytest

from osreapi.embed import Executor
from osreapi.executor.reaper import Reaper

from .conftest import sh
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
