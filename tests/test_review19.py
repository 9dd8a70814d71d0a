"""Review of the workspace discarder and this session's storage changes (tests that failed before
their fix)."""

from __future__ import annotations

import threading

import pytest

from osreapi.storage import removal
from osreapi.storage.discard import TRASH
from osreapi.vocabulary import State

from .conftest import sh


@pytest.mark.timeout(60)
def test_close_stops_the_discarder_after_the_tree_in_hand(make_executor, monkeypatch):
    """close() put its stop behind every tree queued: it waited (up to 5s) for all of them, and once
    that wait ran out it returned while the discarder went on removing trees in a data dir whose
    lock was given up (another server may have started there, and takes the same trash). It now
    stops after the tree in hand; the rest is removed after the next start, as documented."""
    ex = make_executor()
    ids = [ex.submit([sh("mkdir -p t/u && echo x > t/u/f")]) for _ in range(3)]
    for task_id in ids:
        assert ex.wait(task_id, 10).task.state is State.STOPPED
    held, release, remove = threading.Event(), threading.Event(), removal.remove_tree

    def holding(path, failed):
        held.set()
        release.wait(30)
        return remove(path, failed)

    monkeypatch.setattr(removal, "remove_tree", holding)
    for task_id in ids:
        ex.delete(task_id)
    assert held.wait(10)
    thread = ex._discarder._thread
    closing = threading.Thread(target=ex.close, kwargs={"timeout": 0.2})
    closing.start()
    closing.join(20)
    assert not closing.is_alive()
    release.set()
    thread.join(20)
    assert not thread.is_alive()
    trash = ex.config.data_dir / TRASH
    assert len(list(trash.iterdir())) == 2  # the two trees not begun: left for the next start
