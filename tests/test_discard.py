"""Workspaces of deleted, swept and replaced tasks are removed off the store's thread: moved into the
trash at once, their trees removed by the discarder."""

from __future__ import annotations

import threading

import pytest

from osreapi import Executor
from osreapi.storage import removal
from osreapi.storage.discard import TRASH
from osreapi.vocabulary import State

from .conftest import sh, wait_until
from .test_storage import FakeClock


def hold_removals(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Every tree removal waits for `release` (bounded); `held` says one has begun."""
    held, release, remove = threading.Event(), threading.Event(), removal.remove_tree

    def holding(path, failed):
        held.set()
        release.wait(30)
        return remove(path, failed)

    monkeypatch.setattr(removal, "remove_tree", holding)
    return held, release


def trash_of(ex: Executor) -> list[str]:
    trash = ex.config.data_dir / TRASH
    return sorted(p.name for p in trash.iterdir()) if trash.exists() else []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["delete", "sweep"])
def test_a_workspace_being_removed_does_not_hold_the_store(make_executor, monkeypatch, how):
    """A deleted or expired task's files were removed by the store before it went on: a tree of
    50,000 files held every write, and every step's start, for about a second. Here its removal is
    held: other tasks still run, and the removed task is gone at once."""
    clock = FakeClock()
    ex = make_executor(key_expire="1h", clock=clock, sweep_interval=3600, call_timeout="5s")
    old = ex.submit([sh("mkdir -p tree/a && echo x > tree/a/file")])
    assert ex.wait(old, 10).task.state is State.STOPPED
    held, release = hold_removals(monkeypatch)
    try:
        if how == "delete":
            removing = threading.Thread(target=ex.delete, args=(old,))
        else:
            clock.now += 3601
            removing = threading.Thread(target=ex.sweep)
        removing.start()
        assert held.wait(10)
        task_id = ex.submit([sh("echo ran")])
        result = ex.wait(task_id, 10)
        assert result is not None and result.task.state is State.STOPPED and result.steps[0].output == "ran\n"
        removing.join(10)
        assert not removing.is_alive() and ex.get(old) is None
        assert len(trash_of(ex)) == 1  # its tree, moved aside whole
    finally:
        release.set()
    assert ex._discarder.wait_idle(10) and trash_of(ex) == []
    assert wait_until(lambda: not ex.config.workspace(old).exists())


@pytest.mark.timeout(60)
def test_an_expired_id_posted_again_runs_in_a_new_workspace_while_the_old_one_is_removed(make_executor, monkeypatch):
    clock = FakeClock()
    ex = make_executor(key_expire="1h", clock=clock, sweep_interval=3600)
    ex.submit([sh("mkdir -p a/b && echo old > a/b/file")], task_id="again")
    assert ex.wait("again", 10).task.state is State.STOPPED
    clock.now += 3601
    held, release = hold_removals(monkeypatch)
    try:
        ex.submit([sh("test -e a/b/file && echo old || echo fresh")], task_id="again")
        assert ex.wait("again", 10).steps[0].output.strip() == "fresh"
        assert held.is_set() and len(trash_of(ex)) == 1
    finally:
        release.set()
    assert ex._discarder.wait_idle(10) and trash_of(ex) == []


def test_what_a_stop_left_in_the_trash_is_removed_after_the_next_start(make_executor, tmp_path):
    data = tmp_path / "data"
    ex = make_executor(data)
    ex.close()
    left = ex.config.data_dir / TRASH / "left-by-a-crash"
    (left / "a" / "b").mkdir(parents=True)
    (left / "a" / "b" / "file").write_text("x")
    again = make_executor(data)
    assert again._discarder.wait_idle(10) and trash_of(again) == []


@pytest.mark.timeout(60)
def test_a_tree_left_for_want_of_descriptors_is_tried_again_while_others_keep_coming(tmp_path, monkeypatch):
    """A tree left for want of a descriptor was tried again only once the queue had stood empty
    for a whole RETRY_AFTER: a steady stream of deletions left it for as long as it lasted."""
    import errno

    from osreapi.storage import discard

    monkeypatch.setattr(discard, "RETRY_AFTER", 0.3)
    remove, short = removal.remove_tree, ["once"]

    def short_once(path, failed):
        if path.name.startswith("first.") and short:
            short.clear()
            failed(str(path), OSError(errno.EMFILE, "Too many open files"))
            return None
        return remove(path, failed)

    monkeypatch.setattr(removal, "remove_tree", short_once)
    data = tmp_path / "data"
    (data / "workspace").mkdir(parents=True)
    discarder = discard.Discarder(data)
    try:
        first = data / "workspace" / "first"
        first.mkdir()
        assert discarder.detach(first)
        moved = next((data / TRASH).iterdir())
        for n in range(100):  # a deletion every 50 ms for at most 5 s, far more often than the retry
            if not moved.exists():
                break
            other = data / "workspace" / f"other-{n}"
            other.mkdir()
            assert discarder.detach(other)
            threading.Event().wait(0.05)  # the stream's pace, not a synchronisation
        assert not moved.exists() and not short  # tried again, and removed, while the stream went on
    finally:
        discarder.close(5)
