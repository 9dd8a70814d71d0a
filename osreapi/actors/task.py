"""TaskActor: drives one task's steps in their mode, keeps its record, then stops."""

from __future__ import annotations

import logging
from typing import Any

import pykka

from ..executor import dag
from ..records import StepRecord, TaskRecord, lowest_failure
from ..spec import StepSpec
from ..vocabulary import State
from .messages import (
    InterruptTask,
    RunStep,
    SaveRecords,
    SlotGranted,
    StartTask,
    StepEnded,
    StepStarted,
    StopStep,
    TaskEnded,
)
from .services import Services
from .step import StepActor

log = logging.getLogger(__name__)


class TaskActor(pykka.ThreadingActor):
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
        self._finished = 0
        self._stopping: State | None = None
        self._done = False  # stops once no granted slot is still on its way to us
        self._workspace = services.config.workspace(task.id)

    def on_receive(self, message: Any) -> Any:
        match message:
            case StartTask():
                self._start()
            case SlotGranted(index=index):
                self._slot_granted(index)
            case StepStarted(record=record):
                self._update_step(record)
            case StepEnded(record=record):
                self._step_ended(record)
            case InterruptTask():
                self._stop_all(State.INTERRUPTED)
            case _:
                log.warning("task: unexpected message %r", message)
        return None

    def on_failure(self, *args: Any) -> None:
        log.error("task %s failed inside the engine; marking it interrupted", self._task.id)
        for ref in self._running.values():
            _tell(ref, StopStep(State.INTERRUPTED))
        self._services.pool.cancel(self)
        self._requested.clear()
        for index, step in enumerate(self._steps):
            if not step.state.finished:
                self._steps[index] = step.with_(state=State.INTERRUPTED)
        self._stopping = State.INTERRUPTED
        self._finish()

    # -- flow ---------------------------------------------------------------------------

    def _start(self) -> None:
        # The task stays pending (等待中) until its first step process starts.
        self._workspace.mkdir(parents=True, exist_ok=True)
        for index, needs in enumerate(self._deps):
            if not needs:
                self._request(index)

    def _request(self, index: int) -> None:
        self._requested.add(index)
        ref = self.actor_ref
        self._services.pool.request(self, index, lambda: ref.tell(SlotGranted(index)))

    def _slot_granted(self, index: int) -> None:
        self._requested.discard(index)
        if self._stopping is not None or self._steps[index].state is not State.PENDING:
            self._services.pool.release()
            self._maybe_stop()
            return
        ref = StepActor.start(
            self._services, self.actor_ref, self._task.id, self._workspace, self._steps[index], self._specs[index]
        )
        self._running[index] = ref
        ref.tell(RunStep())

    def _step_ended(self, record: StepRecord) -> None:
        self._running.pop(record.index, None)
        self._update_step(record)
        self._finished += 1
        if self._stopping is None:
            if record.succeeded:
                for nxt in self._dependents[record.index]:
                    if all(self._steps[d].succeeded for d in self._deps[nxt]):
                        self._request(nxt)
            else:
                self._skip_dependents(record.index)
        if self._finished == len(self._steps):
            self._finish()

    def _skip_dependents(self, index: int) -> None:
        pending = list(self._dependents[index])
        skipped = []
        while pending:
            nxt = pending.pop()
            if self._steps[nxt].state is State.PENDING:
                self._steps[nxt] = self._steps[nxt].with_(state=State.SKIPPED)
                self._finished += 1
                skipped.append(self._steps[nxt])
                pending.extend(self._dependents[nxt])
        if skipped:
            self._save(tuple(skipped))

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
            if step.state is State.PENDING and index not in self._running:
                self._steps[index] = step.with_(state=State.SKIPPED)
                self._finished += 1
                skipped.append(self._steps[index])
        if skipped:
            self._save(tuple(skipped))
        for ref in list(self._running.values()):
            _tell(ref, StopStep(state))
        if self._finished == len(self._steps):
            self._finish()

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
        _tell(self._supervisor, TaskEnded(self._task.id))
        self._done = True
        self._maybe_stop()

    def _maybe_stop(self) -> None:
        if self._done and not self._requested:
            self.stop()

    # -- records ------------------------------------------------------------------------

    def _update_step(self, record: StepRecord) -> None:
        if self._task.begin is None and record.begin is not None:
            self._task = self._task.with_(state=State.RUNNING, begin=record.begin)
            self._save()
        self._steps[record.index] = record
        self._save((record,))

    def _save(self, steps: tuple[StepRecord, ...] = ()) -> None:
        self._services.store.tell(SaveRecords(self._task.id, self._task if not steps else None, steps))


def _tell(ref: pykka.ActorRef, message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass
