"""Fault hunt 14: crash windows and races in the store's workspace removal, interrupted records,
the case-folding claim and recovery."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import lmdb
import pytest

from osreapi.errors import CaseConflict, out_of_descriptors
from osreapi.vocabulary import State

from .conftest import no_descriptor_free, sh, wait_until
from .test_front12 import case_folding_dir  # noqa: F401 - a fixture
from .test_storage import FakeClock


class StoreGate:
    """Holds the store's thread (a listener of the executor, called there) once `hold()` is armed
    and the next committed write arrives, so that calls made meanwhile queue in its mailbox in a
    known order; `release()` lets it go."""

    def __init__(self, executor) -> None:
        self._executor = executor
        self._armed = threading.Event()
        self._holding = threading.Event()
        self._go = threading.Event()
        executor.subscribe(self._listener)

    def _listener(self, _task_id, _task, _steps) -> None:
        if self._armed.is_set():
            self._armed.clear()
            self._holding.set()
            self._go.wait(30)

    def hold(self, pool: ThreadPoolExecutor) -> Future:
        """Arm the gate and make a write that trips it; wait until the store is held."""
        self._armed.set()
        tripped = pool.submit(self._executor.submit, [sh("true")])
        assert self._holding.wait(30), "the store was never held"
        return tripped

    def queue_behind(self, pool: ThreadPoolExecutor, call: Callable, *args, **kwargs) -> Future:
        """Run call in a thread; return once its message waits in the store's mailbox."""
        inbox = self._executor._store.actor_inbox
        before = inbox.qsize()
        done = pool.submit(call, *args, **kwargs)
        assert wait_until(lambda: inbox.qsize() > before or done.done(), timeout=30) and not done.done(), done
        return done

    def release(self) -> None:
        self._go.set()


@pytest.mark.parametrize("removal", ["delete", "sweep"])
def test_an_id_posted_again_while_its_task_is_removed_keeps_its_name(case_folding_dir, make_executor, removal):  # noqa: F811
    """On a root that folds case, a submission of an id whose task is stored made no claim (the
    workspace was that task's): a DELETE or a sweep handled by the store between that check and
    the create removed the workspace and the record, the id was stored anew without a workspace,
    and an id equal to it under case folding was accepted into the same directory (two tasks, one
    workspace). The create of a task takes its workspace name in the store, where removals are
    ordered with it."""
    clock = FakeClock()
    ex = make_executor(data_dir=case_folding_dir.parent, key_expire="1h", clock=clock, sweep_interval=3600,
                       pool_size=1)
    body = [sh("echo mine > made-by-lib")]
    ex.submit(body, task_id="Lib-1")
    assert ex.wait("Lib-1", 30).task.state == State.STOPPED
    if removal == "sweep":
        clock.now += 3601  # expired: the sweep removes it, a submission of its id replaces it
    ex.submit([sh("sleep 30")], task_id="runner")  # the pool's one slot: the id posted again waits
    gate = StoreGate(ex)
    with ThreadPoolExecutor(4) as pool:
        tripped = gate.hold(pool)
        removed = gate.queue_behind(pool, ex.delete if removal == "delete" else ex.sweep, *(("Lib-1",) if removal == "delete" else ()))
        posted = gate.queue_behind(pool, ex.submit, body, task_id="Lib-1")
        gate.release()
        tripped.result(30), removed.result(30)
        assert posted.result(30) == "Lib-1"
    with pytest.raises(CaseConflict) as refused:
        ex.submit([sh("echo other > made-by-other")], task_id="LIB-1")
    assert refused.value.existing == "Lib-1"
    assert ex.get("LIB-1") is None
    assert [path.name for path in case_folding_dir.iterdir() if path.name.lower() == "lib-1"] == ["Lib-1"]


