"""After a crash or restart: end what was running as interrupted, kill its leftovers, requeue the rest."""

from __future__ import annotations

import logging

import psutil

from .config import EngineConfig
from .executor import treekill
from .records import StepRecord, TaskRecord, lowest_failure
from .storage.database import Database
from .vocabulary import STEP_CODE_UNFINISHED, State

log = logging.getLogger(__name__)


def recover(db: Database, config: EngineConfig, now: float) -> tuple[list[tuple[TaskRecord, tuple[StepRecord, ...]]], list[str]]:
    """Return (records to save as interrupted, ids of never-started tasks in submission order)."""
    interrupted = []
    waiting: list[TaskRecord] = []
    for task in db.list_tasks():
        if task.state.finished:
            continue
        stored_steps = db.get_steps(task.id)
        if task.begin is None and not any(step.begin for step in stored_steps):
            waiting.append(task)
            continue
        steps = tuple(_interrupt_step(step, now) for step in stored_steps)
        kill_leftovers(task.id, stored_steps, config.kill_grace)
        ended = task.with_(
            state=State.INTERRUPTED,
            end=now,
            expires=now + config.key_expire,
            failed_step=lowest_failure(steps),
        )
        interrupted.append((ended, steps))
        log.warning("task %s was running when the server stopped: marked interrupted", task.id)
    waiting.sort(key=lambda t: t.accepted)
    return interrupted, [t.id for t in waiting]


def _interrupt_step(step: StepRecord, now: float) -> StepRecord:
    if step.state.finished:
        return step
    if step.state is State.PENDING and step.begin is None:
        return step.with_(state=State.SKIPPED)
    return step.with_(state=State.INTERRUPTED, code=STEP_CODE_UNFINISHED, end=now)


def kill_leftovers(task_id: str, steps: list[StepRecord], grace: float) -> list[int]:
    """Kill the trees of a task's steps: stored pids (checked against their create time) and marked processes."""
    killed: list[int] = []
    for step in steps:
        if step.pid is None or step.state.finished:
            continue
        try:
            proc = psutil.Process(step.pid)
            same = step.pid_created is not None and abs(proc.create_time() - step.pid_created) < 0.01
        except psutil.Error:
            continue
        if same:
            killed += treekill.kill_tree(step.pid, grace=grace)
    killed += treekill.kill_marked(task_id, grace)
    return sorted(set(killed))
