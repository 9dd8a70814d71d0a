"""Fault hunt of the engine's changes of the day: a task whose id the engine made started as it is
stored, the stream hub woken per task, logs opened without waiting, the workspace made after the
first save. Each test reproduces a fault found, and asserts what the OS and the store say."""

from __future__ import annotations

import errno
import threading

import pytest

from osreapi.actors.messages import SaveRecords
from osreapi.errors import DiskFull, EngineFailed

from .conftest import sh, wait_until
from .test_mend16 import failing_sync  # noqa: F401 - a fixture


def saves_waiting_for(ex, task_id: str) -> bool:
    """Whether the store's mailbox holds a save of the task's runner after its first one."""
    queued = list(ex._store.actor_inbox.queue)
    return any(isinstance(e.message, SaveRecords) and e.message.task_id == task_id and e.message.create is None
               for e in queued)


@pytest.mark.timeout(60)
def test_a_refused_create_runs_none_of_the_steps_its_runner_started_meanwhile(make_executor, tmp_path):
    """A made-id task of two parallel steps, one worker free: its first save (the create with the
    first start) waits in the store while the other worker is freed and granted, so the runner's
    second save (the second start) is queued behind it. The create is refused (its write: a big
    script on a disk nearly full). The second save must not be written or delivered: no record of
    the task, no process, no worker held. Before, that start was written (a step record of a task
    that does not exist) and its step ran on a worker already given back to the pool."""
    ex = make_executor(pool_size=2)
    blocker = ex.submit([sh("while [ ! -e go ]; do sleep 0.02; done")])  # holds one worker
    assert wait_until(lambda: ex.get(blocker).steps[0].state.value == "running")
    create, refused = ex._db.create_task, []

    def refusing(task, steps, specs, now, **kw):
        if task.count != 2:
            return create(task, steps, specs, now, **kw)
        refused.append(task.id)
        (ex.config.workspace(blocker) / "go").touch()  # its worker goes back to the pool: to this task
        assert wait_until(lambda: saves_waiting_for(ex, task.id), timeout=20)
        raise OSError(errno.ENOSPC, "no space left on device")

    ex._db.create_task = refusing
    ran = [tmp_path / "ran0", tmp_path / "ran1"]
    with pytest.raises(DiskFull):
        ex.submit([sh(f"touch {ran[0]}", name="a"), sh(f"touch {ran[1]}", name="b")], mode="parallel")
    ex._db.create_task = create
    assert ex.wait(blocker, 20).task.state.value == "stopped"
    after = ex.submit([sh("echo next")] * 2, mode="parallel")  # both workers: none runs a dropped step
    assert [s.output for s in ex.wait(after, 20).steps] == ["next\n", "next\n"]
    assert wait_until(lambda: ex.stats()["tasks_live"] == 0 and ex.stats()["pool_busy"] == 0)
    assert not any(path.exists() for path in ran)
    assert ex._db.get_task_and_steps(refused[0]) == (None, [])
    assert not ex.config.workspace(refused[0]).exists()
    assert sorted(task.id for task in ex.list()) == sorted([blocker, after])


def fail_runnable(monkeypatch, name: str, times: int) -> None:
    """Inject a fault where the runner of a task whose first step is `name` asks what may run
    (its first _advance), `times` times."""
    from osreapi.actors.taskstate import TaskState

    runnable, left = TaskState.runnable, [times]

    def failing(self):
        if self.steps and self.steps[0].name == name and left[0] > 0:
            left[0] -= 1
            raise RuntimeError("injected fault")
        return runnable(self)

    monkeypatch.setattr(TaskState, "runnable", failing)


@pytest.mark.timeout(60)
def test_a_made_id_task_whose_runner_fails_at_its_first_advance_is_stored_interrupted(make_executor, monkeypatch):
    """One fault in the first _advance of a made-id task: the runner interrupts the task, and
    its create goes with that save: the submitter has the id of a task interrupted, saying why."""
    fail_runnable(monkeypatch, "faulty", 1)
    ex = make_executor()
    task_id = ex.submit([sh("true", name="faulty")])
    result = ex.wait(task_id, 20)
    assert result.task.state.value == "interrupted" and "injected fault" in result.steps[0].output
    assert ex.wait(ex.submit([sh("echo next")]), 20).steps[0].output == "next\n"