def test_a_claim_short_of_descriptors_is_answered_as_such_not_as_a_full_disk(case_folding_dir, make_executor):  # noqa: F811
    """The store takes the workspace's name: an error of the claim (here the listing of the root on
    a clash, with no descriptor free) is the caller's answer as it is (503 over HTTP), not a write
    refused (DiskFull, health "disk full" until the store's retry)."""
    ex = make_executor(data_dir=case_folding_dir.parent)
    ex.submit([sh("true")], task_id="Lib-1")
    assert ex.wait("Lib-1", 30).task.state == State.STOPPED
    with no_descriptor_free(), pytest.raises(OSError) as refused:
        ex.submit([sh("true")], task_id="LIB-1")
    assert out_of_descriptors(refused.value), refused.value
    assert ex.check_health() == "ok"
    with pytest.raises(CaseConflict):  # with descriptors again, the clash is told
        ex.submit([sh("true")], task_id="LIB-1")
    assert ex.submit([sh("true")], task_id="Lib-2") == "Lib-2"
    assert ex.wait("Lib-2", 30).task.state == State.STOPPED


# -- kill -9 between a workspace's removal and its record's commit ---------------------------------

MANY_FILES = "for d in $(seq 100); do mkdir d$d && (cd d$d && touch $(seq 300)); done"


def _killed_while_removing(server, trash: Path, task_id: str, start: Callable[[], object]) -> bool:
    """Start a removal of the task's workspace (100 directories d1..d100 in it) by the server,
    freeze the server (SIGSTOP) once some are gone from the tree it moved into the trash, and kill
    it (SIGKILL). True if it was frozen in the window: some of the directories gone, some left."""
    def left() -> int | None:
        try:
            moved = [entry for entry in os.listdir(trash) if entry.startswith(f"{task_id}.")]
            return sum(1 for entry in moved for name in os.listdir(trash / entry) if name.startswith("d"))
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(start)
        wait_until(lambda: (left() or 100) < 100, timeout=30, interval=0.0005)
        server.proc.send_signal(signal.SIGSTOP)
        in_window = 0 < (left() or 0) < 100
        server.kill()
        with contextlib.suppress(OSError, http.client.HTTPException):
            started.result(30)  # the connection dies with the server
    return in_window


def _gone(client, task_id: str) -> bool:
    return client.get(f"/{task_id}").status == 404


@pytest.mark.parametrize("removal", ["delete", "repost"])
def test_a_server_killed_while_a_workspace_is_removed_finishes_the_removal_after_its_restart(start_server, tmp_path, removal):
    """A DELETE, or an expired id posted again, moves the workspace into the trash and its tree is
    removed there while the record's change is written. Killed (-9) while the tree is half
    removed: after a restart the trash is emptied, the record is as it was or as it was to be (the
    change's commit may have come before the kill), a DELETE or the id posted again finishes the
    work, and no old file is in the new task's workspace. (Before the trash, the store removed the
    files itself: the same kill left the record as it was, and the next try finished.)"""
    data, trash = tmp_path / "data", tmp_path / "data" / "trash"
    hit = False
    for attempt in range(3):  # the window is short: frozen in it at the first try, nearly always
        task_id = f"many-{attempt}"
        server = start_server("--key_expire", "2s" if removal == "repost" else "1h", data_dir=data)
        client = server.client
        assert client.post(f"/?id={task_id}", [sh(MANY_FILES)]).status == 200
        assert client.wait(task_id, 60).json["code"] == 0
        if removal == "repost":  # expired once its 2 s are over: GET says 404
            assert wait_until(partial(_gone, client, task_id), timeout=30)
            start = partial(client.post, f"/?id={task_id}", [sh("ls")])
        else:
            start = partial(client.request, "DELETE", f"/{task_id}")
        hit = _killed_while_removing(server, trash, task_id, start)
        server.close()
        if hit:
            break
    if not hit:
        pytest.skip("the server was never frozen while it removed the workspace")
    client = start_server("--key_expire", "1h", data_dir=data).client
    assert wait_until(lambda: list(trash.iterdir()) == [], timeout=30)  # what the kill left, removed
    if removal == "repost":
        answer = client.post(f"/?id={task_id}", [sh("ls")])  # stored now, or before the kill (the same)
        assert answer.status == 200, answer.body
        done = client.wait(task_id, 60)  # run, or interrupted by the kill: at most once
        assert done.json["code"] in (0, 1002), done.body
        if done.json["code"] == 0:
            assert done.json["data"][0]["message"] == "", done.body  # no old file left
        assert [name for name in os.listdir(data / "workspace" / task_id) if name.startswith("d")] == []
    else:
        assert client.request("DELETE", f"/{task_id}").status in (200, 404)  # 404: deleted before the kill
        assert client.get(f"/{task_id}").status == 404
        assert not (data / "workspace" / task_id).exists()


