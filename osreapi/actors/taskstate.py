"""One task's state machine: every transition of a task and its steps is written here, once.

No actors, threads or I/O: the TaskActor drives it for a running task, the supervisor for a task
still queued, recovery for a task found unfinished at start. Each call records which step records
changed (`take_changes`) so that the owner saves exactly those.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Collection, Iterable

from ..errors import ActionRejected
from ..executor import dag
from ..executor.output import add_line
from ..records import StepRecord, TaskRecord, lowest_failure
from ..spec import StepSpec
from ..vocabulary import STEP_CODE_KILLED, STEP_CODE_UNFINISHED, State

ACTIONS = ("kill", "pause", "resume")
# A run id: 12 random bytes drawn once per process, then a count (32 hex digits, as a uuid4's; a
# uuid4 per run cost a getrandom call on the step's path). Unique across restarts and servers.
_RUN_PREFIX = os.urandom(12).hex()
_run_numbers = itertools.count(1)


def new_run_id() -> str:
    return f"{_RUN_PREFIX}{next(_run_numbers):08x}"

_NOT_STARTED = (State.PENDING, State.PAUSED)


class TaskState:
    def __init__(
        self, task: TaskRecord, steps: list[StepRecord], specs: tuple[StepSpec, ...], plan: bool = True
    ) -> None:
        """plan=False: no dependencies (to end a task whose stored specs cannot be read)."""
        self.task = task
        self.steps = list(steps)
        self.specs = specs
        if plan:
            names = {spec.name: index for index, spec in enumerate(specs)}
            self.deps = dag.plan(task.mode, len(specs), [[names[d] for d in spec.depends_on] for spec in specs])
        else:
            self.deps = tuple(() for _ in steps)
        self.dependents = dag.dependents(self.deps)
        self.active: set[int] = set()  # a process was started (or is starting) and has not ended
        self.stopping: dict[int, State] = {}  # active steps being killed, and what they end as
        self.ending: State | None = None  # the task is being killed or interrupted
        self.held_by_task: set[int] = set()  # active steps the task's pause suspended (its resume releases only these)
        self._changed: dict[int, StepRecord] = {}
        self._task_changed = False

    # -- queries ------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.task.state is State.PAUSED

    @property
    def done(self) -> bool:
        """Every step has ended and no process is left: the task can end."""
        return not self.active and all(step.state.finished for step in self.steps)

    def runnable(self) -> list[int]:
        """Steps that may be given a process now (in index order)."""
        if self.paused or self.ending is not None:
            return []
        steps, ready = self.steps, []
        for index, step in enumerate(steps):  # loops, not all(<generator>): once per message, O(steps)
            if step.state is State.PENDING and index not in self.active:
                for dependency in self.deps[index]:
                    if not steps[dependency].succeeded:
                        break
                else:
                    ready.append(index)
        return ready

    def _not_started(self, index: int) -> bool:
        """No process was ever started for it (pending, or held by a pause). Its begin tells: a
        step paused while it ran is PAUSED too, and recovery knows of no active step."""
        step = self.steps[index]
        return step.state in _NOT_STARTED and step.begin is None and index not in self.active

    def take_changes(self) -> tuple[TaskRecord | None, tuple[StepRecord, ...]]:
        """What changed since the last call: (the task if it changed, the changed steps)."""
        task = self.task if self._task_changed else None
        steps = tuple(self._changed[i] for i in sorted(self._changed))
        self._changed.clear()
        self._task_changed = False
        return task, steps

    # -- transitions --------------------------------------------------------------------

    def _set_step(self, record: StepRecord) -> None:
        self.steps[record.index] = record
        self._changed[record.index] = record

    def _set_task(self, **changes) -> None:
        self.task = self.task.with_(**changes)
        self._task_changed = True

    def step_starting(self, index: int, now: float) -> StepRecord:
        """A process is about to start: recorded before it exists, so it never runs twice."""
        self.active.add(index)
        record = self.steps[index].with_(state=State.RUNNING, begin=now, end=None, run_id=new_run_id())
        self._set_step(record)
        if self.task.begin is None:
            self._set_task(state=State.RUNNING, begin=now)
        return record

    def step_started(self, index: int, pid: int, created: float | None = None) -> None:
        step = self.steps[index]
        if index in self.active and not step.state.finished:
            self._set_step(step.with_(pid=pid, pid_created=created))

    def step_ended(self, index: int, state: State, code: int, output: str, end: float, pid: int | None = None) -> None:
        self.active.discard(index)
        self.stopping.pop(index, None)
        step = self.steps[index]
        pid = step.pid if pid is None else pid
        self._set_step(step.with_(state=state, code=code, output=output, end=end, begin=step.begin or end, pid=pid))
        self.skip_blocked(self.dependents[index])

    def skip_blocked(self, indices: Iterable[int] | None = None) -> None:
        """Skip every step not started whose dependency did not succeed (held ones too)."""
        pending = list(range(len(self.steps)) if indices is None else indices)
        while pending:
            index = pending.pop()
            step = self.steps[index]
            if self._not_started(index) and any(self.steps[d].failed for d in self.deps[index]):
                self._set_step(step.with_(state=State.SKIPPED, code=STEP_CODE_UNFINISHED))
                pending.extend(self.dependents[index])

    def control(self, action: str, index: int | None, now: float) -> list[int]:
        """Apply kill / pause / resume to the task (index None) or one step; return the active
        steps whose processes must now be signalled. Raises ActionRejected, changing nothing."""
        if action not in ACTIONS:
            raise ActionRejected("bad_action", value=action, actions=", ".join(ACTIONS))
        if self.task.state.finished or self.ending is not None:
            raise ActionRejected("task_ended", state=self.task.state, action=action)
        if index is None:
            return self._control_task(action, now)
        return self._control_step(action, index, now)

    def _control_task(self, action: str, now: float) -> list[int]:
        if action == "kill":
            return self.end_all(State.KILLED)
        if action == "pause":
            if self.paused:
                raise ActionRejected("task_paused_already")
            self._set_task(state=State.PAUSED)
            paused = self._set_active_steps(State.RUNNING, State.PAUSED)
            self.held_by_task = set(paused)
            return paused
        if not self.paused:
            raise ActionRejected("task_not_paused")
        self._set_task(state=State.RUNNING if self.task.begin is not None else State.PENDING)
        held, self.held_by_task = self.held_by_task, set()  # a step paused on its own stays paused
        return self._set_active_steps(State.PAUSED, State.RUNNING, held)

    def _set_active_steps(self, old: State, new: State, among: Collection[int] | None = None) -> list[int]:
        """Active steps in `old` (and not being killed; of `among` if given) go to `new`; return
        them to be signalled."""
        targets = sorted(i for i in self.active
                         if i not in self.stopping and self.steps[i].state is old and (among is None or i in among))
        for index in targets:
            self._set_step(self.steps[index].with_(state=new))
        return targets

    def _control_step(self, action: str, index: int, now: float) -> list[int]:
        step = self.steps[index]
        if step.state.finished:
            raise ActionRejected("step_ended", index=index, state=step.state, action=action)
        if index in self.stopping:
            raise ActionRejected("step_being_killed", index=index, action=action)
        if action == "kill":
            if index in self.active:
                self.stopping[index] = State.KILLED
                return [index]
            self._set_step(step.with_(state=State.KILLED, code=STEP_CODE_KILLED, end=now))
            self.skip_blocked(self.dependents[index])
            return []
        if action == "pause":
            if step.state is State.PAUSED or self.paused:
                raise ActionRejected("step_paused_already", index=index)
            self._set_step(step.with_(state=State.PAUSED))
            return [index] if index in self.active else []
        if self.paused:
            raise ActionRejected("resume_task_first")
        if step.state is not State.PAUSED:
            raise ActionRejected("step_not_paused", index=index)
        running = index in self.active
        self._set_step(step.with_(state=State.RUNNING if running else State.PENDING))
        return [index] if running else []

    def end_all(self, state: State) -> list[int]:
        """The task is killed or interrupted: skip what has not started; return the active steps
        to stop (they end as `state`)."""
        self.ending = state
        for index, step in enumerate(self.steps):
            if self._not_started(index):
                self._set_step(step.with_(state=State.SKIPPED, code=STEP_CODE_UNFINISHED))
        targets = [i for i in self.active if i not in self.stopping]
        for index in targets:
            self.stopping[index] = state
        return targets

    def step_lost(self, index: int, now: float, reason: str) -> None:
        """A step recorded as starting or running has no process (a crash, a failed start)."""
        self.active.discard(index)
        self.stopping.pop(index, None)
        step = self.steps[index]
        output = add_line(step.output, reason)
        self._set_step(step.with_(state=State.INTERRUPTED, code=STEP_CODE_UNFINISHED, end=now, output=output))
        self.skip_blocked(self.dependents[index])

    def interrupt(self, now: float, reason: str, running: Collection[int] = ()) -> None:
        """The engine cannot go on with this task: it ends interrupted, and `reason` is written in
        every step that lost its process, or else in its first step that did not run. `running`:
        active steps whose processes are still there; they are not lost but stopped, and end when
        their ends are reported (the task is not done before); the caller stops them."""
        self.end_all(State.INTERRUPTED)
        lost = [i for i, s in enumerate(self.steps)
                if not s.state.finished and i not in running and (s.begin is not None or i in self.active)]
        for index in lost:
            self.step_lost(index, now, reason)
        if not lost and not running:
            first = next((i for i, s in enumerate(self.steps) if s.state is State.SKIPPED and s.begin is None), None)
            if first is not None:
                self.step_lost(first, now, reason)

    def finish(self, now: float, key_expire: float) -> TaskRecord:
        """The task's ended record: the one place it is built. A kill (or an interrupt) that found
        every step already succeeded changed nothing: the task succeeded (code 0), for a killed or
        interrupted task is a failed one (1002) and must name a step that did not succeed."""
        failed = lowest_failure(self.steps)
        self._set_task(
            state=State.STOPPED if failed is None else self.ending or State.STOPPED,
            begin=self.task.begin or now,
            end=now,
            expires=now + key_expire,
            failed_step=failed,
        )
        return self.task

