"""The event bus: every committed change of a task's or a step's record, numbered, in a bounded ring.

Subscribers read what came after the last sequence number they saw (`since`); one that asks for
events already dropped from the ring gets a `Reset` and must reload. Sequence numbers start at the
wall clock in microseconds, so a number handed out before a restart reads as dropped, never as new.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .records import StepRecord, TaskRecord
from .watchers import TaskWatchers

DEFAULT_CAPACITY = 10_000
# A finished step's event carries its output (up to --max_output each): beyond this many characters
# of output held, the oldest events go too, and a reader still behind them gets a Reset.
OUTPUT_BUDGET = 32 * 1024 * 1024
BATCH = 500  # most events one `since` hands back, so a slow reader catches up in bounded pieces
KNOWN_TASKS = 4096  # task records remembered for step-only writes, so few need a read


@dataclass(frozen=True)
class Event:
    seq: int
    task: TaskRecord  # the task as it stood (a step event needs its expiry for the ttl)
    step: StepRecord | None = None  # None: a task event
    deleted: bool = False  # the task's records are gone (deleted, or swept once expired)
    at: float = 0.0  # when it happened (the bus's clock): its ttl is counted from then

    @property
    def kind(self) -> str:
        if self.deleted:
            return "delete"
        return "task" if self.step is None else "step"


@dataclass(frozen=True)
class Batch:
    events: tuple[Event, ...]
    upto: int  # the next `since` starts here (past events the task filter skipped too)


@dataclass(frozen=True)
class Reset:
    """The asked-for position is gone (dropped from the ring, or from before a restart)."""

    last: int  # resume after this once reloaded


class EventBus:
    def __init__(
        self,
        load_task: Callable[[str], TaskRecord | None],
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.time,
        output_budget: int = OUTPUT_BUDGET,
    ) -> None:
        self._load_task = load_task  # for step-only writes of a task not seen lately
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self._ring: deque[Event] = deque()
        self._capacity = capacity
        self._output_budget = output_budget
        self._output_held = 0  # characters of step output in the ring
        self._clock = clock
        self._last = int(clock() * 1_000_000)
        self._lock = threading.Lock()
        self._watchers = TaskWatchers()  # woken at their task's next event
        self._wakers: set[Callable[[], None]] = set()

    @property
    def last(self) -> int:
        return self._last

    def publish(self, task_id: str, task: TaskRecord | None, steps: tuple[StepRecord, ...]) -> None:
        """The store's hook after each committed write (the Executor logs what a listener raises)."""
        current = task or self._tasks.get(task_id) or self._load_task(task_id)
        if current is None:
            return
        now = self._clock()
        with self._lock:
            self._remember(current)
            for step in steps:
                self._append(current, step, now)
            if task is not None:  # after its steps: a task's end comes after its last step's
                self._append(task, None, now)
            wakers = tuple(self._wakers)
        self._watchers.notify(task_id)
        for wake in wakers:
            wake(task_id)

    def forget(self, task_ids: tuple[str, ...]) -> None:
        """The store's hook after tasks were deleted or swept: one `delete` event each."""
        now = self._clock()
        with self._lock:
            for task_id in task_ids:
                stub = self._tasks.pop(task_id, None) or TaskRecord(id=task_id, mode="", count=0, accepted=0.0)
                self._last += 1
                self._keep(Event(self._last, stub, None, deleted=True, at=now))
            wakers = tuple(self._wakers)
        for task_id in task_ids:
            self._watchers.notify(task_id)
        for wake in wakers:
            wake(task_ids[0] if len(task_ids) == 1 else None)

    def _remember(self, task: TaskRecord) -> None:
        self._tasks[task.id] = task
        self._tasks.move_to_end(task.id)
        if len(self._tasks) > KNOWN_TASKS:
            self._tasks.popitem(last=False)

    def _append(self, task: TaskRecord, step: StepRecord | None, at: float) -> None:
        self._last += 1
        self._keep(Event(self._last, task, step, at=at))

    def _keep(self, event: Event) -> None:
        """Add to the ring, dropping the oldest beyond its capacity or its output budget (the
        newest event stays, however large)."""
        self._ring.append(event)
        self._output_held += _output_size(event)
        while len(self._ring) > 1 and (len(self._ring) > self._capacity or self._output_held > self._output_budget):
            self._output_held -= _output_size(self._ring.popleft())

    def since(self, seq: int, task_id: str | None = None) -> Batch | Reset:
        """Events after `seq` (at most BATCH), only task `task_id`'s when given."""
        with self._lock:
            newer = self._after(seq)
            if newer is None:
                return Reset(self._last)
            matching = (e for e in newer if task_id is None or e.task.id == task_id)
            events = tuple(itertools.islice(matching, BATCH))
            upto = events[-1].seq if len(events) == BATCH else self._last
            return Batch(events, upto)

    def _after(self, seq: int) -> Iterator[Event] | None:
        """The ring's events after `seq`, oldest first; None if that position is gone. Called
        with the lock held. Most readers are near the end: those events are found from there."""
        first = self._ring[0].seq if self._ring else self._last + 1
        if seq > self._last or seq < first - 1:
            return None
        skip = seq + 1 - first  # sequence numbers in the ring are consecutive
        newer = len(self._ring) - skip
        if newer <= skip:
            return reversed(list(itertools.islice(reversed(self._ring), newer)))
        return itertools.islice(self._ring, skip, None)

    def wait_for_task(self, task_id: str, seq: int, timeout: float) -> bool:
        """Block until an event about task_id after `seq` exists (True; a Reset counts) or timeout
        seconds passed (False). Only that task's events wake the waiter: under load a thread
        woken at every event of every task spent its time taking the GIL to look and sleep again."""
        with self._watchers.watching(task_id) as news:
            with self._lock:
                newer = self._after(seq)
                if newer is None or any(e.task.id == task_id for e in newer):
                    return True
            return news.wait(timeout)

    def add_waker(self, wake: Callable[[str | None], None]) -> None:
        """`wake(task_id)` is called (from the store's thread: it must be quick) after every
        publish; `wake(None)` after deletions of several tasks."""
        with self._lock:
            self._wakers.add(wake)


def _output_size(event: Event) -> int:
    return len(event.step.output) if event.step is not None else 0
