"""SupervisorActor: keeps waiting tasks as data and runs a bounded number of TaskActors."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import pykka

from ..errors import ActionRejected
from ..records import StepRecord, TaskRecord, lowest_failure
from ..vocabulary import STEP_CODE_KILLED, State
from .control import check_step_action, check_task_action
from .messages import (
    ControlQueued,
    Enqueue,
    GetStats,
    InterruptAll,
    InterruptTask,
    SaveRecords,
    StartTask,
    TaskEnded,
)
from .services import Services
from .task import TaskActor

log = logging.getLogger(__name__)


class SupervisorActor(pykka.ThreadingActor):
    def __init__(self, services: Services) -> None:
        super().__init__()
        self._services = services
        self._queue: deque[str] = deque()  # task ids, FIFO; a waiting task costs no thread
        self._held: dict[str, None] = {}  # queued tasks paused before they started, in order
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
            case ControlQueued(task_id=task_id, action=action, index=index):
                return self._control(task_id, action, index)
            case GetStats():
                return len(self._live), len(self._queue) + len(self._held)
            case InterruptAll(done=done):
                self._stopping = done
                for ref in self._live.values():
                    ref.tell(InterruptTask())
                self._check_stopped()
            case _:
                log.warning("supervisor: unexpected message %r", message)
        return None

    def _start_more(self) -> None:
        limit = self._services.config.max_live_tasks
        db = self._services.db
        while self._queue and len(self._live) < limit and self._stopping is None:
            task_id = self._queue.popleft()
            task = db.get_task(task_id)
            if task is None or task.state.finished:
                continue
            if task.state is State.PAUSED:  # paused before a restart
                self._held[task_id] = None
                continue
            specs = db.get_specs(task_id)
            steps = db.get_steps(task_id)
            ref = TaskActor.start(self._services, self.actor_ref, task, steps, specs)
            self._live[task_id] = ref
            ref.tell(StartTask())

    def _control(self, task_id: str, action: str, index: int | None) -> pykka.ActorRef | None:
        """Hand back the live TaskActor, or apply the action to the stored, not yet started task."""
        live = self._live.get(task_id)
        if live is not None:
            return live
        if task_id not in self._held and task_id not in self._queue:
            raise ActionRejected("task_not_here")
        db = self._services.db
        task = db.get_task(task_id)
        steps = db.get_steps(task_id)
        if index is not None:
            step = steps[index]
            check_step_action(action, step, task.state is State.PAUSED)
            if action == "kill":
                step = step.with_(state=State.KILLED, code=STEP_CODE_KILLED, end=self._services.clock())
            else:
                step = step.with_(state=State.PAUSED if action == "pause" else State.PENDING)
            self._save(task_id, None, (step,))
            return None
        check_task_action(action, task.state)
        if action == "kill":
            self._held.pop(task_id, None)
            if task_id in self._queue:
                self._queue.remove(task_id)
            now = self._services.clock()
            steps = [s if s.state.finished else s.with_(state=State.SKIPPED) for s in steps]
            self._save(task_id, None, tuple(steps))
            ended = task.with_(
                state=State.KILLED,
                end=now,
                expires=now + self._services.config.key_expire,
                failed_step=lowest_failure(steps),
            )
            self._save(task_id, ended)
        elif action == "pause":
            self._save(task_id, task.with_(state=State.PAUSED))
            if task_id in self._queue:
                self._queue.remove(task_id)
            self._held[task_id] = None
        else:
            self._save(task_id, task.with_(state=State.PENDING))
            del self._held[task_id]
            self._queue.appendleft(task_id)  # it was accepted before most of the queue
            self._start_more()
        return None

    def _save(self, task_id: str, task: TaskRecord | None, steps: tuple[StepRecord, ...] = ()) -> None:
        # ask, not tell: the next read of this task (by _start_more) must see the write.
        self._services.store.ask(SaveRecords(task_id, task, steps), timeout=self._services.config.call_timeout)

    def _check_stopped(self) -> None:
        if self._stopping is not None and not self._live:
            self._stopping.set()
