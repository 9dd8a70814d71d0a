"""Immutable messages between the actors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from ..records import StepRecord, TaskRecord
from ..spec import StepSpec
from ..vocabulary import State
from .reply import Reply


# -- StoreActor ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateTask:
    """Store a new task. `reply` is answered after the flush (creates arriving together share it):
    with the existing TaskRecord if the id is taken (and not expired) by a task of the same mode and
    specs, else None; it fails with TaskConflict when that task was submitted otherwise, with
    DiskFull when the task cannot be written or flushed. Once it is stored and flushed, every
    (actor, message) of `then` is told."""

    task: TaskRecord
    steps: tuple[StepRecord, ...]
    specs: tuple[StepSpec, ...]
    reply: Reply
    then: tuple[tuple[pykka.ActorRef, Any], ...] = ()


@dataclass(frozen=True)
class Submit:
    """A new task whose id the engine made, so that no other request can name it before its
    submitter is answered: the supervisor starts it at once when it may, and its create is then
    written with its first steps' starts (one flush instead of two, and no wait in between);
    otherwise the store gets the create and the task is queued once stored."""

    create: CreateTask

    @property
    def reply(self) -> Reply:
        return self.create.reply


@dataclass(frozen=True)
class CreateRefused:
    """The create that came with a runner's first save was not stored (its submitter heard why):
    the runner drops the task and writes nothing of it."""

    task_id: str


@dataclass(frozen=True)
class TaskDropped:
    """The runner that heard CreateRefused has dropped the task: none of its saves comes after
    this message, so the store stops refusing them."""

    task_id: str


@dataclass(frozen=True)
class SaveRecords:
    """Commit records. `durable`: flushed before anyone is told. After the commit `reply` arrives
    and every (actor, message) of `then` is told; when the write fails, `reply` fails and those of
    `otherwise` are told instead (the records are kept and written again once the disk has room).
    A `then` whose actor has stopped gets the `otherwise` at its position told in its place (a
    step's start that reaches a worker that failed goes back to its runner)."""

    task_id: str
    task: TaskRecord | None = None
    steps: tuple[StepRecord, ...] = ()
    durable: bool = False
    reply: Reply | None = None
    then: tuple[tuple[pykka.ActorRef, Any], ...] = ()
    otherwise: tuple[tuple[pykka.ActorRef, Any], ...] = ()
    create: CreateTask | None = None  # the task's create, written first in the same transaction


@dataclass(frozen=True)
class InterruptStored:
    """End a task interrupted from the newest records the store holds: those on disk under the
    ones a full disk refused (kept in memory), never a step's real end overwritten by a stale read.
    `reason` goes where TaskState.interrupt puts it; a task ended already is left alone. `kill_run`
    is called first with the run id of each step that had not ended (its processes are killed).
    Saved as every change is: while the disk is full it is kept and written again."""

    task_id: str
    reason: str
    kill_run: Callable[[str], None] | None = None


@dataclass(frozen=True)
class RetryUnsaved:
    pass


@dataclass(frozen=True)
class DeleteTask:
    """Remove a finished task's records and workspace. `reply` gets the task as it was (None when
    unknown; a task that has not finished is answered and left alone; a deletion written but not
    flushed is done: answered so), or fails with DiskFull when the deletion cannot be written (a
    Reply, not an ask: pykka logs a traceback for every exception an ask answers)."""

    task_id: str
    reply: Reply


@dataclass(frozen=True)
class SweepExpired:
    """ask (Executor.sweep): remove expired records now; answered with how many tasks went, or
    with the failure."""


@dataclass(frozen=True)
class ScheduledSweep:
    """The engine's timer tells the store to sweep as SweepExpired does: nobody waits for the
    answer, and a failure is only logged (the store goes on)."""


@dataclass(frozen=True)
class Ping:
    """ask: answered at once (liveness), with no disk work."""


@dataclass(frozen=True)
class Flush:
    """ask: answered once every earlier message is on disk."""


# -- SupervisorActor ----------------------------------------------------------------------
@dataclass(frozen=True)
class Enqueue:
    task_id: str
    records: tuple[TaskRecord, tuple[StepRecord, ...], tuple[StepSpec, ...]] | None = None  # as stored


@dataclass(frozen=True)
class TaskEnded:
    task_id: str


@dataclass(frozen=True)
class TaskAdmitted:
    """A runner has asked the pool for its task's first steps: the next task may start now (so
    tasks ask for workers, and get free ones, in the order they were accepted)."""

    task_id: str


@dataclass(frozen=True)
class ControlTask:
    """kill / pause / resume a task (index None) or one step; `reply` is answered when done."""

    task_id: str
    action: str
    index: int | None
    reply: Reply


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
    """Run this task (a TaskActor runs one task at a time and is reused for the next)."""

    task: TaskRecord
    steps: tuple[StepRecord, ...]
    specs: tuple[StepSpec, ...]
    create: CreateTask | None = None  # not stored yet: it goes with the runner's first save


@dataclass(frozen=True)
class WorkerGranted:
    task_id: str  # a runner serves one task after another: a late grant is for an ended task
    index: int
    worker: pykka.ActorRef


@dataclass(frozen=True)
class StartNotRecorded:
    """The step's start could not be written, or its worker failed before it got it: it does not run."""

    index: int
    worker: pykka.ActorRef


@dataclass(frozen=True)
class StepStarted:
    """A step's process has run PID_SAVE_DELAY: its pid is to be saved (most steps end sooner,
    and their pid comes with StepEnded)."""

    run: int  # a runner serves one task after another: a late report is for a run that ended
    index: int
    pid: int


@dataclass(frozen=True)
class StepEnded:
    run: int
    index: int
    state: State
    code: int
    output: str
    end: float
    pid: int | None = None  # None: its process never started


@dataclass(frozen=True)
class InterruptTask:
    pass


# -- StepActor (a long-lived worker: one process tree at a time) -------------------------
@dataclass(frozen=True)
class RunStep:
    """Start a step's process. `run` is unique: messages about an earlier run are ignored."""

    run: int
    task: pykka.ActorRef
    task_id: str
    workspace: Path
    record: StepRecord
    spec: StepSpec


@dataclass(frozen=True)
class SignalStep:
    """pause / resume the run's tree; `reply` arrives once it is signalled. `alone`: a pause of
    step `index` alone (of task `task_id`, run by `task`); if its process has exited, the worker
    sends it back to the runner after the step's end (PauseRefused), and the runner refuses it."""

    run: int
    pause: bool
    reply: Reply | None = None
    index: int = -1
    alone: bool = False
    task: pykka.ActorRef | None = None
    task_id: str = ""


@dataclass(frozen=True)
class PauseRefused:
    """A pause of one step whose process had exited when it came: told by the worker behind the
    step's end, so that the runner refuses it once that end is on its way to the store (a read
    after the refusal sees the step ended)."""

    task_id: str
    index: int
    reply: Reply


@dataclass(frozen=True)
class StopStep:
    """Kill the run's tree; `state` is what it ends as (KILLED or INTERRUPTED); `reason`: why an
    interrupted step stopped, when not because the server stops."""

    run: int
    state: State
    reason: str | None = None


@dataclass(frozen=True)
class RunDropped:
    """The run will not start here (its start could not be recorded): answer what waits for it."""

    run: int


@dataclass(frozen=True)
class ProcessExited:
    run: int
    returncode: int
    at: float


@dataclass(frozen=True)
class DeadlineReached:
    run: int


@dataclass(frozen=True)
class Escalate:
    """The TERM grace of a kill is over: KILL what is left."""

    run: int


@dataclass(frozen=True)
class RunnerStopped:
    """A task runner stopped (it failed while handling its own failure): its task, if it had not
    ended it, is ended from the store and what its steps still run is killed."""

    task_id: str | None  # None: it was idle