def test_a_record_left_by_a_crash_in_a_delete_keeps_its_workspace_name(start_server, case_folding_dir):  # noqa: F811
    """A DELETE removed the whole workspace, then the record: killed (-9) between the two (here
    while LMDB's write lock, held by the test, holds the record's deletion), the finished record
    stayed without its directory, and on a root that folds case an id equal to it was accepted
    into a directory of that name; the next DELETE of the first (or its expiry's sweep) then
    removed the second's workspace. The directory now goes after the record."""
    data = case_folding_dir.parent
    server = start_server(data_dir=data)
    client = server.client
    assert client.post("/?id=Lib-1", [sh("echo mine > made-by-lib")]).status == 200
    assert client.wait("Lib-1", 30).json["code"] == 0
    env = lmdb.open(str(data / "db"), max_dbs=8, subdir=True)
    try:
        with env.begin(write=True), ThreadPoolExecutor(1) as pool:  # the server's writes wait for it
            deleting = pool.submit(client.request, "DELETE", "/Lib-1")
            assert wait_until(lambda: not (case_folding_dir / "Lib-1" / "made-by-lib").exists(), timeout=30)
            server.kill()  # its deletion of the record waits for the write lock
            with contextlib.suppress(OSError, http.client.HTTPException):
                deleting.result(30)
    finally:
        env.close()
    client = start_server(data_dir=data).client
    kept = client.get("/Lib-1")  # the record as it was
    assert kept.status == 200 and kept.json["code"] == 0, kept.body
    refused = client.post("/?id=LIB-1&lang=en", [sh("true")])
    assert refused.status == 409 and "task Lib-1" in refused.json["message"], refused.body
    assert client.request("DELETE", "/Lib-1").status == 200
    assert [path.name for path in case_folding_dir.iterdir()] == []


def _outcome(future: Future) -> str:
    error = future.exception(30)  # the answer the caller hears
    return "done" if error is None else type(error).__name__


@pytest.mark.parametrize(("first", "second", "outcomes"), [
    ("delete", "delete", ["done", "NotFound"]),
    ("sweep", "delete", ["done", "NotFound"]),
    ("delete", "sweep", ["done", "done"]),  # the sweep finds "one" gone
    ("repost", "repost-other", ["done", "TaskConflict"]),
    ("repost", "sweep", ["done", "done"]),  # the new task is not expired: not swept
])
def test_removals_and_reposts_queued_together_each_get_an_answer(make_executor, first, second, outcomes):
    """Two removals, or two re-posts, of one id queued in the store's mailbox together (held by a
    listener until both wait): each caller hears an answer, the store goes on, and nothing is
    left without its record or removed under a task. (Held.)"""
    clock = FakeClock()
    ex = make_executor(key_expire="1h", clock=clock, sweep_interval=3600)
    ex.submit([sh("echo old > made-by-old")], task_id="one")
    assert ex.wait("one", 30).task.state == State.STOPPED
    calls = {"delete": partial(ex.delete, "one"), "sweep": ex.sweep,
             "repost": partial(ex.submit, [sh("ls")], task_id="one"),
             "repost-other": partial(ex.submit, [sh("pwd")], task_id="one")}
    gate = StoreGate(ex)
    with ThreadPoolExecutor(4) as pool:
        tripped = gate.hold(pool)
        queued = [gate.queue_behind(pool, calls[first]), gate.queue_behind(pool, calls[second])]
        if "sweep" in (first, second) or "repost" in first:
            clock.now += 3601  # expired when the store handles them (a delete got past its check)
        gate.release()
        tripped.result(30)
        assert [_outcome(future) for future in queued] == outcomes
    workspaces = {path.name for path in ex.config.workspace_root.iterdir()}
    tasks = {task.id for task in ex._db.list_tasks()}
    assert workspaces <= tasks, (workspaces, tasks)  # no workspace left without its record
    if "repost" in first:
        assert ex.wait("one", 30).steps[0].output.strip() == ""  # the new task, among no old file
    else:
        assert "one" not in tasks
    assert ex.wait(ex.submit([sh("echo alive")]), 30).task.state == State.STOPPED  # the store goes on


