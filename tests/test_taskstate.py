"""The task state machine on its own: random sequences of start / exit / pause / resume / kill /
restart must always end in a final state with every worker given back."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from osreapi.actors.taskstate import TaskState
from osreapi.errors import ActionRejected
from osreapi.records import StepRecord, TaskRecord
from osreapi.spec import StepSpec
from osreapi.vocabulary import State

WORKERS = 2


class TaskMachine(RuleBasedStateMachine):
    """Drives a TaskState as the TaskActor does, with a pool of WORKERS and fake processes."""

    @initialize(
        mode=st.sampled_from(["sequential", "parallel", "dag"]),
        deps=st.lists(st.lists(st.integers(0, 4), max_size=2), min_size=1, max_size=5),
    )
    def start(self, mode: str, deps: list[list[int]]) -> None:
        names = [f"s{i}" for i in range(len(deps))]
        specs = tuple(
            StepSpec(names[i], "sh", "true", depends_on=tuple(sorted({names[d] for d in need if d < i})) if mode == "dag" else ())
            for i, need in enumerate(deps)
        )
        task = TaskRecord(id="t", mode=mode, count=len(specs), accepted=0.0)
        self.state = TaskState(task, [StepRecord(i, n) for i, n in enumerate(names)], specs)
        self.now = 1.0
        
    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    @rule(data=st.data())
    def grant_a_worker(self, data) -> None:
        runnable = self.state.runnable()
        if runnable and len(self.state.active) < WORKERS:
            self.state.step_starting(data.draw(st.sampled_from(runnable)), self._tick())

    @precondition(lambda self: self.state.active)
    @rule(data=st.data(), code=st.sampled_from([0, 0, 1, 137]))
    def a_process_exits(self, data, code: int) -> None:
        index = data.draw(st.sampled_from(sorted(self.state.active)))
        self._exit(index, code)

    def _exit(self, index: int, code: int) -> None:
        state = self.state.stopping.get(index, State.STOPPED)
        self.state.step_ended(index, state, code if state is State.STOPPED else 137, "", self._tick())

    @rule(action=st.sampled_from(["kill", "pause", "resume"]), index=st.none() | st.integers(0, 4))
    def control(self, action: str, index: int | None) -> None:
        if index is not None and index >= len(self.state.steps):
            return
        before = (self.state.task, list(self.state.steps))
        try:
            self.state.control(action, index, self._tick())
        except ActionRejected:
            assert (self.state.task, self.state.steps) == before  # a refusal changes nothing

    @rule()
    def restart(self) -> None:
        """The server dies now: recovery ends the task from its records alone (on a copy)."""
        stored = TaskState(self.state.task, self.state.steps, self.state.specs)
        stored.interrupt(self._tick(), "interrupted")
        assert stored.done
        final = stored.finish(self._tick(), 10.0)
        assert final.state.finished and all(step.state.finished for step in stored.steps)
        assert not any(step.state is State.PENDING for step in stored.steps)  # nothing would run again
        for before, after in zip(self.state.steps, stored.steps):  # a step that began is never "skipped"
            if before.begin is not None and not before.state.finished:
                assert after.state is State.INTERRUPTED, (before, after)

    @invariant()
    def records_agree(self) -> None:
        for index in self.state.active:
            assert not self.state.steps[index].state.finished
            assert self.state.steps[index].begin is not None
        assert len(self.state.active) <= WORKERS

    def teardown(self) -> None:
        """Drain: resume what is paused, let every process exit, run what may run; it must end."""
        if not hasattr(self, "state"):
            return
        for _ in range(100):
            if self.state.paused and self.state.ending is None:
                self.state.control("resume", None, self._tick())
            for index, step in enumerate(self.state.steps):
                if step.state is State.PAUSED and not self.state.paused and index not in self.state.stopping:
                    self.state.control("resume", index, self._tick())
            for index in sorted(self.state.active):
                self._exit(index, 0)
            for index in self.state.runnable()[:WORKERS]:
                self.state.step_starting(index, self._tick())
            if self.state.done:
                break
        assert self.state.done and not self.state.active, self.state.steps
        final = self.state.finish(self._tick(), 10.0)
        assert final.state in (State.STOPPED, State.KILLED, State.INTERRUPTED)
        assert (final.failed_step is None) == all(s.succeeded for s in self.state.steps)


TestTaskMachine = TaskMachine.TestCase
TestTaskMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
