"""SupervisorActor: keeps waiting tasks as data and runs a bounded number of TaskActors."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import pykka

from ..records import StepRecord
from .messages import Enqueue, InterruptAll, InterruptTask, StartTask, TaskEnded
from .services import Services
from .task import TaskActor

log = logging.getLogger(__name__)


class SupervisorActor(pykka.ThreadingActor):
    def __init__(self, services: Services) -> None:
        super().__init__()
        self._services = services
        self._queue: deque[str] = deque()  # task ids, FIFO; a waiting task costs no thread
        self._live: dict[str, pykka.ActorRef] = {}
        self._stopping: threading.Event | None = None

    def on_receive(self, message: Any) -> Any:
        match message:
            case Enqueue(task_id=task_id):
                self._queue.append(task_id)
                self._start_more()
            case TaskEnded(task_id=task_id):
                self._live.pop(task_id, None)
                self._start_more()
                self._check_stopped()
            case InterruptAll(done=done):
                self._stopping = done
                for ref in self._live.values():
                    ref.tell(InterruptTask())
                self._check_stopped()
            case _:
                log.warning("supervisor: unexpected message %r", message)
        return None

    def stats(self) -> tuple[int, int]:
        """(live task actors, queued tasks)"""
        return len(self._live), len(self._queue)

    def _start_more(self) -> None:
        limit = self._services.config.max_live_tasks
        db = self._services.db
        while self._queue and len(self._live) < limit and self._stopping is None:
            task_id = self._queue.popleft()
            task = db.get_task(task_id)
            if task is None or task.state.finished:
                continue
            specs = db.get_specs(task_id)
            steps = [StepRecord(index=i, name=spec.name) for i, spec in enumerate(specs)]
            ref = TaskActor.start(self._services, self.actor_ref, task, steps, specs)
            self._live[task_id] = ref
            ref.tell(StartTask())

    def _check_stopped(self) -> None:
        if self._stopping is not None and not self._live:
            self._stopping.set()
