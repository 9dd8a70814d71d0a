"""TaskActor: drives one task's steps in their mode, keeps its record, obeys control, then stops."""

from __future__ import annotations

import logging
from typing import Any

import pykka

from ..executor import dag, process
from ..records import StepRecord, TaskRecord, lowest_failure
from ..spec import StepSpec
from ..vocabulary import STEP_CODE_KILLED, STEP_CODE_UNFINISHED, State
from .control import check_step_action, check_task_action
from .delivery import tell_if_alive
from .messages import (
    Control,
    InterruptTask,
    PauseStep,
    ResumeStep,
    RunStep,
    SaveRecords,
    SlotGranted,
    StartTask,
    StepEnded,
    StepUpdated,
    StopStep,
    TaskEnded,
)
from .services import Services
from .step import StepActor

log = logging.getLogger(__name__)


class TaskActor(pykka.ThreadingActor):
    """Steps move pending -> (slot) -> running -> ended; a step is requested from the pool only
    when its dependencies succeeded and neither it nor the task is paused."""

    def __init__(
        self,
        services: Services,
        supervisor: pykka.ActorRef,
        task: TaskRecord,
        steps: list[StepRecord],
        specs: tuple[StepSpec, ...],
    ) -> None:
        super().__init__()
        self._services = services
        self._supervisor = supervisor
        self._task = task
        self._steps = steps
        self._specs = specs
        names = {spec.name: index for index, spec in enumerate(specs)}
        self._deps = dag.plan(task.mode, len(specs), [[names[d] for d in spec.depends_on] for spec in specs])
        self._dependents = dag.dependents(self._deps)
        self._requested: set[int] = set()  # asked the pool for a slot, grant not yet handled
        self._running: dict[int, pykka.ActorRef] = {}
        self._finished = sum(1 for step in steps if step.state.finished)
        self._paused = task.state is State.PAUSED
        self._stopping: State | None = None
        self._done = False  # stops once no granted slot is still on its way to us
        self._workspace = services.config.workspace(task.id)

    def on_receive(self, message: Any) -> Any:
        match message:
            case StartTask():
                self._start()
            case SlotGranted(index=index):
                self._slot_granted(index)
            case StepUpdated(record=record):
                self._update_step(record)
            case StepEnded(record=record):
                self._step_ended(record)
            case Control(action=action, index=None):
                self._control_task(action)
            case Control(action=action, index=index):
                self._control_step(action, index)
            case InterruptTask():
                self._stop_all(State.INTERRUPTED)
            case _:
                log.warning("task: unexpected message %r", message)
        return None

    def on_failure(self, *args: Any) -> None:
        log.error("task %s failed inside the engine; marking it interrupted", self._task.id)
        for ref in self._running.values():
            tell_if_alive(ref, StopStep(State.INTERRUPTED))
        self._services.pool.cancel(self)
        self._requested.clear()
        for index, step in enumerate(self._steps):
            if not step.state.finished:
                self._steps[index] = step.with_(state=State.INTERRUPTED)
        self._stopping = State.INTERRUPTED
        self._finish()

    # -- scheduling ---------------------------------------------------------------------

    def _start(self) -> None:
        # The task stays pending (等待中) until its first step process starts.
        process.prepare_workspace(self._workspace)
        self._consider(range(len(self._steps)))
        self._check_finished()

    def _consider(self, indices) -> None:
        """Request a slot for each step that may run now; skip those whose dependency failed."""
        pending = list(indices)
        skipped = []
        while pending:
            index = pending.pop()
            step = self._steps[index]
            if step.state is not State.PENDING or index in self._requested or index in self._running:
                continue
            needs = [self._steps[d] for d in self._deps[index]]
            if any(need.failed for need in needs):
                self._steps[index] = step.with_(state=State.SKIPPED)
                self._finished += 1
                skipped.append(self._steps[index])
                pending.extend(self._dependents[index])
            elif all(need.succeeded for need in needs) and not self._paused and self._stopping is None:
                self._requested.add(index)
                ref = self.actor_ref
                self._services.pool.request(
                    self, index, lambda i=index: ref.tell(SlotGranted(i)), order=(self._task.accepted, index)
                )
        if skipped:
            self._save(tuple(skipped))

    def _slot_granted(self, index: int) -> None:
        self._requested.discard(index)
        step = self._steps[index]
        if self._stopping is not None or self._paused or step.state is not State.PENDING:
            self._services.pool.release()  # a paused step is requested again on resume
            self._maybe_stop()
            return
        ref = StepActor.start(self._services, self.actor_ref, self._task.id, self._workspace, step, self._specs[index])
        self._running[index] = ref
        ref.tell(RunStep())

    def _step_ended(self, record: StepRecord) -> None:
        self._running.pop(record.index, None)
        self._update_step(record)
        self._finished += 1
        self._consider(self._dependents[record.index])
        self._check_finished()

    def _check_finished(self) -> None:
        if self._finished == len(self._steps) and not self._done:
            self._finish()

    # -- control ------------------------------------------------------------------------

    def _control_task(self, action: str) -> None:
        check_task_action(action, self._task.state)
        if action == "kill":
            self._stop_all(State.KILLED)
        elif action == "pause":
            self._paused = True
            for index in self._services.pool.cancel(self):
                self._requested.discard(index)
            self._task = self._task.with_(state=State.PAUSED)
            self._save()
            self._ask_steps(list(self._running.values()), PauseStep())
        else:
            self._paused = False
            self._task = self._task.with_(state=State.RUNNING if self._task.begin is not None else State.PENDING)
            self._save()
            held = []
            for index, step in enumerate(self._steps):
                if step.state is State.PAUSED and index not in self._running:
                    self._steps[index] = step.with_(state=State.PENDING)
                    held.append(self._steps[index])
            if held:
                self._save(tuple(held))
            self._ask_steps(list(self._running.values()), ResumeStep())
            self._consider(range(len(self._steps)))

    def _control_step(self, action: str, index: int) -> None:
        step = self._steps[index]
        check_step_action(action, step, self._paused)
        running = self._running.get(index)
        if action == "kill":
            if running is not None:
                running.tell(StopStep(State.KILLED))
                return
            if self._services.pool.cancel_key(self, index):
                self._requested.discard(index)  # else the grant is on its way and is released then
            now = self._services.clock()
            self._step_ended(step.with_(state=State.KILLED, code=STEP_CODE_KILLED, end=now, begin=None))
        elif running is not None:
            self._ask_steps([running], PauseStep() if action == "pause" else ResumeStep())
        elif action == "pause":  # held before it starts
            if index in self._requested and self._services.pool.cancel_key(self, index):
                self._requested.discard(index)
            self._update_step(step.with_(state=State.PAUSED))
        else:
            self._update_step(step.with_(state=State.PENDING))
            self._consider([index])

    def _ask_steps(self, refs: list[pykka.ActorRef], message: PauseStep | ResumeStep) -> None:
        """Suspend / resume step trees and record it before the control request is answered.
        Asking is safe here: a StepActor never waits on its TaskActor."""
        futures = []
        for ref in refs:
            try:
                futures.append(ref.ask(message, block=False))
            except pykka.ActorDeadError:
                pass
        for future in futures:
            try:
                record = future.get(timeout=self._services.config.call_timeout)
            except (pykka.ActorDeadError, pykka.Timeout):
                continue  # the step ended meanwhile; its StepEnded is on its way
            if record is not None:
                self._update_step(record)

    def _stop_all(self, state: State) -> None:
        """Kill the running trees and skip what has not started; the task ends as `state`."""
        if self._stopping is not None or self._task.state.finished:
            return
        self._stopping = state
        self._requested.difference_update(self._services.pool.cancel(self))
        if state is State.INTERRUPTED and self._task.begin is None and not self._running:
            # Nothing of it ever ran: it stays queued in the store and runs after the next start.
            self._end_actor()
            return
        skipped = []
        for index, step in enumerate(self._steps):
            if step.state in (State.PENDING, State.PAUSED) and index not in self._running:
                self._steps[index] = step.with_(state=State.SKIPPED, code=STEP_CODE_UNFINISHED)
                self._finished += 1
                skipped.append(self._steps[index])
        if skipped:
            self._save(tuple(skipped))
        for ref in list(self._running.values()):
            tell_if_alive(ref, StopStep(state))
        self._check_finished()

    def _finish(self) -> None:
        end = self._services.clock()
        self._task = self._task.with_(
            state=self._stopping or State.STOPPED,
            begin=self._task.begin or end,
            end=end,
            expires=end + self._services.config.key_expire,
            failed_step=lowest_failure(self._steps),
        )
        self._save()
        self._end_actor()

    def _end_actor(self) -> None:
        tell_if_alive(self._supervisor, TaskEnded(self._task.id))
        self._done = True
        self._maybe_stop()

    def _maybe_stop(self) -> None:
        if self._done and not self._requested:
            self.stop()

    # -- records ------------------------------------------------------------------------

    def _update_step(self, record: StepRecord) -> None:
        self._steps[record.index] = record
        if self._task.begin is None and record.begin is not None:
            state = State.PAUSED if self._paused else State.RUNNING
            self._task = self._task.with_(state=state, begin=record.begin)
            self._save((record,), with_task=True)  # one transaction: the task began with this step
        else:
            self._save((record,))

    def _save(self, steps: tuple[StepRecord, ...] = (), with_task: bool = False) -> None:
        task = self._task if with_task or not steps else None
        self._services.store.tell(SaveRecords(self._task.id, task, steps))
