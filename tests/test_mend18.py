"""Small faults left from earlier reviews: a fault in publishing a committed create, a pidfd left
open by a fault in an exit's handling, a save of a dropped task told after a failed flush (tests
that failed before their fix)."""

from __future__ import annotations

import pytest

from osreapi.embed import Executor

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
