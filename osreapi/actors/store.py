"""StoreActor: the only writer of LMDB; sweeps expired records and their workspaces."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

import pykka

from ..config import EngineConfig
from ..records import StepRecord, TaskRecord
from ..storage.database import Database
from .messages import CreateTask, DeleteTask, Flush, SaveRecords, SweepExpired

log = logging.getLogger(__name__)
SWEEP_BATCH = 100


class StoreActor(pykka.ThreadingActor):
    def __init__(
        self,
        db: Database,
        config: EngineConfig,
        clock: Callable[[], float],
        on_commit: Callable[[str, TaskRecord | None, tuple[StepRecord, ...]], None],
    ) -> None:
        super().__init__()
        self._db = db
        self._config = config
        self._clock = clock
        self._on_commit = on_commit  # after every committed write of a task's records

    def on_receive(self, message: Any) -> Any:
        match message:
            case SaveRecords(task_id=task_id, task=task, steps=steps):
                self._db.save(task_id, task, steps)
                if task is not None:  # a task-level change is promised to callers: on disk now
                    self._db.sync()
                # After the commit, so a waiter or subscriber that wakes reads it from disk.
                self._on_commit(task_id, task, steps)
            case CreateTask(task=task, steps=steps, specs=specs):
                existing = self._db.create_task(task, steps, specs)
                if existing is None:
                    self._on_commit(task.id, task, steps)
                return existing
            case DeleteTask(task_id=task_id):
                return self._delete(task_id)
            case SweepExpired():
                return self._sweep()
            case Flush():
                self._db.sync()
                return None
            case _:
                log.warning("store: unexpected message %r", message)
        return None

    def _delete(self, task_id: str) -> TaskRecord | None:
        task = self._db.get_task(task_id)
        if task is None or not task.state.finished:
            return task
        self._db.delete_task(task)
        self._db.sync()
        shutil.rmtree(self._config.workspace(task_id), ignore_errors=True)
        return task

    def _sweep(self) -> int:
        total = 0
        while True:
            gone = self._db.delete_expired(self._clock(), SWEEP_BATCH)
            for task_id in gone:
                shutil.rmtree(self._config.workspace(task_id), ignore_errors=True)
            total += len(gone)
            if len(gone) < SWEEP_BATCH:
                break
        if total:
            log.debug("sweep removed %d expired tasks", total)
        return total
