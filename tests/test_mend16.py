"""mend16: the store's failure windows hunt14 left open: a flush that fails after a create that
replaced an expired task, or after a deletion; an identical re-post racing a DELETE; the claim of
a case-folding name given back; a tree of many files that cannot be removed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from osreapi.errors import CaseConflict, DiskFull, NotFound
from osreapi.storage.database import Database
from osreapi.vocabulary import State

from .conftest import sh, wait_until
from .test_front12 import case_folding_dir  # noqa: F401 - a fixture
from .test_hunt14 import StoreGate
from .test_storage import FakeClock


class SyncSwitch:
    """While on, every flush of the data dir's LMDB fails with ENOSPC (its writes go through, unless
    `writes_too`: then they fail as well once a flush has failed)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def fail(self, writes_too: bool = False) -> None:
        self._path.write_text("writes" if writes_too else "")

    def fail_meta(self) -> None:
        """Fail only the writes of LMDB's meta pages (EIO): the environment's fatal state."""
        self._path.write_text("meta")

    def heal(self) -> None:
        self._path.unlink(missing_ok=True)


@pytest.fixture
def failing_sync(tmp_path) -> Iterator[Callable[[Path], SyncSwitch]]:
    """mount(data_dir): `<data_dir>/db` served through tests/syncfs.py (FUSE); its switch. Ask for
    this fixture before make_executor / start_server: they close before it unmounts."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("a FUSE mount takes root and /dev/fuse")
    try:
        import fuse  # noqa: F401 - fusepy: raises OSError without libfuse.so.2
    except (ImportError, OSError) as exc:
        pytest.skip(f"no FUSE library: {exc}")
    mounted: list[tuple[Path, subprocess.Popen, SyncSwitch]] = []

    def mount(data_dir: Path) -> SyncSwitch:
        backing, db, switch = tmp_path / f"db-backing-{len(mounted)}", data_dir / "db", SyncSwitch(tmp_path / f"fail-sync-{len(mounted)}")
        backing.mkdir(mode=0o700)
        db.mkdir(mode=0o700, parents=True)
        served = subprocess.Popen([sys.executable, "-m", "tests.syncfs", str(backing), str(db), str(switch._path)],
                                  cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE)
        mounted.append((db, served, switch))
        if not wait_until(lambda: os.path.ismount(db) or served.poll() is not None, timeout=10) or served.poll() is not None:
            pytest.skip(f"FUSE refused: {served.stderr.read().decode().strip()}")
        return switch

    yield mount
    for db, served, switch in mounted:
        switch.heal()
        subprocess.run(["umount", "--lazy", str(db)], check=False, capture_output=True, timeout=30)
        served.wait(30)
        served.stderr.close()


def _names(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


# -- 1. a failed flush after a create that replaced an expired task ---------------------------------


def test_a_create_refused_at_its_flush_gives_back_the_name_of_the_expired_task_it_replaced(
    case_folding_dir, failing_sync, make_executor  # noqa: F811
):
    """The create emptied the expired task's workspace (its directory kept, holding the name),
    committed the new record, and the flush failed: the new record was deleted, but the directory
    stayed without a record until the next start, and on a root that folds case an id equal to it
    got 409 naming a task that was gone. The name now goes once that removal is on disk; until
    then a claim of it is refused as the full disk it waits for (507), not as a conflict."""
    switch = failing_sync(case_folding_dir.parent)
    clock = FakeClock()
    ex = make_executor(data_dir=case_folding_dir.parent, key_expire="1h", clock=clock, sweep_interval=3600)
    ex.submit([sh("echo old > made-by-old")], task_id="Lib-1")
    assert ex.wait("Lib-1", 30).task.state == State.STOPPED
    clock.now += 3601  # expired: a submission of its id replaces it
    switch.fail()
    with pytest.raises(DiskFull):
        ex.submit([sh("ls")], task_id="Lib-1")
    assert ex._db.get_task("Lib-1") is None
    assert _names(case_folding_dir / "Lib-1") == []  # the old files gone; the name kept until on disk
    with pytest.raises(DiskFull):
        ex.submit([sh("true")], task_id="LIB-1")
    switch.heal()
    assert wait_until(lambda: ex.check_health() == "ok", timeout=30)  # the store's retry flushed
    assert _names(case_folding_dir) == []
    assert ex.submit([sh("echo other > made-by-other")], task_id="LIB-1") == "LIB-1"
    assert ex.wait("LIB-1", 30).task.state == State.STOPPED
    assert _names(case_folding_dir) == ["LIB-1"] and _names(case_folding_dir / "LIB-1") == [".osreapi", "made-by-other"]


# -- 2. a deletion committed whose flush fails -------------------------------------------------------


def test_a_deletion_whose_flush_fails_is_answered_done_and_holds_after_a_process_crash(failing_sync, start_server, tmp_path):
    """A DELETE committed the record's removal (readers no longer saw it, and LMDB keeps a commit
    through a crash of the process) and answered 507 "could not be deleted" when the flush failed.
    It is deleted: 200, the files gone; the directory stays until the removal is on disk (an OS
    crash before that may bring the ended task back, whole), here until the next start."""
    data = tmp_path / "data"
    switch = failing_sync(data)
    server = start_server(data_dir=data)
    client = server.client
    assert client.post("/?id=gone", [sh("echo x > made")]).status == 200
    assert client.wait("gone", 30).json["code"] == 0
    switch.fail()
    answer = client.request("DELETE", "/gone?lang=en")
    assert answer.status == 200 and answer.json["code"] == 0, answer.body
    assert client.get("/gone").status == 404
    assert client.request("DELETE", "/gone").status == 404
    assert _names(data / "workspace") == ["gone"] and _names(data / "workspace" / "gone") == []
    server.kill()  # a crash of the process while the disk still refuses the flush
    switch.heal()
    db = Database(data / "db")
    try:
        assert db.get_task("gone") is None  # the commit held
    finally:
        db.close()
    client = start_server(data_dir=data).client
    assert client.get("/gone").status == 404
    assert _names(data / "workspace") == []  # no record: removed with the orphans at the start


def test_the_directory_of_a_deletion_not_yet_flushed_goes_once_the_disk_takes_it(failing_sync, make_executor, tmp_path):
    switch = failing_sync(tmp_path / "data")
    ex = make_executor()
    task_id = ex.submit([sh("echo x > made")])
    assert ex.wait(task_id, 30).task.state == State.STOPPED
    switch.fail()
    ex.delete(task_id)  # no DiskFull: it is deleted
    assert ex.get(task_id) is None and _names(ex.config.workspace(task_id)) == []
    assert ex.check_health() == "disk full"
    switch.heal()
    assert wait_until(lambda: not ex.config.workspace(task_id).exists(), timeout=30)
    assert wait_until(lambda: ex.check_health() == "ok", timeout=30)


# -- 3. an identical re-post racing a DELETE ----------------------------------------------------------


def test_an_identical_repost_racing_a_delete_is_the_existing_task_never_a_conflict(make_executor):
    """The submitter compared the body with the stored specs after the store had answered
    "existing": a DELETE handled in between (here: queued right behind the re-post, it flushes
    the create's answer after committing the deletion) left no specs, and the same body got 409.
    The store compares, in order with the deletion."""
    ex = make_executor()
    body = [sh("echo same")]
    ex.submit(body, task_id="same")
    assert ex.wait("same", 30).task.state == State.STOPPED
    gate = StoreGate(ex)
    with ThreadPoolExecutor(4) as pool:
        tripped = gate.hold(pool)
        posted = gate.queue_behind(pool, ex.submit, body, task_id="same")
        deleted = gate.queue_behind(pool, ex.delete, "same")
        gate.release()
        tripped.result(30), deleted.result(30)
        assert posted.result(30) == "same"  # the existing task, deleted right after
    assert ex.get("same") is None
    assert ex.submit([sh("echo other")], task_id="same") == "same"  # the id is free again
    assert ex.wait("same", 30).steps[0].output.strip() == "other"


# -- 4. a claim given back while a submission of the same id is stored --------------------------------


def test_a_name_given_back_after_a_failed_flush_stays_with_the_same_id_stored_again(
    case_folding_dir, failing_sync, make_executor  # noqa: F811
):
    """The claiming submission's create fails at its flush (its record deleted, the name to be
    given back once that is on disk); a submission of the same id stored before then finds the
    directory and keeps it: the name is not given back under it, and an id equal to it under case
    folding is still refused. (The claim is made in the store, ordered with every release.)"""
    switch = failing_sync(case_folding_dir.parent)
    ex = make_executor(data_dir=case_folding_dir.parent, pool_size=1)
    ex.submit([sh("sleep 30")], task_id="runner")  # the pool's one slot: Lib-1 waits, its directory empty
    assert wait_until(lambda: ex.get("runner").steps[0].state == State.RUNNING, timeout=30)
    switch.fail()
    with pytest.raises(DiskFull):
        ex.submit([sh("echo b > made-by-b")], task_id="Lib-1")
    switch.heal()
    # Its flush gives back the names waiting for one (Lib-1's, while Lib-1 is stored again).
    assert ex.submit([sh("echo b > made-by-b")], task_id="Lib-1") == "Lib-1"
    assert wait_until(lambda: ex.check_health() == "ok", timeout=30)
    assert _names(case_folding_dir) == ["Lib-1", "runner"]
    with pytest.raises(CaseConflict) as refused:
        ex.submit([sh("true")], task_id="LIB-1")
    assert refused.value.existing == "Lib-1"
    ex.kill("runner")
    assert ex.wait("Lib-1", 30).task.state == State.STOPPED
    assert _names(case_folding_dir / "Lib-1") == [".osreapi", "made-by-b"]


# -- 5. a tree of many files that cannot be removed ---------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    """The mount points at or under path, deepest first (from /proc/self/mounts, octal escapes read)."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
    return sorted((p for p in points if p == str(path) or p.startswith(f"{path}/")), key=len, reverse=True)


