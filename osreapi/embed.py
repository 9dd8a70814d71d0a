"""Executor: the engine in-process — actors, store and pool — for Python tools and the HTTP layer."""

from __future__ import annotations

import atexit
import codecs
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pykka

from . import casefold, recovery, spec
from .actors.delivery import tell_if_alive
from .actors.messages import (
    ControlTask,
    CreateTask,
    DeleteTask,
    Enqueue,
    Flush,
    GetStats,
    InterruptAll,
    Ping,
    SaveRecords,
    ScheduledSweep,
    Submit,
    SweepExpired,
)
from .actors.pool import WorkerPool
from .actors.reply import Reply
from .actors.services import Services
from .actors.step import StepActor
from .actors.store import StoreActor
from .actors.supervisor import SupervisorActor
from .actors.taskstate import ACTIONS
from .actors.timers import Scheduler
from .config import EngineConfig
from .controls import ControlCalls
from .errors import (
    ActionRejected,
    CalledFromListener,
    EngineBusy,
    EngineClosed,
    EngineFailed,
    InvalidRequest,
    NotFound,
    StepNotFound,
    TaskActive,
)
from .executor import process
from .executor.descriptors import fitted_pool_size
from .executor.durations import parse_duration
from .executor.janitor import Janitor
from .executor.logsource import LogSource
from .executor.output import read_output
from .executor.reaper import Reaper
from .listing import sorted_tasks
from .metrics import EngineMetrics
from .plaintext import ASCII_DIGITS
from .records import StepRecord, TaskRecord
from .storage.database import Database
from .storage.discard import Discarder
from .storage.lock import lock_data_dir, still_held
from .vocabulary import State
from .watchers import TaskWatchers

log = logging.getLogger(__name__)
MAX_OFFSET = 1 << 62  # of a log; fits os.lseek
DISCARD_STOP = 5.0  # seconds a close waits for the tree being removed (the rest goes after the next start)
Listener = Callable[[str, TaskRecord | None, tuple[StepRecord, ...]], None]


@dataclass(frozen=True)
class TaskResult:
    task: TaskRecord
    steps: tuple[StepRecord, ...]

    @property
    def finished(self) -> bool:
        return self.task.state.finished


@dataclass(frozen=True)
class Submitted:
    id: str
    count: int
    created: bool  # False when the id existed already and nothing new runs


