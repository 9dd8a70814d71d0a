"""A task whose id the engine makes is started as it is stored: its create and its first steps'
starts are one durable write (one flush fewer on the way from a submission to its first process),
and nothing of it runs or stays when that write is refused."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from osreapi.errors import DiskFull

from .conftest import sh, wait_until
from .test_mend16 import failing_sync  # noqa: F401 - a fixture


def count_flushes(ex) -> list[int]:
    """How many times the store flushes the data dir's LMDB from now on (the real flush still runs)."""
    count, flush = [0], ex._db.sync

    def counted() -> None:
        count[0] += 1
        flush()

    ex._db.sync = counted
    return count


def flushes_for(ex, count: list[int], submit: Callable[[], str]) -> int:
    before = count[0]
    task_id = submit()
    assert ex.wait(task_id, 30).steps[0].output == "hi\n"
    return count[0] - before


def test_a_task_with_a_made_id_is_stored_with_its_first_start_in_one_flush(make_executor):
    ex = make_executor()
    count = count_flushes(ex)
    ex.wait(ex.submit([sh("true")]), 30)
    # The create with the first start, then the end: two flushes (three before, the create alone first).
    assert flushes_for(ex, count, lambda: ex.submit([sh("echo hi")])) == 2
    # A named one is stored first (a re-post, a delete of its id may race it), then started.
    assert flushes_for(ex, count, lambda: ex.submit([sh("echo hi")], task_id="named")) == 3


def test_a_made_id_task_whose_create_is_refused_runs_nothing_and_holds_nothing(failing_sync, make_executor, tmp_path):
    switch = failing_sync(tmp_path / "data")
    ex = make_executor()
    first = ex.submit([sh("true")])
    ex.wait(first, 30)
    switch.fail(writes_too=True)
    ran = tmp_path / "ran"
    with pytest.raises(DiskFull):  # its flush fails
        ex.submit([sh(f"touch {ran}")])
    with pytest.raises(DiskFull):  # its write fails
        ex.submit([sh(f"touch {ran}")])
    assert wait_until(lambda: ex.stats()["tasks_live"] == 0 and ex.stats()["pool_busy"] == 0)
    switch.heal()
    assert wait_until(lambda: ex.check_health() == "ok", timeout=30)
    after = ex.submit([sh("echo next")])
    assert ex.wait(after, 30).steps[0].output == "next\n"
    assert not ran.exists()  # their starts, in the refused writes, never reached a worker
    assert sorted(task.id for task in ex.list()) == sorted([first, after])
    # Their runners had made their workspaces while the store wrote: gone with them.
    root = ex.config.workspace_root
    assert wait_until(lambda: sorted(os.listdir(root)) == sorted([first, after])), os.listdir(root)