@pytest.mark.timeout(60)
def test_a_made_id_task_whose_runner_stops_before_its_first_save_answers_the_submitter(make_executor, monkeypatch):
    """The fault again while the runner ends the task (a runner that fails twice stops): its
    create, which was to go with the first save, never reached the store. The submitter hears
    that the engine failed, at once, not the timeout of a create nobody holds; nothing is kept."""
    fail_runnable(monkeypatch, "faulty", 3)
    ex = make_executor(call_timeout=20)
    with pytest.raises(EngineFailed):
        ex.submit([sh("true", name="faulty")])
    assert wait_until(lambda: ex.stats()["tasks_live"] == 0 and ex.stats()["pool_busy"] == 0)
    after = ex.submit([sh("echo next")])
    assert ex.wait(after, 20).steps[0].output == "next\n"
    assert [task.id for task in ex.list()] == [after]


@pytest.mark.timeout(60)
def test_a_refused_create_of_a_task_ended_at_its_start_leaves_its_id_free(make_executor, monkeypatch):
    """A made-id task whose runner fails at its first _advance ends there (interrupted), its
    create in that one save; the create is refused (its write). Its runner, idle by then, still
    tells the store it sends nothing more of that task: the id is free again, and a task posted
    later with that id runs. Before, the store refused every save of that id for good (its
    steps ended interrupted: 'its start could not be recorded')."""
    fail_runnable(monkeypatch, "faulty", 1)
    ex = make_executor()
    create, refused = ex._db.create_task, []

    def refusing(task, steps, specs, now, **kw):
        if refused or steps[0].name != "faulty":
            return create(task, steps, specs, now, **kw)
        refused.append(task.id)
        raise OSError(errno.ENOSPC, "no space left on device")

    ex._db.create_task = refusing
    with pytest.raises(DiskFull):
        ex.submit([sh("true", name="faulty")])
    assert wait_until(lambda: ex.check_health() == "ok", timeout=30)
    assert ex.get(refused[0]) is None
    ex.submit([sh("echo again")], task_id=refused[0])
    assert ex.wait(refused[0], 20).steps[0].output == "again\n"


