"""Review of the workspace discarder and this session's storage changes (tests that failed before
their fix)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from osreapi import Executor
from osreapi.errors import CaseConflict, InvalidValue
from osreapi.storage.discard import TRASH
from osreapi.vocabulary import State

from .conftest import sh
from .test_discard import hold_removals
from .test_front12 import serve_case_folding


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
    held, release = hold_removals(monkeypatch)
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


CRASH_IN_DETACH = r"""
import os, signal, sys
from pathlib import Path
from osreapi import Executor
from osreapi.storage import discard

class KilledAfterRename:  # the process dies between the rename into the trash and the mkdir
    def __getattr__(self, name):
        return getattr(os, name)
    def rename(self, old, new):
        os.rename(old, new)
        os.kill(os.getpid(), signal.SIGKILL)

ex = Executor(Path(sys.argv[1]), kill_grace=0.5)
ex.submit([{"command_type": "sh", "command_content": "echo one > made-by-first"}], task_id="Build-1")
assert ex.wait("Build-1", 20).task.state.value == "stopped"
discard.os = KilledAfterRename()
ex.delete("Build-1")
"""


@pytest.fixture
def case_folding_data_dir(tmp_path) -> Iterator[Path]:
    """A whole data dir (its trash beside its workspace root, as where the whole volume folds case:
    macOS, FAT) served by tests/casefs.py; its database is a link out of the FUSE mount."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("a FUSE mount takes root and /dev/fuse")
    try:
        import fuse  # noqa: F401 - fusepy: raises OSError without libfuse.so.2
    except (ImportError, OSError) as exc:
        pytest.skip(f"no FUSE library ({exc})")
    backing, data, db = tmp_path / "backing", tmp_path / "data", tmp_path / "db"
    for path in (backing, data, db):
        path.mkdir(mode=0o700)
    (backing / "db").symlink_to(db)
    yield from serve_case_folding(backing, data)


@pytest.mark.timeout(120)
def test_a_crash_while_a_workspace_is_moved_aside_leaves_its_name_taken(case_folding_data_dir, make_executor):
    """The discarder moves a deleted task's workspace into the trash, then makes its directory
    again: a kill between the two left a record without its directory, so on a root that folds case
    another id (BUILD-1) took the name, and the record's deletion later moved that task's workspace
    into the trash. The next start makes the directory of a record that lacks one."""
    data = case_folding_data_dir
    child = subprocess.run([sys.executable, "-c", CRASH_IN_DETACH, str(data)], cwd=Path(__file__).parent.parent,
                           capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not os.path.lexists(data / "workspace" / "Build-1")  # the crash window, as it was left
    ex = make_executor(data)
    assert ex.get("Build-1").task.state is State.STOPPED
    with pytest.raises(CaseConflict):
        ex.submit([sh("echo two > made-by-second")], task_id="BUILD-1")
    assert ex.get("BUILD-1") is None


@pytest.mark.timeout(60)
def test_a_link_in_the_trash_place_is_never_followed(make_executor, tmp_path):
    """<data_dir>/trash is what a step reaches as ../../trash: a link a step put there (to the home
    directory, say) was followed by the next start, which removed everything in the directory it
    led to as "left in the trash"; and each deletion moved its workspace through it. The trash is
    used only where it is a real directory; otherwise workspaces are removed in place."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "file").write_text("keep me")
    (outside / "file").write_text("keep me too")
    ex = make_executor(tmp_path / "data")
    made = ex.submit([sh(f"ln -s {outside} ../../trash && mkdir t && echo x > t/f")])
    assert ex.wait(made, 10).task.state is State.STOPPED
    assert (ex.config.data_dir / TRASH).is_symlink()
    ex.delete(made)
    assert ex._discarder.wait_idle(10)
    assert sorted(p.name for p in outside.iterdir()) == ["dir", "file"]
    ex.close()
    again = make_executor(tmp_path / "data")
    assert again._discarder.wait_idle(10)
    assert (outside / "dir" / "file").read_text() == "keep me" and (outside / "file").read_text() == "keep me too"


def test_a_pool_size_that_is_not_a_number_is_refused_before_it_is_fitted(tmp_path):
    """The pool is fitted to the descriptor limit before the config checks it: NaN (which compares
    false with everything) came out as the number of steps the limit allows, and the engine started
    with it, where it was refused naming pool_size before."""
    with pytest.raises(InvalidValue, match="pool_size"):
        Executor(tmp_path / "data", pool_size=float("nan"))
