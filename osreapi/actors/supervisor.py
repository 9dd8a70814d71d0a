"""SupervisorActor: keeps waiting tasks as data and runs a bounded number of TaskActors.

No single failure stops it: a task that cannot be started or controlled ends interrupted with the
reason, and the rest goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pykka

from ..errors import ActionRejected, EngineClosed
from ..records import StepRecord, TaskRecord
from ..spec import StepSpec
from .base import EngineActor
from .delivery import tell_if_alive
from .messages import (
    ControlTask,
    CreateTask,
    Enqueue,
    GetStats,
    InterruptAll,
    InterruptStored,
    InterruptTask,
    RunnerStopped,
    SaveRecords,
    StartTask,
    Submit,
    TaskAdmitted,
    TaskEnded,
)
from .services import Services
from .task import TaskActor
from .taskstate import TaskState

log = logging.getLogger(__name__)
KEEP_RECORDS_OF = 1000  # queued tasks whose records are kept in memory (the rest are read back)
KEEP_SCRIPT_BYTES = 16 * 1024  # ... when their scripts are this small: 16 MB at most
Records = tuple[TaskRecord, tuple[StepRecord, ...], tuple[StepSpec, ...]]


class SupervisorActor(EngineActor):
    def __init__(self, services: Services) -> None:
        super().__init__()
        self._services = services
        # Task ids in arrival order (a waiting task costs no thread), with the records it was stored
        # with while few wait (no read back at its start); only the supervisor changes them meanwhile.
        self._queued: dict[str, Records | None] = {}
        self._held: dict[str, None] = {}  # queued tasks paused before they started
        self._controlled: dict[str, TaskState] = {}  # queued tasks changed here; the store may lag
        self._live: dict[str, pykka.ActorRef] = {}
        self._idle: list[pykka.ActorRef] = []  # TaskActors between tasks (at most max_live_tasks)
        # The task started last, until its runner has asked for its first workers: the next one
        # waits for that, so that a quicker runner never takes a free worker before an older task.
        self._admitting: str | None = None
        self._stopping: threading.Event | None = None

    def on_receive(self, message: Any) -> Any:
        """A failure while handling one message is that message's answer (its reply fails with
        it), never the supervisor's end: queued tasks still start and later requests are served."""
        try:
            answer = self._handle(message)
        except Exception as exc:
            log.exception("supervisor: handling %s failed; going on", type(message).__name__)
            reply = getattr(message, "reply", None)
            if reply is not None:
                reply.fail(exc)
            answer = None
        self._start_more()
        if self._stopping is not None and not self._live:
            self._stopping.set()
        return answer

    def _handle(self, message: Any) -> Any:
        match message:
            case GetStats():
                return len(self._live), len(self._queued) + len(self._held)
            case Submit(create=create):
                self._submit(create)
            case Enqueue(task_id=task_id, records=records):
                self._queued[task_id] = records if self._keep(records) else None
            case TaskAdmitted(task_id=task_id):
                self._admitted(task_id)
            case TaskEnded(task_id=task_id):
                self._admitted(task_id)  # a runner that failed at the start ends its task instead
                ref = self._live.pop(task_id, None)
                if ref is not None:  # a request queued to it for this task is refused in order there
                    self._idle.append(ref)
            case RunnerStopped(task_id=task_id):
                self._runner_stopped(task_id)
            case ControlTask(task_id=task_id):
                self._control(message)
            case InterruptAll(done=done):
                self._stopping = done
                self._services.pool.close()  # before the interrupts: no step starts from now on
                for ref in self._live.values():
                    tell_if_alive(ref, InterruptTask())
            case _:
                log.warning("supervisor: unexpected message %r", message)
        return None

    def _runner_stopped(self, task_id: str | None) -> None:
        """A runner stopped without ending its task (it told TaskEnded first otherwise): its slot
        is free, and the store ends the task interrupted from the records it holds, its steps'
        processes killed first (found by their run markers)."""
        if task_id is None or self._live.pop(task_id, None) is None:
            return
        self._admitted(task_id)
        janitor, grace = self._services.janitor, self._services.config.kill_grace
        self._interrupt_stored(task_id, "task interrupted: its runner failed inside the engine",
                               kill_run=lambda run_id: janitor.clean(run_id, None, grace))

    def _admitted(self, task_id: str) -> None:
        if self._admitting == task_id:
            self._admitting = None

    def _admitting_now(self) -> bool:
        """A task started last has not asked for its workers yet (a runner that died never will)."""
        runner = self._live.get(self._admitting) if self._admitting is not None else None
        if runner is None or not runner.is_alive():
            self._admitting = None
        return self._admitting is not None

    def _start_more(self) -> None:
        limit = self._services.config.max_live_tasks
        while self._queued and len(self._live) < limit and self._stopping is None and not self._admitting_now():
            task_id = next(iter(self._queued))
            try:
                self._start(task_id)
            except Exception as exc:  # e.g. a thread that cannot start, a record that cannot be read
                log.exception("task %s cannot be started", task_id)
                self._interrupt_stored(task_id, f"task not started: {exc.__class__.__name__}: {exc}")

    def _submit(self, create: CreateTask) -> None:
        """A new task with an id the engine made. Started at once when nothing waits before it
        and a runner is free: its runner writes the create with its first starts. Else the store
        writes it, and it is queued once on disk (a task queued before it is stored could start
        before, and run although its submitter is told it was refused)."""
        task_id = create.task.id
        if not self._queued and len(self._live) < self._services.config.max_live_tasks and self._stopping is None \
                and not self._admitting_now():
            ref = self._free_runner()
            if ref is not None and tell_if_alive(ref, StartTask(create.task, create.steps, create.specs, create)):
                self._live[task_id] = ref
                self._admitting = task_id
                return
        enqueue = (self.actor_ref, Enqueue(task_id, (create.task, create.steps, create.specs)))
        if not tell_if_alive(self._services.store, replace(create, then=(*create.then, enqueue))):
            create.reply.fail(EngineClosed("the engine is shut down"))

    def _keep(self, records: Records | None) -> bool:
        """Keep a queued task's records in memory while few wait and its scripts are small."""
        if records is None or len(self._queued) >= KEEP_RECORDS_OF:
            return False
        return sum(len(spec.content) for spec in records[2]) <= KEEP_SCRIPT_BYTES

    def _start(self, task_id: str) -> None:
        records = self._queued.pop(task_id)
        state = self._controlled.pop(task_id, None) or self._queued_state(task_id, records)
        if state is None or state.task.state.finished:  # deleted or ended meanwhile
            return
        if state.paused:  # held before it started: it waits for a resume
            self._held[task_id] = None
            self._controlled[task_id] = state
            return
        ref = self._task_runner()
        ref.tell(StartTask(state.task, tuple(state.steps), state.specs))
        self._live[task_id] = ref  # after the tell: a runner that died meanwhile takes no slot
        self._admitting = task_id

    def _free_runner(self) -> pykka.ActorRef | None:
        """A runner for a task not yet stored; None if none can be had (a thread that cannot
        start): the task is then stored and queued, and its start fails as a queued task's does
        (interrupted, saying why), not its submit."""
        try:
            return self._task_runner()
        except Exception:
            log.exception("no task runner for a new task: it is stored and queued")
            return None

    def _task_runner(self) -> pykka.ActorRef:
        while self._idle:
            ref = self._idle.pop()
            if ref.is_alive():  # one that failed has stopped
                return ref
        return TaskActor.start(self._services, self.actor_ref)

    def on_stop(self) -> None:
        for ref in (*self._idle, *self._live.values()):
            try:
                ref.stop(timeout=self._services.config.call_timeout)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass
        super().on_stop()

    def _control(self, message: ControlTask) -> None:
        """Hand the request to the live TaskActor, or apply it to the stored, queued task."""
        live = self._live.get(message.task_id)
        if live is not None:
            if not tell_if_alive(live, message):
                message.reply.fail(ActionRejected("task_gone", action=message.action))
            return
        task_id = message.task_id
        if task_id not in self._queued and task_id not in self._held:
            message.reply.fail(ActionRejected("task_not_here"))
            return
        try:
            state = self._controlled.get(task_id) or self._queued_state(task_id, self._queued.get(task_id))
            if state is None:
                raise ActionRejected("task_not_here")
            state.control(message.action, message.index, self._services.clock())
        except ActionRejected as exc:
            message.reply.fail(exc)
            return
        state.skip_blocked()
        self._controlled[task_id] = state
        if state.done:
            state.finish(self._services.clock(), self._services.config.key_expire)
            self._queued.pop(task_id, None)
            self._held.pop(task_id, None)
            del self._controlled[task_id]
        elif state.paused and task_id in self._queued:
            del self._queued[task_id]
            self._held[task_id] = None
        elif not state.paused and task_id in self._held:
            del self._held[task_id]
            self._queued = {task_id: None, **self._queued}  # it was accepted before most of the queue
        self._save(state, message.reply)

    def _queued_state(self, task_id: str, records: Records | None) -> TaskState | None:
        """A queued task's state: from the records kept with it, else read from the store."""
        return TaskState(*records) if records else self._stored_state(task_id)

    def _stored_state(self, task_id: str) -> TaskState | None:
        db = self._services.db
        task = db.get_task(task_id)
        return TaskState(task, db.get_steps(task_id), db.get_specs(task_id)) if task is not None else None

    def _interrupt_stored(self, task_id: str, reason: str, kill_run: Callable[[str], None] | None = None) -> None:
        """End a stored task as interrupted, saying why. The store builds the records: only it
        knows the newest (a full disk keeps some in memory, and LMDB then holds stale ones)."""
        tell_if_alive(self._services.store, InterruptStored(task_id, reason, kill_run))

    def _save(self, state: TaskState, reply=None) -> None:
        task, steps = state.take_changes()
        if reply is not None:
            reply.expect()
        self._services.store.tell(SaveRecords(state.task.id, task, steps, durable=True, reply=reply))
        if reply is not None:
            reply.arrive()