@pytest.mark.timeout(120)
def test_close_while_made_id_submits_stream_in_keeps_every_acknowledged_one(make_executor, tmp_path):
    """8 threads submit (ids made by the engine) while close() runs; then the engine reopens.
    Every submit that returned an id runs then (or ended interrupted, had it begun before the
    close); every one that raised left nothing: the tasks stored are exactly those returned."""
    data = tmp_path / "data"
    ex = make_executor(data, pool_size=4)
    returned: list[str] = []
    raised: list[BaseException] = []
    lock, started = threading.Lock(), threading.Event()

    def submitter() -> None:
        for _ in range(25):
            try:
                task_id = ex.submit([sh("sleep 0.05; echo ran")])
            except Exception as exc:  # noqa: BLE001 - what a closing engine answers, looked at below
                with lock:
                    raised.append(exc)
                return
            with lock:
                returned.append(task_id)
            started.set()

    threads = [threading.Thread(target=submitter) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert started.wait(20)
    assert wait_until(lambda: len(returned) >= 20, timeout=20)
    ex.close()
    for thread in threads:
        thread.join(30)
    assert {type(exc).__name__ for exc in raised} <= {"EngineClosed"}
    again = make_executor(data, pool_size=4)
    results = {task_id: again.wait(task_id, 60) for task_id in returned}
    states = {task_id: r.task.state.value for task_id, r in results.items()}
    assert set(states.values()) <= {"stopped", "interrupted"}, states
    assert all(r.steps[0].output == "ran\n" for r in results.values() if r.task.state.value == "stopped")
    assert sorted(task.id for task in again.list()) == sorted(returned)


def stream_submits(ex, threads: int, each: int, steps: list[dict], stop: threading.Event):
    """`threads` threads submit made-id tasks of `steps` (parallel), `each` at most, until `stop`;
    returns (the thread list, ids returned, errors raised)."""
    returned: list[str] = []
    raised: list[BaseException] = []
    lock = threading.Lock()

    def submitter() -> None:
        for _ in range(each):
            if stop.is_set():
                return
            try:
                task_id = ex.submit(steps, mode="parallel")
            except Exception as exc:  # noqa: BLE001 - what a refusing engine answers, looked at by the caller
                with lock:
                    raised.append(exc)
                continue
            with lock:
                returned.append(task_id)

    started = [threading.Thread(target=submitter) for _ in range(threads)]
    for thread in started:
        thread.start()
    return started, returned, raised


def assert_exactly_acknowledged_kept(ex, returned: list[str], marks) -> None:
    """Once the disk takes writes again: every task whose id was returned ends; those refused
    ran no step (each step leaves a file named by its task's id in `marks`) and left neither a
    record nor a workspace."""
    assert wait_until(lambda: ex.check_health() == "ok", timeout=30)
    for task_id in returned:
        result = ex.wait(task_id, 60)
        assert result is not None and result.task.state.finished, task_id
    assert wait_until(lambda: ex.stats()["tasks_live"] == 0 and ex.stats()["pool_busy"] == 0, timeout=30)
    ran = {path.name.rsplit("-", 1)[0] for path in marks.iterdir()}
    assert ran <= set(returned)
    assert sorted(task.id for task in ex.list()) == sorted(returned)
    assert sorted(path.name for path in ex.config.workspace("x").parent.iterdir()) == sorted(returned)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("writes_too", [False, True])
def test_a_failing_flush_amid_a_stream_of_made_id_submits_keeps_exactly_those_acknowledged(
        failing_sync, make_executor, tmp_path, writes_too):
    """4 threads submit two-step parallel tasks (pool of 3: starts wait for workers) while the
    flush (and the writes) fail, then heal. Every id returned runs both its steps; every submit refused ran
    nothing (each step leaves a file named by its task's id) and left no record."""
    switch = failing_sync(tmp_path / "data")
    ex = make_executor(tmp_path / "data", pool_size=3)
    marks = tmp_path / "marks"
    marks.mkdir()
    step = sh(f'touch "{marks}/$OSREAPI_TASK_ID-$OSREAPI_STEP_NAME"; sleep 0.02')
    stop = threading.Event()
    threads, returned, raised = stream_submits(ex, 4, 40, [dict(step, name="a"), dict(step, name="b")], stop)
    assert wait_until(lambda: len(returned) >= 10, timeout=30)
    switch.fail(writes_too)
    assert wait_until(lambda: len(raised) >= 10, timeout=30)
    switch.heal()
    stop.set()
    for thread in threads:
        thread.join(60)
    assert {type(exc).__name__ for exc in raised} == {"DiskFull"}
    assert_exactly_acknowledged_kept(ex, returned, marks)


@pytest.mark.timeout(120)
def test_with_no_tick_every_stream_learns_at_its_tasks_changes(make_executor, tmp_path):
    """The hub's periodic look an hour apart: only the wakes sent at each committed change move
    the streams. A made-id task (started as it is stored): a wait on it is answered at its end, a
    follower of its step ends with the step, a feed of it and a feed of every task get its end
    and its delete; a sweep of two tasks (one wake for both) reaches the feed of every task."""
    import http.client
    import time

    from osreapi.http.app import HttpSettings, make_app
    from osreapi.http.server import HttpServer

    from .conftest import Client
    from .test_events import Feed, is_task_state
    from .test_wait import answer_in_thread

    now = [time.time()]
    ex = make_executor(key_expire="10s", clock=lambda: now[0])
    app = make_app(ex, HttpSettings(), stream_tick=3600.0)
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    try:
        client = Client(server.url)
        every = Feed(client, "/events?lang=zh")
        gate = tmp_path / "gate"
        task_id = client.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.01; done; echo two")])
        one = Feed(client, f"/events?task={task_id}", {"Last-Event-ID": "0"})
        follow = http.client.HTTPConnection(client.host, client.port, timeout=30)
        follow.request("GET", f"/{task_id}/0/log?follow=true")
        followed = follow.getresponse()
        waiting, got = answer_in_thread(client, f"/{task_id}?wait=60s&lang=en")
        assert wait_until(lambda: app.hub.count == 4, 10)
        gate.touch()
        waiting.join(30)
        assert got and got[0].json["code"] == 0
        assert followed.read() == b"two\n"  # to its end: the step's
        one.until(is_task_state(task_id, "已结束"))
        every.until(is_task_state(task_id, "已结束"))
        others = [client.submit([sh("true")]) for _ in range(2)]
        for other in others:
            client.wait(other)
        assert client.request("DELETE", f"/{task_id}").status == 200
        assert one.until(lambda e: e["event"] == "delete")["data"] == {"id": task_id}
        assert every.until(lambda e: e["event"] == "delete")["data"] == {"id": task_id}
        now[0] += 60
        assert ex.sweep() == 2
        swept = {every.until(lambda e: e["event"] == "delete")["data"]["id"] for _ in range(2)}
        assert swept == set(others)
        for feed in (one, every):
            feed.close()
        follow.close()
    finally:
        server.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("named", [True, False])
def test_a_workspace_that_cannot_be_made_ends_its_task_and_the_engine_goes_on(make_executor, monkeypatch, named):
    """A file where the task's workspace goes (put there by another task's step, say): the
    runner makes the workspace after its first save was told, with its first start in it. The
    task ends, saying why; its step never runs; the workers come back; the next task runs."""
    import uuid

    ex = make_executor(pool_size=2)
    task_id = "in-the-way" if named else "5f0c6c3e-0000-4000-8000-00000000f11e"
    ex.config.workspace(task_id).parent.mkdir(parents=True, exist_ok=True)
    ex.config.workspace(task_id).write_text("a file, not a directory")
    if not named:
        monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(task_id))
    got = ex.submit([sh("echo ran > ../ran", name="a"), sh("true", name="b")], mode="parallel",
                    task_id=task_id if named else None)
    monkeypatch.undo()
    assert got == task_id
    result = ex.wait(task_id, 20)
    assert result.task.state.value == "stopped", result
    # Its runner's try at the workspace fails quietly; each step's start fails at its script, saying why.
    assert all(step.code == 127 and "cannot start step" in step.output and "Not a directory" in step.output
               for step in result.steps), result
    assert not (ex.config.workspace(task_id).parent / "ran").exists()
    assert wait_until(lambda: ex.stats()["tasks_live"] == 0 and ex.stats()["pool_busy"] == 0)
    assert ex.wait(ex.submit([sh("echo next")]), 20).steps[0].output == "next\n"


