"""Immutable messages between the actors."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..records import StepRecord, TaskRecord
from ..spec import StepSpec
from ..vocabulary import State


# -- StoreActor ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateTask:
    """ask: returns the existing TaskRecord if the id is taken, else None."""

    task: TaskRecord
    steps: tuple[StepRecord, ...]
    specs: tuple[StepSpec, ...]


@dataclass(frozen=True)
class SaveRecords:
    task_id: str
    task: TaskRecord | None = None
    steps: tuple[StepRecord, ...] = ()


@dataclass(frozen=True)
class DeleteTask:
    """ask: remove a finished task's records and workspace. Answers the task as it was (None when
    unknown); a task that has not finished is answered and left alone."""

    task_id: str


@dataclass(frozen=True)
class SweepExpired:
    pass


@dataclass(frozen=True)
class Flush:
    """ask: answered once every earlier message is on disk."""


# -- SupervisorActor ----------------------------------------------------------------------
@dataclass(frozen=True)
class Enqueue:
    task_id: str


@dataclass(frozen=True)
class TaskEnded:
    task_id: str


@dataclass(frozen=True)
class ControlQueued:
    """ask: apply a control action to a task that has no TaskActor yet; answers the live
    TaskActor's ref instead when it has one (the caller then sends it a Control)."""

    task_id: str
    action: str
    index: int | None = None


@dataclass(frozen=True)
class GetStats:
    """ask: (live task actors, queued tasks)"""


@dataclass(frozen=True)
class InterruptAll:
    """Stop starting tasks; interrupt the running ones; `done` is set when none is left."""

    done: threading.Event


# -- TaskActor ----------------------------------------------------------------------------
@dataclass(frozen=True)
class StartTask:
    pass


@dataclass(frozen=True)
class SlotGranted:
    index: int


@dataclass(frozen=True)
class StepUpdated:
    """The step started, paused or resumed."""

    record: StepRecord


@dataclass(frozen=True)
class StepEnded:
    record: StepRecord


@dataclass(frozen=True)
class InterruptTask:
    pass


@dataclass(frozen=True)
class Control:
    """ask: kill, pause or resume the task (index None) or one step; raises ActionRejected."""

    action: str
    index: int | None = None


# -- StepActor ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunStep:
    pass


@dataclass(frozen=True)
class ProcessExited:
    returncode: int
    at: float


@dataclass(frozen=True)
class DeadlineReached:
    pass


@dataclass(frozen=True)
class PauseStep:
    pass


@dataclass(frozen=True)
class ResumeStep:
    pass


@dataclass(frozen=True)
class StopStep:
    """Kill the step's tree; `state` is what it ends as (KILLED or INTERRUPTED)."""

    state: State
