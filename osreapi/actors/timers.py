"""pykka has no timers: one small scheduler thread runs callbacks at their due time."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable


class TimerHandle:
    __slots__ = ("cancelled", "_scheduler")

    def __init__(self, scheduler: Scheduler) -> None:
        self.cancelled = False
        self._scheduler = scheduler

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._scheduler._cancelled_one()


class Scheduler:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, TimerHandle, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._cancelled = 0
        self._thread = threading.Thread(target=self._run, name="osreapi-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(self)
        with self._cond:
            entry = (self._clock() + delay, next(self._counter), handle, callback)
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:  # sooner than the thread's wake-up: wake it (else no switch)
                self._cond.notify()
        return handle

    def _cancelled_one(self) -> None:
        """Drop cancelled entries once they are most of the heap: a step's 24 h deadline,
        cancelled when the step ends, must not keep the step's objects alive for a day."""
        with self._cond:
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def now(self) -> float:
        """The scheduler's clock (monotonic seconds): deadlines are measured on it."""
        return self._clock()

    def poke(self) -> None:
        """Look at the clock again now (an injected clock was moved forward)."""
        with self._cond:
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def armed(self) -> int:
        """Timers that will still fire (cancelled ones not counted)."""
        with self._cond:
            return sum(1 for entry in self._heap if not entry[2].cancelled)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout)

    def _drop_cancelled_head(self) -> None:
        """Called with the lock held. Cancelled timers at the front go now, not at their due time:
        most steps end before their pid is due to be saved, and the thread woke at each such time
        (one wake-up, and a GIL hand-off, per step) only to drop it."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
            self._cancelled = max(0, self._cancelled - 1)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    self._drop_cancelled_head()
                    if self._heap:
                        wait = self._heap[0][0] - self._clock()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._stopped:
                    return
                _, _, handle, callback = heapq.heappop(self._heap)
                if handle.cancelled:
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
            if not handle.cancelled:
                try:
                    callback()
                except Exception:  # a dead actor or a bug in one callback must not stop the others
                    logging.getLogger(__name__).exception("timer callback failed")