@pytest.mark.timeout(120)
def test_a_disk_filling_amid_a_stream_of_made_id_submits_keeps_exactly_those_acknowledged(
        make_executor, small_disk, tmp_path):
    """4 threads submit two-step parallel tasks with big scripts until the small disk is full
    (the creates then need pages there are none of), then room is made. Every id returned ends,
    every refused submit ran nothing and left neither record nor workspace."""
    import subprocess

    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=8"], capture_output=True, check=True)
    ex = make_executor(small_disk / "data", pool_size=3)
    marks = tmp_path / "marks"
    marks.mkdir()
    step = sh(f'touch "{marks}/$OSREAPI_TASK_ID-$OSREAPI_STEP_NAME" # ' + "x" * 300_000)
    stop = threading.Event()
    threads, returned, raised = stream_submits(ex, 4, 40, [dict(step, name="a"), dict(step, name="b")], stop)
    assert wait_until(lambda: len(raised) >= 8 or not any(t.is_alive() for t in threads), timeout=60)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert raised and {type(exc).__name__ for exc in raised} == {"DiskFull"}
    filler.unlink()
    assert_exactly_acknowledged_kept(ex, returned, marks)


@pytest.mark.timeout(60)
def test_a_made_id_task_whose_runner_fails_loading_it_is_stored_interrupted(make_executor, monkeypatch):
    """The runner fails as it loads a made-id task (its plan cannot be made): the task is still
    stored, with its create, as interrupted saying why; the submitter has its id at once."""
    from osreapi.actors.taskstate import TaskState

    init = TaskState.__init__

    def failing(self, task, steps, specs, plan=True):
        if plan and steps and steps[0].name == "faulty":
            raise RuntimeError("injected fault")
        init(self, task, steps, specs, plan=plan)

    monkeypatch.setattr(TaskState, "__init__", failing)
    ex = make_executor(call_timeout=20)
    task_id = ex.submit([sh("touch ran", name="faulty")])
    result = ex.wait(task_id, 20)
    assert result.task.state.value == "interrupted" and "injected fault" in result.steps[0].output
    assert not (ex.config.workspace(task_id) / "ran").exists()
    assert ex.wait(ex.submit([sh("echo next")]), 20).steps[0].output == "next\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra_live_tasks", [0, 2, 16])
