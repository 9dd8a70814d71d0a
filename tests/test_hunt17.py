"""Faults the engine model test (tests/test_engine_model.py) found, each pinned on its own."""

from __future__ import annotations

import psutil

from osreapi import Executor
from osreapi.vocabulary import State

from .conftest import sh, step_pid, wait_until


def states(executor: Executor, task_id: str) -> list[State]:
    return [step.state for step in executor.get(task_id).steps]


def test_task_resume_keeps_a_step_paused_on_its_own(executor: Executor):
    """A step paused on its own stays paused when its task is paused and resumed, whether it had
    started or not: only its own resume releases it. Before, the task's resume resumed a running
    step paused on its own (record and process), while one held before it started stayed held."""
    task_id = executor.submit([sh("sleep 30", name="a"), sh("sleep 30"), sh("true", name="held", depends_on=["a"])])
    running = step_pid(executor, task_id, 0)
    step_pid(executor, task_id, 1)
    executor.pause(task_id, 0)  # running: suspended
    executor.pause(task_id, "held")  # not started (it waits for a): held
    executor.pause(task_id)
    executor.resume(task_id)
    assert states(executor, task_id) == [State.PAUSED, State.RUNNING, State.PAUSED]
    assert psutil.Process(running).status() == psutil.STATUS_STOPPED
    executor.resume(task_id, 0)
    assert states(executor, task_id)[0] is State.RUNNING
    assert wait_until(lambda: psutil.Process(running).status() != psutil.STATUS_STOPPED)
    executor.kill(task_id)
