"""The rules of kill / pause / resume, shared by queued tasks and running ones."""

from __future__ import annotations

from ..errors import ActionRejected
from ..records import StepRecord
from ..vocabulary import State

ACTIONS = ("kill", "pause", "resume")


def check_task_action(action: str, state: State) -> None:
    if state.finished:
        raise ActionRejected(f"the task has ended ({state.value}); {action} does not apply")
    if action == "pause" and state is State.PAUSED:
        raise ActionRejected("the task is already paused")
    if action == "resume" and state is not State.PAUSED:
        raise ActionRejected("the task is not paused")


def check_step_action(action: str, step: StepRecord, task_paused: bool) -> None:
    if step.state.finished:
        raise ActionRejected(f"step {step.index} has ended ({step.state.value}); {action} does not apply")
    if action == "pause" and (step.state is State.PAUSED or task_paused):
        raise ActionRejected(f"step {step.index} is already paused")
    if action == "resume":
        if task_paused:
            raise ActionRejected("the whole task is paused: resume the task")
        if step.state is not State.PAUSED:
            raise ActionRejected(f"step {step.index} is not paused")
