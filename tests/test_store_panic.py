"""A write of LMDB's meta page that fails puts its environment in a fatal state (MDB_PANIC): every
later transaction is refused until the environment is opened again. The engine refused every
submit (and every read) until a restart; the store now opens it again and goes on."""

from __future__ import annotations

import lmdb
import pytest

from osreapi.errors import DiskFull, StoreUnavailable
from osreapi.storage.database import Database
from osreapi.vocabulary import State

from .conftest import sh, wait_until
from .test_mend16 import failing_sync  # noqa: F401 - a fixture


@pytest.mark.timeout(90)
def test_the_store_goes_on_after_a_failed_write_of_a_meta_page(failing_sync, make_executor, tmp_path):
    switch = failing_sync(tmp_path / "data")
    ex = make_executor(call_timeout=20)
    before = ex.submit([sh("echo before")])
    assert ex.wait(before, 30).steps[0].output == "before\n"
    switch.fail_meta()
    with pytest.raises(DiskFull):  # its commit's meta page is refused: LMDB's fatal state from now on
        ex.submit([sh("true")])
    switch.heal()

    def submitted() -> str | None:
        try:
            return ex.submit([sh("echo after")])
        except DiskFull:
            return None

    after: list[str | None] = []
    assert wait_until(lambda: after.append(submitted()) or after[-1] is not None, timeout=30, interval=0.2)
    assert ex.wait(after[-1], 30).steps[0].output == "after\n"
    assert wait_until(lambda: ex.check_health() == "ok", timeout=30)
    assert ex.get(before).task.state is State.STOPPED  # what was committed before is all there


@pytest.mark.timeout(90)
def test_reads_go_on_right_after_a_failed_write_of_a_meta_page(failing_sync, tmp_path, monkeypatch):
    """The failed commit is the write's answer; the environment is opened again at once, so
    reads go on (they raised LMDB's PanicError until the store's retry). Where it cannot be
    opened again yet, a read is the store being unavailable for a moment (EngineBusy: an HTTP
    503), not LMDB's own error (a 500); the next write opens it."""
    switch = failing_sync(tmp_path / "data")
    db = Database(tmp_path / "data" / "db")
    try:
        switch.fail_meta()
        with pytest.raises(lmdb.Error):  # its meta page refused: the fatal state
            db.probe()
        assert db.get_task("t1") is None and db.list_tasks() == []
        with monkeypatch.context() as patch:
            patch.setattr(lmdb, "open", lambda *a, **k: (_ for _ in ()).throw(lmdb.Error("refused")))
            with pytest.raises(lmdb.Error):
                db.probe()
            with pytest.raises(StoreUnavailable):
                db.get_task("t1")
        switch.heal()
        db.probe()
        assert db.get_task("t1") is None
    finally:
        switch.heal()
        db.close()


@pytest.mark.timeout(90)
def test_a_read_right_after_the_fatal_error_is_never_a_500(failing_sync, make_server, tmp_path):
    """The store opens LMDB again at once, not at its next retry of refused writes (a second
    later): reads right after a refused submit answer (or, in the moment before, a 503 with
    Retry-After), never a 500."""
    switch = failing_sync(tmp_path / "data")
    client = make_server(call_timeout=20)
    before = client.submit([sh("echo before")])
    assert wait_until(lambda: client.get(f"/{before}").json["code"] == 0, timeout=30)
    switch.fail_meta()
    assert client.post("/", [sh("true")]).status == 507
    # Reads that reach the database: a listing, an unknown id, a step's log (an ended task's
    # answer is kept in memory).
    reads = [client.get(path) for path in ("/", "/nosuch", f"/{before}/0/log")]
    switch.heal()
    assert all(r.status in (200, 404, 503) for r in reads), [(r.status, r.body[:120]) for r in reads]
    assert all("Retry-After" in r.headers for r in reads if r.status == 503)
    assert wait_until(lambda: client.get("/nosuch").status == 404, timeout=10)


class _NoDatabases:
    """An environment opened again whose named databases cannot be opened (EMFILE, say)."""

    def __init__(self, env) -> None:
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)

    def open_db(self, *args, **kwargs):
        raise lmdb.Error("no database handle")


@pytest.mark.timeout(90)
def test_a_reopen_that_fails_halfway_leaves_reads_a_503_not_stale_handles(failing_sync, tmp_path, monkeypatch):
    """The environment opened again but its databases not: reads began on the new environment
    with the old one's handles, and failed inside the transaction (a 500)."""
    switch = failing_sync(tmp_path / "data")
    db = Database(tmp_path / "data" / "db")
    opened = lmdb.open
    try:
        switch.fail_meta()
        with monkeypatch.context() as patch:
            patch.setattr(lmdb, "open", lambda *a, **k: _NoDatabases(opened(*a, **k)))
            with pytest.raises(lmdb.Error):  # the fatal state, and a reopen that fails halfway
                db.probe()
            with pytest.raises(StoreUnavailable):
                db.get_task("t1")
        switch.heal()
        db.probe()  # opened again, whole
        assert db.get_task("t1") is None
    finally:
        switch.heal()
        db.close()