def test_a_tree_of_many_unremovable_files_is_one_warning(make_executor, caplog):
    """A read-only bind mount in a workspace (a step run as root can make one): each of its files
    refused its unlink (EROFS), and the store logged one warning per file. One warning per removal
    now, with the count and the first path."""
    if os.geteuid() != 0:
        pytest.skip("a bind mount takes root")
    ex = make_executor()
    task_id = ex.submit([sh("mkdir kept && cd kept && touch $(seq 200)")])
    assert ex.wait(task_id, 30).task.state == State.STOPPED
    kept = ex.config.workspace(task_id) / "kept"
    subprocess.run(["mount", "--bind", str(kept), str(kept)], check=True, capture_output=True, timeout=30)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(kept)], check=True, capture_output=True, timeout=30)
        with caplog.at_level(logging.WARNING, logger="osreapi"):
            ex.delete(task_id)
            assert ex._discarder.wait_idle(30)  # the tree, moved aside whole, is removed there
    finally:  # wherever the mount went: moved into the trash with its workspace
        for mount in _mounts_under(ex.config.data_dir):
            subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True, timeout=30)
    assert _mounts_under(ex.config.data_dir) == []  # (left mounted under /tmp for good before)
    warnings = [record.getMessage() for record in caplog.records if record.name.startswith("osreapi")]
    assert len(warnings) == 1, warnings[:3]
    assert "202 entries" in warnings[0] and f"{task_id}." in warnings[0] and "/kept/" in warnings[0], warnings[0]
    assert ex.get(task_id) is None