@pytest.mark.parametrize("removal", ["delete", "sweep", "repost"])
@pytest.mark.parametrize("target", ["outside", "another task"])
def test_a_workspace_a_step_replaced_with_a_link_is_removed_not_what_it_points_to(make_executor, tmp_path, removal, target):
    """A step that put a symbolic link in its workspace's place: config.workspace() refuses a link
    that leads out of the root (ValueError), and every DELETE of the task failed, every sweep
    stopped at it for good (no later expired task swept), its id could not be posted again. One
    that leads to another task's workspace was followed by the emptying of an expired one
    replaced (and of a deleted or swept one, whose directory now goes after its record): the
    other task's files were deleted. The link itself is removed, never followed."""
    clock = FakeClock()
    ex = make_executor(key_expire="1h", clock=clock, sweep_interval=3600)
    if target == "outside":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
    else:
        ex.submit([sh("sleep 30")], task_id="other")  # running while "linked" is removed
        elsewhere = ex.config.workspace("other")
        assert wait_until(elsewhere.exists)
    (elsewhere / "precious").write_text("not the task's\n")
    ex.submit([sh(f'here=$(pwd) && cd / && rm -rf "$here" && ln -s {elsewhere} "$here"')], task_id="linked")
    assert ex.wait("linked", 30).task.state == State.STOPPED
    assert ex.config.workspace_root.joinpath("linked").is_symlink()
    if removal == "delete":
        ex.delete("linked")
    else:
        clock.now += 3601
        if removal == "sweep":
            assert ex.sweep() == 1
        else:
            ex.submit([sh("true")], task_id="linked")
            assert ex.wait("linked", 30).task.state == State.STOPPED
    assert (elsewhere / "precious").read_text() == "not the task's\n"
    assert not ex.config.workspace_root.joinpath("linked").is_symlink()


def test_a_running_task_whose_step_replaced_its_workspace_with_a_link_out_is_still_read(client, tmp_path):
    """The reads of a running step's output went through the check that refuses a workspace leading
    out of the data dir (for what the engine writes there): GET /<id>, the step and its log all
    answered 500 while the task ran. A read goes where the step's own link leads, as the step's
    own output could: here nowhere, so the output so far is empty; the kill still works."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    task_id = client.submit([sh(f'cd .. && mv "$OSREAPI_TASK_ID" "gone-$$" && ln -s {elsewhere} "$OSREAPI_TASK_ID" '
                                "&& exec sleep 30")])
    linked = client.executor.config.workspace_root / task_id
    assert wait_until(linked.is_symlink, timeout=10)
    for path in (f"/{task_id}", f"/{task_id}/0", f"/{task_id}/0/log"):
        answer = client.get(path)
        assert answer.status == 200, (path, answer.body)
    assert client.get(f"/{task_id}").json["data"][0]["message"] == ""  # its output so far: none here
    assert client.request("PUT", f"/{task_id}?action=kill").status == 200
