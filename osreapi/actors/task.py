"""TaskActor: drives one task's TaskState, asks the pool for workers, saves what changes; then the next task.

The task's records have one owner (this actor, through its TaskState); workers report events
(started, ended), never records, so a late report cannot overwrite a newer state.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pykka

from ..errors import ActionRejected, NotStored
from ..executor import process
from ..records import StepRecord, TaskRecord
from ..spec import StepSpec
from ..vocabulary import State
from .base import EngineActor
from .delivery import tell_if_alive
from .messages import (
    ControlTask,
    CreateRefused,
    CreateTask,
    Enqueue,
    InterruptTask,
    PauseRefused,
    RunDropped,
    RunnerStopped,
    RunStep,
    SaveRecords,
    SignalStep,
    StartNotRecorded,
    StartTask,
    StepEnded,
    StepStarted,
    StopStep,
    TaskAdmitted,
    TaskDropped,
    TaskEnded,
    WorkerGranted,
)
from .reply import Reply
from .services import Services
from .taskstate import TaskState

log = logging.getLogger(__name__)
_runs = itertools.count(1)  # unique run numbers across the engine


class TaskActor(EngineActor):
    """Runs one task at a time; the supervisor hands it the next one after TaskEnded (a thread
    started per task cost more than the task's own bookkeeping)."""

    def __init__(self, services: Services, supervisor: pykka.ActorRef) -> None:
        super().__init__()
        self._services = services
        self._supervisor = supervisor
        self._state: TaskState | None = None
        self._create: CreateTask | None = None  # a made-id task's create, sent with its first save

    def _load(self, task: TaskRecord, steps: tuple[StepRecord, ...], specs: tuple[StepSpec, ...],
              create: CreateTask | None) -> None:
        self._create = create  # not stored yet: it goes with the first save, whatever happens next
        self._specs = specs
        self._requested: set[int] = set()  # asked the pool for a worker, not granted yet
        self._workers: dict[int, tuple[pykka.ActorRef, int]] = {}  # active step -> (worker, run)
        self._ended = False  # TaskEnded sent: nothing more comes for this task
        self._leave_queued = False  # the server stops before the task began: it stays queued
        self._starting: list[tuple[pykka.ActorRef, RunStep]] = []  # sent with the next save
        try:
            self._state = TaskState(task, list(steps), specs)
        except Exception:
            self._state = TaskState(task, list(steps), (), plan=False)  # so on_failure ends this task
            raise
        self._workspace = self._services.config.workspace(task.id)
        self._prepared = False  # its workspace made: after the first save (see _prepare)
        self._state.skip_blocked()

    def on_receive(self, message: Any) -> Any:
        """A failure while handling a message interrupts the task, and this runner goes on: the
        messages already on their way (a worker granted, a step's end) are still handled."""
        try:
            return self._receive(message)
        except Exception as exc:
            if self._state is None or self._ended:
                raise  # no task to end: pykka logs it and stops this runner (on_failure)
            log.exception("task %s failed inside the engine; marking it interrupted", self._state.task.id)
            reply = getattr(message, "reply", None)
            if reply is not None:  # a control request is answered with the failure, not left to time out
                reply.fail(exc)
            self._fail(exc)
            return None

    def _receive(self, message: Any) -> Any:
        if isinstance(message, WorkerGranted) and (self._state is None or message.task_id != self._state.task.id):
            self._services.pool.release(message.worker)  # for a task that has ended here
            return None
        if isinstance(message, CreateRefused):
            self._create_refused(message.task_id)
            return None
        if isinstance(message, PauseRefused):
            self._pause_refused(message)
            return None
        if self._state is None and not isinstance(message, (StartTask, ControlTask)):
            return None  # about a task that has ended here (a pid-save timer, an interrupt racing the end)
        match message:
            case StartTask(task=task, steps=steps, specs=specs, create=create):
                self._load(task, steps, specs, create)
            case ControlTask(task_id=task_id, reply=reply) if self._state is None or task_id != self._state.task.id:
                reply.fail(ActionRejected("task_gone", action=message.action))  # queued for a task that ended here
                return None
            case WorkerGranted(index=index, worker=worker):  # for this task (checked above)
                self._worker_granted(index, worker)
            case StartNotRecorded(index=index, worker=worker):
                why = "its start could not be recorded" if worker.is_alive() else "its worker failed inside the engine"
                self._start_dropped(index, worker, f"step not started: {why}")
            case StepStarted(run=run, index=index) | StepEnded(run=run, index=index) if not self._is_current(index, run):
                return None  # about a run that ended here (a late pid report, say)
            case StepStarted(index=index, pid=pid):
                self._state.step_started(index, pid, process.create_time(pid))
            case StepEnded(index=index, state=state, code=code, output=output, end=end, pid=pid):
                self._workers.pop(index, None)
                self._state.step_ended(index, state, code, output, end, pid)
            case ControlTask(action=action, index=index, reply=reply):
                self._control(action, index, reply)
            case InterruptTask():
                if self._ended:
                    return None
                self._interrupt()
            case _:
                log.warning("task: unexpected message %r", message)
        self._advance()
        if isinstance(message, StartTask):  # its first steps have asked the pool (or started)
            tell_if_alive(self._supervisor, TaskAdmitted(message.task.id))
        return None

    def on_failure(self, exception_type: Any = None, exception_value: Any = None, traceback: Any = None) -> None:
        """This runner stops (a failure while ending a task after a failure): its task, if any, is
        interrupted as far as it still can be."""
        task_id = None if self._state is None or self._ended else self._state.task.id
        try:
            if task_id is None:
                log.error("an idle task runner failed inside the engine")
                return
            log.error("task %s failed inside the engine twice; marking it interrupted", task_id)
            self._fail(exception_value, stopping=False)  # no step's end will reach this runner now
        finally:  # even if that failed too: the supervisor frees the slot and ends what is left
            self._refuse_unsent_create(exception_value)
            self._tell_stopped(task_id)
            super().on_failure(exception_type, exception_value, traceback)

    def _refuse_unsent_create(self, exc: BaseException | None) -> None:
        """The create that was to go with the first save never reached the store: nothing of the
        task is stored, and its submitter hears why now (not when its wait times out)."""
        create, self._create = self._create, None
        if create is not None:
            create.reply.fail(NotStored(f"task not stored: its runner failed ({type(exc).__name__}: {exc})"))

    def _tell_stopped(self, task_id: str | None) -> None:
        """RunnerStopped reaches the supervisor through the store, behind this runner's own saves:
        it ends the task from what the store holds, which must include them (a step's end, a start)."""
        stopped = ((self._supervisor, RunnerStopped(task_id)),)
        through_store = SaveRecords(task_id, durable=True, then=stopped, otherwise=stopped) if task_id else None
        if through_store is None or not tell_if_alive(self._services.store, through_store):
            tell_if_alive(self._supervisor, stopped[0][1])

    def _unhandled(self, message: Any) -> None:
        """A worker granted to this stopped runner goes back to the pool (it would stay taken); a
        task not stored yet, whose create was to go with this runner's first save, is refused
        (its submitter waits for that answer); a stored one, never begun here, is queued again
        (it was live here for ever, pending, its slot taken). Its slot here is free either way."""
        super()._unhandled(message)
        if isinstance(message, (WorkerGranted, StartNotRecorded)):
            self._services.pool.release(message.worker)
        elif isinstance(message, StartTask):
            task_id = message.task.id
            if message.create is not None:
                message.create.reply.fail(NotStored(f"the task's runner stopped before storing it: {task_id}"))
            tell_if_alive(self._supervisor, TaskEnded(task_id))
            if message.create is None:
                tell_if_alive(self._supervisor, Enqueue(task_id, (message.task, message.steps, message.specs)))

    def _fail(self, exc: BaseException | None, stopping: bool = True) -> None:
        """Interrupt the task, saying why; workers granted but not yet here are waited for (and
        given back), and steps whose processes run (a live worker will report their ends) are
        stopped and waited for, before the task ends: a task never ends before its processes, and
        no step's end reaches the runner's next task."""
        self._requested.difference_update(self._services.pool.cancel(self))
        reason = f"task interrupted: the engine failed ({type(exc).__name__}: {exc})"
        starting, self._starting = self._starting, []
        for worker, job in starting:  # not sent yet: these never start
            self._start_dropped(job.record.index, worker, reason)
        running = [i for i, (worker, _) in self._workers.items() if worker.is_alive()]
        self._state.interrupt(self._services.clock(), reason, running if stopping else ())
        # Every one is stopped (a stop the failure cut short is sent again); a runner that stops
        # (not `stopping`) will not hear their ends, but their trees are killed all the same.
        self._stop_steps(running, reason)
        self._advance()

    def _create_refused(self, task_id: str) -> None:
        """The create that went with this runner's first save of `task_id` was not stored: the
        task is dropped, unless it has ended here (failed at its start, say); either way the store
        hears that no save of it comes any more (it refuses them until then)."""
        if self._state is not None and task_id == self._state.task.id and not self._ended:
            self._drop()
        tell_if_alive(self._services.store, TaskDropped(task_id))  # after every save of it

    def _drop(self) -> None:
        """The task's create was not stored (its submitter heard why): nothing of it is written,
        none of its steps starts, and the workers it was granted go back to the pool."""
        self._requested.difference_update(self._services.pool.cancel(self))  # grants on their way come back
        for worker, run in self._workers.values():
            tell_if_alive(worker, RunDropped(run))  # its start was in the refused save
            self._services.pool.release(worker)
        self._workers.clear()
        if self._prepared:  # nothing ran in it: no directory is left for a task that is not
            process.remove_empty_workspace(self._workspace)
        self._end()

    def _start_dropped(self, index: int, worker: pykka.ActorRef, reason: str) -> None:
        """A step that was to start on `worker` does not: the worker answers what was asked of
        that run and goes back to the pool; the step ends interrupted with `reason`."""
        _, run = self._workers.pop(index, (None, 0))
        tell_if_alive(worker, RunDropped(run))  # before it serves anyone else
        self._services.pool.release(worker)
        self._state.step_lost(index, self._services.clock(), reason)

    # -- the one loop after every message -------------------------------------------------

    def _advance(self) -> None:
        """Request workers for what may run, save what changed, end the task when all is done."""
        if self._state is None or self._ended:
            return
        if self._leave_queued:
            if not self._requested:  # no worker is on its way to us any more
                self._end()
            return
        runnable = self._state.runnable()
        for index in runnable:
            if index not in self._requested:
                self._request(index)
        for index in self._requested.difference(runnable):  # paused, killed or skipped meanwhile
            if self._services.pool.cancel_key(self, index):
                self._requested.discard(index)  # else its grant is on the way and is given back
        if self._state.done and not self._requested:
            self._state.finish(self._services.clock(), self._services.config.key_expire)
            self._save(durable=True)
            self._end()
            return
        self._save()
        self._prepare()

    def _prepare(self) -> None:
        """Make the workspace once, after the first save was told: while the store flushes the
        first steps' starts (their processes wait for that flush), not before it. A step whose
        start comes first makes it itself (process.write_file)."""
        if not self._prepared:
            self._prepared = True
            try:
                process.prepare_workspace(self._workspace)
            except OSError:  # (its root read-only, or a file): each step's start tries again and ends saying why
                pass

    def _end(self) -> None:
        self._ended = True
        tell_if_alive(self._supervisor, TaskEnded(self._state.task.id))
        self._state, self._specs = None, ()  # an idle runner keeps nothing of the task (outputs included)

    def _interrupt(self) -> None:
        """The server is stopping: a task that never started stays queued for the next start,
        unless it is already ending (killed, or failed inside the engine): that one ends now."""
        if self._state.task.begin is None and not self._state.active and self._state.ending is None:
            self._requested.difference_update(self._services.pool.cancel(self))
            self._leave_queued = True  # grants already on their way are given back first
            return
        self._stop_steps(self._state.end_all(self._state.ending or State.INTERRUPTED))  # a kill stays a kill

    def _is_current(self, index: int, run: int) -> bool:
        return self._workers.get(index, (None, 0))[1] == run

    def _request(self, index: int) -> None:
        ref, task_id = self.actor_ref, self._state.task.id
        worker = self._services.pool.request(
            self, index, lambda w: ref.tell(WorkerGranted(task_id, index, w)), order=(self._state.task.accepted, index)
        )
        if worker is None:
            self._requested.add(index)
        else:
            self._start_step(index, worker)

    def _worker_granted(self, index: int, worker: pykka.ActorRef) -> None:
        self._requested.discard(index)
        if self._leave_queued or index not in self._state.runnable():  # paused, killed or ended meanwhile
            self._services.pool.release(worker)
            return
        self._start_step(index, worker)

    def _start_step(self, index: int, worker: pykka.ActorRef) -> None:
        try:
            record = self._state.step_starting(index, self._services.clock())
        except Exception:
            self._services.pool.release(worker)  # in hand and not yet the step's: given back
            raise
        run = next(_runs)
        self._workers[index] = (worker, run)
        job = RunStep(run, self.actor_ref, self._state.task.id, self._workspace, record, self._specs[index])
        self._starting.append((worker, job))

    def _save(self, durable: bool = False, reply: Reply | None = None) -> None:
        """Save what changed. Steps about to start go in the same transaction, flushed: a start is
        on disk before its process exists (after a crash it is interrupted, never run again)."""
        task, steps = self._state.take_changes()
        starting, self._starting = tuple(self._starting), []
        create, self._create = self._create, None
        if task is None and not steps and not starting and create is None:
            if reply is not None:
                reply.arrive()
            return
        if create is not None:  # written first, in the same transaction: nothing is if it is not
            refused: tuple = ((self.actor_ref, CreateRefused(create.task.id)),)
        else:
            refused = tuple((self.actor_ref, StartNotRecorded(job.record.index, worker)) for worker, job in starting)
        durable = durable or task is not None or bool(starting) or create is not None
        self._services.store.tell(
            SaveRecords(self._state.task.id, task, steps, durable, reply, starting, refused, create)
        )

    # -- control ---------------------------------------------------------------------------

    def _control(self, action: str, index: int | None, reply: Reply) -> None:
        try:
            targets = self._state.control(action, index, self._services.clock())
        except ActionRejected as exc:
            reply.fail(exc)
            return
        if action == "kill":
            self._stop_steps(targets)
        else:
            self._signal_steps(targets, action == "pause", reply, alone=index is not None)
        reply.expect()  # the store's part: the change is on disk
        self._save(durable=True, reply=reply)
        reply.arrive()  # ours

    def _pause_refused(self, message: PauseRefused) -> None:
        """A pause of one step whose process had exited: refused behind that step's end, which
        this runner has handled (and told the store) before, as a pause of an ended step is."""
        ours = self._state is not None and message.task_id == self._state.task.id
        step = self._state.steps[message.index] if ours else None
        if step is not None and step.state.finished:
            message.reply.fail(ActionRejected("step_ended", index=message.index, state=step.state, action="pause"))
        else:
            message.reply.fail(ActionRejected("step_exited", index=message.index, action="pause"))

    def _signal_steps(self, indices: list[int], pause: bool, reply: Reply, alone: bool = False) -> None:
        for index in indices:
            worker, run = self._workers.get(index, (None, 0))
            if worker is not None:
                reply.expect()
                signal = SignalStep(run, pause, reply, index, alone, self.actor_ref, self._state.task.id)
                if not tell_if_alive(worker, signal):
                    reply.arrive()

    def _stop_steps(self, indices: list[int], reason: str | None = None) -> None:
        for index in indices:
            worker, run = self._workers.get(index, (None, 0))
            if worker is not None:
                tell_if_alive(worker, StopStep(run, self._state.stopping.get(index, State.KILLED), reason))