def _decoded(source: Any, idle: float = 0.05) -> Iterator[str]:
    """A LogSource's bytes as text, characters never split between chunks (bad bytes replaced)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        while True:
            data, done = source.read()
            if done:  # what comes with the end is the cap notice for HTTP readers
                break
            if data:
                if text := decoder.decode(data):
                    yield text
            else:
                time.sleep(idle)
        if tail := decoder.decode(b"", final=True):
            yield tail
    finally:
        source.close()


def check_offset(offset: int) -> None:
    """A log offset a caller gave: a whole number of bytes, as the HTTP route reads it from a query."""
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidRequest("bad_offset", name="offset", value=str(offset), limit=MAX_OFFSET)


def default_data_dir() -> Path:
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "osreapi"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "osreapi"


def _seconds(value: float | str) -> float:
    return parse_duration(value) if isinstance(value, str) else float(value)


class Executor(ControlCalls):
    """Run step lists in-process. Use as a context manager, or call close()."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        pool_size: int = 30,
        exec_timeout: float | str = "24h",
        key_expire: float | str = "48h",
        max_output: int = 1 << 20,
        max_log: int = 64 << 20,
        kill_grace: float = 2.0,
        sweep_interval: float = 30.0,
        call_timeout: float | str = "30s",
        extra_live_tasks: int = 16,
        limits: spec.Limits = spec.Limits(),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """clock: wall time (records, TTLs); monotonic: what step time limits are measured on
        (tests inject both, and poke() after moving `monotonic` forward). Kill graces are real time."""
        self.config = EngineConfig(
            data_dir=Path(data_dir or default_data_dir()).resolve(),
            pool_size=fitted_pool_size(pool_size),  # steps beyond what the descriptor limit allows wait
            exec_timeout=_seconds(exec_timeout),
            key_expire=_seconds(key_expire),
            max_output=max_output,
            max_log=max_log,
            kill_grace=kill_grace,
            sweep_interval=sweep_interval,
            call_timeout=_seconds(call_timeout),
            extra_live_tasks=extra_live_tasks,
        )
        self.clock = clock
        self.monotonic = monotonic
        self.limits = limits
        self._waiters = TaskWatchers()  # woken when their task ends (or the engine closes)
        self._listeners: list[Listener] = []
        self._listening = threading.local()  # set on the store's thread while it calls the listeners
        self._delete_listeners: list[Callable[[tuple[str, ...]], None]] = []
        self._closed = False
        self._closing = threading.RLock()  # held by the close() in progress (its own thread may call again)
        self._lock = lock_data_dir(self.config.data_dir)  # before anything in it is touched
        try:
            self._start_engine()
        except BaseException:
            if self._lock is not None:
                self._lock.close()
            raise
        self._close_at_exit = _closer(weakref.ref(self))  # a program that never calls close()
        atexit.register(self._close_at_exit)

    def _start_engine(self) -> None:
        config, clock = self.config, self.clock
        config.workspace_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        folds_case = casefold.folds_case(config.workspace_root)
        self._db = Database(config.data_dir / "db", relock=self._relock)
        self._scheduler = Scheduler(self.monotonic)  # deadlines and sweeps, on the engine's clock
        self._cleanup_timer = Scheduler()  # the janitor's rounds: real processes take real time
        self._disk_full = threading.Event()
        self._discarder = Discarder(config.data_dir)  # takes what a stop left in the trash
        self._store = StoreActor.start(
            self._db, config, clock, self._committed, self._deleted, self._scheduler.call_later, self._disk_full,
            self._discarder, folds_case=folds_case,
        )
        self._services = Services(
            config=config,
            db=self._db,
            store=self._store,
            pool=WorkerPool(config.pool_size, lambda: StepActor.start(self._services)),
            scheduler=self._scheduler,
            real_timer=self._cleanup_timer,
            clock=clock,
            metrics=EngineMetrics(),
            reaper=Reaper(clock),
            janitor=Janitor(self._cleanup_timer.call_later),
        )
        self.metrics = self._services.metrics
        self.metrics.add_gauges(self.stats, self._db.state_counts)
        ended, waiting = recovery.recover(self._db, config, clock(), folds_case)
        for task, steps in ended:
            self._store.ask(SaveRecords(task.id, task, steps, durable=True), timeout=config.call_timeout)
        self._supervisor = SupervisorActor.start(self._services)
        for task_id in waiting:
            self._supervisor.tell(Enqueue(task_id))
        self._schedule_sweep()

    def _relock(self) -> None:
        """Take the data dir's lock again before its database is written there anew (the data dir
        was removed, the lock file with it); raise if it cannot be (DataDirInUse: another server
        started there meanwhile). On the store's thread."""
        if self._lock is None or still_held(self._lock, self.config.data_dir):
            return
        fresh = lock_data_dir(self.config.data_dir)
        old, self._lock = self._lock, fresh
        old.close()

    # -- public API ---------------------------------------------------------------------

    def submit(
        self,
        steps: list[dict[str, Any]] | str | bytes,
        mode: str | None = None,
        task_id: str | None = None,
    ) -> str:
        """Validate and queue a task; return its id. mode: None or "sequential" (in order),
        "parallel", or "dag"; any step with depends_on makes it a DAG whatever the mode."""
        if mode not in (None, "sequential", "parallel", "dag"):
            raise InvalidRequest("bad_mode", value=mode)
        return self.submit_task(steps, parallel=mode in ("parallel", "dag"), task_id=task_id).id

    def submit_task(
        self, steps: list[dict[str, Any]] | str | bytes, *, parallel: bool = False, task_id: str | None = None
    ) -> Submitted:
        self._check_open()
        self._check_not_listening("submit")
        data = spec.parse_body(steps) if isinstance(steps, (str, bytes)) else steps
        data = list(data) if isinstance(data, tuple) else data  # a JSON array, as the Client sends it
        named = task_id is not None
        task_id = spec.validate_task_id(task_id) if named else str(uuid.uuid4())
        specs = spec.build_steps(task_id, data, self.limits)
        mode = spec.choose_mode(specs, parallel)
        task = TaskRecord(id=task_id, mode=mode.value, count=len(specs), accepted=self.clock())
        records = tuple(StepRecord(index=i, name=s.name) for i, s in enumerate(specs))
        create = CreateTask(task, records, specs, Reply())
        # An id made here: nobody can name the task before this answer, so the supervisor may start
        # it as it is stored, and queues it otherwise. A named one is stored first (it may be a
        # re-post, or race a delete of its id), then queued by the store, before this answer: a
        # control request naming it from another thread meanwhile finds it queued. (A close()
        # since the record was written leaves it queued on disk, to run after the next start.)
        if named:
            create = replace(create, then=((self._supervisor, Enqueue(task_id, (task, records, specs))),))
        existing = self._answer(self._store, create) if named else self._answer(self._supervisor, Submit(create))
        if existing is not None:  # submitted with this body (the store compared: TaskConflict if not)
            return Submitted(existing.id, existing.count, created=False)
        return Submitted(task_id, len(specs), created=True)

    def get(self, task_id: str) -> TaskResult | None:
        """The task and its steps, or None when unknown or expired. Running steps carry their output so far."""
        try:
            task, steps = self._load(task_id)
        except NotFound:
            return None
        return TaskResult(task, tuple(self._with_output(task_id, step) for step in steps))

    @property
    def deletions(self) -> int:
        """How many tasks have been deleted (by DELETE or expiry); a finished task's records never
        change otherwise, so a cache of them is valid while this count holds."""
        return self._db.deletions

    def step(self, task_id: str, step: str | int, output: bool = True) -> tuple[TaskRecord, StepRecord]:
        """One step by index or name (a running one with its output so far, unless output=False);
        raises NotFound."""
        task, steps = self._load(task_id)
        record = steps[self._step_index(steps, step)]
        return task, self._with_output(task_id, record) if output else record

    def _load(self, task_id: str) -> tuple[TaskRecord, list[StepRecord]]:
        """The stored records, as they are (no log read); NotFound when unknown or expired."""
        task, steps = self._db.get_task_and_steps(task_id)
        return self._live(task_id, task), steps

    def _live(self, task_id: str, task: TaskRecord | None) -> TaskRecord:
        """The task, unless it is unknown or expired (NotFound)."""
        if task is None or self._expired(task):
            raise NotFound(f"task {task_id!r} does not exist or has expired")
        return task

    def _with_output(self, task_id: str, step: StepRecord) -> StepRecord:
        if step.state is not State.RUNNING:
            return step
        log_file = process.log_path(self.config.workspace_entry(task_id), step.index)
        return replace(step, output=read_output(log_file, self.config.max_output))

    def task(self, task_id: str) -> TaskRecord | None:
        """The task's own record (no steps read), or None when unknown or expired."""
        task = self._db.get_task(task_id)
        return None if task is None or self._expired(task) else task

    def specs(self, task_id: str) -> tuple[spec.StepSpec, ...]:
        """What the task's steps were submitted as (empty when unknown)."""
        return self._db.get_specs(task_id)

    def log_path(self, task_id: str, index: int) -> Path:
        """Where a step's full output is written while it runs (kept until the record expires)."""
        return process.log_path(self.config.workspace_entry(task_id), index)

    def control(self, task_id: str, action: str, step: str | int | None = None) -> None:
        """kill / pause / resume a task, or one step (by index or name); returns once the processes
        are signalled and the change is on disk. Raises NotFound for an unknown task or step,
        ActionRejected when the action does not apply, DiskFull when it cannot be recorded,
        EngineFailed when the task's runner failed first (the task then ends interrupted)."""
        if not action:
            raise ActionRejected("no_action", actions=", ".join(ACTIONS))
        if action not in ACTIONS:
            raise ActionRejected("bad_action", value=action, actions=", ".join(ACTIONS))
        task, steps = self._load(task_id)
        index = None if step is None else self._step_index(steps, step)
        if task.state.finished:
            raise ActionRejected("task_ended", state=task.state, action=action)
        self._check_open()
        self._check_not_listening(action)
        try:
            self._answer(self._supervisor, ControlTask(task_id, action, index, Reply()))
        except ActionRejected as exc:  # expected: one line, no traceback
            log.info("%s of %s refused: ActionRejected: %s", action, task_id, exc)
            self._caught_up()
            raise

    def _caught_up(self) -> None:
        """Wait (bounded) until the store has committed what it was told before now: a refusal
        comes from a runner's memory ("step 0 has ended"), whose record of that end was told to the
        store first but may not be written yet; a read after the answer must see it."""
        try:
            self._ask(self._store, Flush())
        except (EngineClosed, EngineBusy):  # closing: the close flushes it
            pass

    def delete(self, task_id: str) -> None:
        """Remove a finished task's record and workspace. Raises NotFound for an unknown or expired
        task, TaskActive for one that has not finished."""
        self._check_open()
        self._check_not_listening("delete")
        self._live(task_id, self._db.get_task(task_id))  # an expired record is gone already for callers
        task = self._answer(self._store, DeleteTask(task_id, Reply()))
        if task is None:
            raise NotFound(f"task {task_id!r} does not exist or has expired")
        if not task.state.finished:
            raise TaskActive(task_id, task.state.value)

    @staticmethod
    def _step_index(steps: list[StepRecord] | tuple[StepRecord, ...], step: str | int) -> int:
        if isinstance(step, bool) or not isinstance(step, (int, str)):  # None, 1.5: no step, as over HTTP
            raise StepNotFound(step)
        if isinstance(step, int) or ASCII_DIGITS.fullmatch(step):
            index = int(step) if len(str(step)) <= 9 else -1  # longer: past any step, and int() stays cheap
            if 0 <= index < len(steps):
                return index
        elif step.isdigit():  # '²', '①': digits to str.isdigit(), never a step name (spec refuses those)
            raise InvalidRequest("bad_step_ref", ref=step)
        else:
            for record in steps:
                if record.name == step:
                    return record.index
        raise StepNotFound(step)

    def check_health(self) -> str:
        """"ok", or "disk full" while the store cannot write; raise EngineBusy / EngineClosed
        unless the supervisor and the store answer."""
        self._check_open()
        self._check_not_listening("check_health")
        self._ask(self._supervisor, GetStats())
        self._ask(self._store, Ping())  # not Flush: a health probe must not cost an fsync
        if not self._disk_full.is_set():
            return "ok"
        return "data dir lost" if self._db.lost else "disk full"

    def stats(self) -> dict[str, int]:
        """Gauges of the engine: pool, live task actors, queued tasks, store size, threads."""
        size, busy, waiting = self._services.pool.stats()
        live, queued = self._ask(self._supervisor, GetStats())
        return {
            "pool_size": size,
            "pool_busy": busy,
            "pool_waiting": waiting,
            "tasks_live": live,
            "tasks_queued": queued,
            "store_bytes": self._db.size_bytes(),
            "threads": threading.active_count(),
        }

    def list(self, sort: str | None = None) -> list[TaskRecord]:
        """Every task not expired; sort: None (store order) or "start", "end", "ttl" as GET /?sort=."""
        tasks = [task for task in self._db.list_tasks() if not self._expired(task)]
        return tasks if sort is None else sorted_tasks(tasks, sort)

    def logs(self, task_id: str, step: str | int, follow: bool = False, offset: int = 0) -> Iterator[str]:
        """A step's output from byte `offset` as text chunks; with follow, until the step ends.
        Raises NotFound at once for an unknown task or step, InvalidRequest for an offset that is
        not a whole number of bytes (lseek refused a negative one with OSError)."""
        check_offset(offset)
        index = self.step(task_id, step, output=False)[1].index

        def current(_read_since: float) -> StepRecord | None:  # read now: always since
            try:
                return self.step(task_id, index, output=False)[1]
            except NotFound:
                return None

        path = self.log_path(task_id, index)
        source = LogSource(path, offset, sse=False, follow=follow, step=current, end_record=lambda: None,
                           max_output=self.config.max_output)
        if offset > source.size():  # as the HTTP route answers 416
            raise InvalidRequest("offset_past_end", offset=offset, size=source.size())
        return _decoded(source)

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        """Block until the task has ended (or timeout); return its result, None if unknown.
        EngineClosed if the engine closes meanwhile (a task it leaves queued ends only after the next start)."""
        with self._waiters.watching(task_id) as ended:
            result = self.get(task_id)
            if result is None or result.finished:
                return result
            self._check_not_listening("wait")
            ended.wait(timeout if timeout is None or timeout < threading.TIMEOUT_MAX else None)  # inf: for ever
            return self.get(task_id)

    def poke(self) -> None:
        """An injected `monotonic` clock moved forward: look at the deadlines again now."""
        self._scheduler.poke()

    def subscribe(self, listener: Listener, on_delete: Callable[[tuple[str, ...]], None] | None = None) -> None:
        """Call listener(task_id, task or None, steps) after every committed write of a task's
        records (task is None when only steps changed), and on_delete(task_ids) after tasks were
        deleted or swept. Both run on the store's thread: be quick."""
        self._listeners.append(listener)
        if on_delete is not None:
            self._delete_listeners.append(on_delete)

    def sweep(self) -> int:
        """Remove expired records and workspaces now; return how many tasks went."""
        self._check_not_listening("sweep")
        return self._ask(self._store, SweepExpired())

    def close(self, timeout: float = 30.0) -> None:
        """Interrupt running tasks (their trees are killed), keep queued ones for the next start, flush.
        A close() while another is in progress returns when that one has finished (bounded by
        `timeout`): the program's exit (atexit) must not overtake a close on another thread."""
        self._check_not_listening("close")
        if not self._closing.acquire(timeout=timeout):
            log.error("shutdown: another close() still runs after %.0fs", timeout)
            return
        try:
            if not self._closed:
                self._closed = True
                self._shut_down(timeout)
                atexit.unregister(self._close_at_exit)  # last: an exit meanwhile waits for this close
        finally:
            self._closing.release()

    def _shut_down(self, timeout: float) -> None:
        done = threading.Event()
        try:
            self._supervisor.tell(InterruptAll(done))
            if not done.wait(timeout):
                log.error("shutdown: tasks still running after %.0fs", timeout)
            self._supervisor.stop(timeout=timeout)
            self._services.pool.stop_all(timeout)
            self._store.ask(Flush(), timeout=timeout)
            self._store.stop(timeout=timeout)
        except (pykka.ActorDeadError, pykka.Timeout):
            log.exception("shutdown: an actor did not stop in time")
        finally:
            self._finish_kills(timeout)
            self._scheduler.stop()
            self._cleanup_timer.stop()
            self._services.reaper.close()
            self._discarder.close(min(timeout, DISCARD_STOP))
            self._db.close()
            if self._lock is not None:
                self._lock.close()
            # A task the shutdown left queued never ends here: its waiters stop waiting now (and
            # their read of the closed engine raises EngineClosed).
            self._waiters.notify_all()

    def _finish_kills(self, timeout: float) -> None:
        """Let the janitor finish killing leftover processes (bounded) before its timer stops."""
        deadline = time.monotonic() + timeout
        while self._services.janitor.busy() and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _answer(self, ref: pykka.ActorRef, message: Any) -> Any:
        """Send a message that carries a Reply; wait (bounded) for what the reply gets."""
        if not tell_if_alive(ref, message):
            raise EngineClosed("the engine is shut down")
        try:
            return message.reply.get(timeout=self.config.call_timeout)
        except pykka.Timeout:
            raise self._not_answered() from None
        except pykka.ActorDeadError as exc:  # it stopped with the request in its mailbox
            raise EngineFailed(f"not applied: {exc}") from None

    def _ask(self, ref: pykka.ActorRef, message: Any) -> Any:
        try:
            return ref.ask(message, timeout=self.config.call_timeout)
        except pykka.ActorDeadError:
            raise EngineClosed("the engine is shut down") from None
        except pykka.Timeout:
            raise self._not_answered() from None

    def _not_answered(self) -> EngineBusy:
        return EngineBusy(f"the engine did not answer within {self.config.call_timeout:g}s")

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("the engine is shut down")

    def _expired(self, task: TaskRecord) -> bool:
        return task.expires is not None and task.expires <= self.clock()

    def _deleted(self, task_ids: tuple[str, ...]) -> None:
        self._tell(self._delete_listeners, "delete", task_ids)

    def _committed(self, task_id: str, task: TaskRecord | None, steps: tuple[StepRecord, ...]) -> None:
        """Called by the store after each committed write: wake waiters, tell subscribers."""
        if task is not None and task.end is not None:
            self._waiters.notify(task_id)
        self._tell(self._listeners, "record", task_id, task, steps)

    def _tell(self, listeners: list[Callable[..., None]], kind: str, *args: Any) -> None:
        """Call the subscribers on the store's thread, marked so that a call of theirs that waits for
        the store (close, submit, wait...) is refused instead of waiting for itself."""
        self._listening.active = True
        try:
            for listener in listeners:
                try:
                    listener(*args)
                except Exception:  # a subscriber's bug must not stop the store
                    log.exception("a %s listener failed", kind)
        finally:
            self._listening.active = False

    def _check_not_listening(self, call: str) -> None:
        if getattr(self._listening, "active", False):
            raise CalledFromListener(f"Executor.{call}() cannot run in a subscribe() listener: listeners run on "
                                     "the store's thread, which it would wait for; call it from another thread")

    def _schedule_sweep(self) -> None:
        def tick() -> None:
            if self._closed:
                return
            if tell_if_alive(self._store, ScheduledSweep()):
                self._schedule_sweep()

        self._scheduler.call_later(self.config.sweep_interval, tick)


def _closer(executor: Callable[[], Executor | None]) -> Callable[[], None]:
    """close() of the executor if it still exists (the atexit hook holds no strong reference), in
    this process only: a forked child inherits the hook but none of the engine's threads, and
    would wait for them in vain (a minute) and close the parent's LMDB environment."""
    owner = os.getpid()

    def close() -> None:
        live = executor()
        if live is not None and os.getpid() == owner:
            live.close()

    return close


__all__ = ["Executor", "TaskResult", "Submitted", "InvalidRequest", "default_data_dir"]