def test_a_refused_create_whose_deletion_fails_too_keeps_its_name_until_it_is_deleted(
    case_folding_dir, failing_sync, make_executor  # noqa: F811
):
    """A create refused at its flush, on a disk that then refuses the deletion of its record too:
    the name was given back with the record still there (on a root that folds case, an id equal
    to it could take the directory the record's task would run in after a restart), and the record
    stayed, never run, its id answered as an existing task. The record is deleted by the store's
    retry, its name given back once that is on disk; until then both ids are refused as the full
    disk they wait for."""
    switch = failing_sync(case_folding_dir.parent)
    ex = make_executor(data_dir=case_folding_dir.parent)
    switch.fail(writes_too=True)
    with pytest.raises(DiskFull):
        ex.submit([sh("echo a > made-by-a")], task_id="Lib-1")
    assert ex._db.get_task("Lib-1") is not None  # its deletion refused as well: the record stays
    assert _names(case_folding_dir) == ["Lib-1"]  # and so does its name
    for task_id in ("Lib-1", "LIB-1"):
        with pytest.raises(DiskFull):
            ex.submit([sh("true")], task_id=task_id)
    with pytest.raises(NotFound):  # it was never stored (not a task that has not ended, 409)
        ex.delete("Lib-1")
    switch.heal()
    assert wait_until(lambda: ex.check_health() == "ok", timeout=30)
    assert ex._db.get_task("Lib-1") is None and _names(case_folding_dir) == []
    assert ex.submit([sh("echo b > made-by-b")], task_id="LIB-1") == "LIB-1"
    assert ex.wait("LIB-1", 30).task.state == State.STOPPED
    assert _names(case_folding_dir / "LIB-1") == [".osreapi", "made-by-b"]
