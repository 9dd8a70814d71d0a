"""Faults found by review12 in the session's changes (issue 9's list)."""

from __future__ import annotations

from osreapi.vocabulary import State

from .conftest import sh
from .test_storage import FakeClock

# A tree deeper than Python's recursion limit: shutil.rmtree raised RecursionError on it.
DEEP_TREE = "i=0; while [ $i -lt 1200 ]; do mkdir d && cd d || exit 1; echo x > f; i=$((i+1)); done"


def test_a_workspace_deeper_than_the_recursion_limit_is_deleted_swept_and_replaced(make_executor):
    """A step can make its workspace a thousand directories deep. shutil.rmtree recursed once per
    level and raised RecursionError, which its error handler never sees: a delete failed (500) and
    the record stayed for good, every sweep stopped at that task, and its id posted again once
    expired raised inside the store's write and stopped the store actor (no task stored after)."""
    clock = FakeClock()
    ex = make_executor(key_expire="1h", clock=clock, sweep_interval=3600)
    deleted, swept, replaced = (ex.submit([sh(DEEP_TREE)], task_id=name) for name in ("del", "swept", "again"))
    for task_id in (deleted, swept, replaced):
        assert ex.wait(task_id, 30).task.state == State.STOPPED
    ex.delete(deleted)
    assert not ex.config.workspace(deleted).exists() and ex._db.get_task(deleted) is None
    clock.now += 3601
    ex.submit([sh("ls")], task_id="again")  # the expired task's files go first, then it is replaced
    assert ex.wait("again", 30).task.state == State.STOPPED
    assert ex.wait("again", 30).steps[0].output.strip() == ""
    assert ex.sweep() == 1  # "swept"; "again" is the new task's, not expired
    assert not ex.config.workspace(swept).exists() and ex._db.get_task(swept) is None
    later = ex.submit([sh("echo alive")])  # the store still takes tasks
    assert ex.wait(later, 30).task.state == State.STOPPED