def test_made_id_tasks_waiting_for_the_one_worker_run_in_the_order_they_were_accepted(
        make_executor, tmp_path, extra_live_tasks):
    """One worker, held by a long step: made-id tasks submitted meanwhile find no worker (those
    that a runner takes at once, as many as the live limit lets, wait in the pool; the others are
    queued once stored). They run one by one in the order they were accepted."""
    ex = make_executor(pool_size=1, extra_live_tasks=extra_live_tasks)
    ledger = tmp_path / "ledger"
    blocker = ex.submit([sh("while [ ! -e go ]; do sleep 0.02; done")])
    assert wait_until(lambda: ex.get(blocker).steps[0].state.value == "running")
    ids = [ex.submit([sh(f"echo {n} >> {ledger}")]) for n in range(6)]
    (ex.config.workspace(blocker) / "go").touch()
    for task_id in ids:
        assert ex.wait(task_id, 20).task.state.value == "stopped"
    assert ledger.read_text().split() == [str(n) for n in range(6)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool_size", [1, 3])
def test_controls_and_delete_right_after_a_made_id_submit_act_on_the_task(make_executor, pool_size):
    """Right after a made-id submit returns (its runner has it, its first start may still be on
    its way to the worker, or it waits for the one worker): a pause then resume, a kill, a delete
    of the killed task. Each is answered (never a timeout), the kill kills, the delete deletes,
    and the engine goes on."""
    from osreapi.errors import OsreapiError

    ex = make_executor(pool_size=pool_size, call_timeout=20)
    blocker = ex.submit([sh("while [ ! -e go ]; do sleep 0.02; done")])
    for attempt in range(10):
        task_id = ex.submit([sh("sleep 30", name="s"), sh("true", name="t")])
        if attempt % 2:
            ex.pause(task_id)
            ex.resume(task_id)
        ex.kill(task_id)
        result = ex.wait(task_id, 20)
        assert result.task.state.value == "killed", result
        try:
            ex.delete(task_id)
        except OsreapiError as exc:  # only a task still ending may refuse
            raise AssertionError(f"delete of an ended task refused: {exc!r}") from None
        assert ex.get(task_id) is None
    (ex.config.workspace(blocker) / "go").touch()
    assert ex.wait(blocker, 20).task.state.value == "stopped"
    assert wait_until(lambda: ex.stats()["tasks_live"] == 0 and ex.stats()["pool_busy"] == 0)
    assert ex.wait(ex.submit([sh("echo next")]), 20).steps[0].output == "next\n"
