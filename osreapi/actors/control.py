"""The rules of kill / pause / resume, shared by queued tasks and running ones."""

from __future__ import annotations

from ..errors import ActionRejected
from ..records import StepRecord
from ..vocabulary import State

ACTIONS = ("kill", "pause", "resume")


def check_task_action(action: str, state: State) -> None:
    if state.finished:
        raise ActionRejected("task_ended", state=state, action=action)
    if action == "pause" and state is State.PAUSED:
        raise ActionRejected("task_paused_already")
    if action == "resume" and state is not State.PAUSED:
        raise ActionRejected("task_not_paused")


def check_step_action(action: str, step: StepRecord, task_paused: bool) -> None:
    if step.state.finished:
        raise ActionRejected("step_ended", index=step.index, state=step.state, action=action)
    if action == "pause" and (step.state is State.PAUSED or task_paused):
        raise ActionRejected("step_paused_already", index=step.index)
    if action == "resume":
        if task_paused:
            raise ActionRejected("resume_task_first")
        if step.state is not State.PAUSED:
            raise ActionRejected("step_not_paused", index=step.index)
