"""pykka has no timers: one small scheduler thread runs callbacks at their due time."""

from __future__ import annotations

import heapq
import logging
import itertools
import threading
import time
from collections.abc import Callable


class TimerHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, TimerHandle, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="osreapi-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle()
        with self._cond:
            heapq.heappush(self._heap, (self._clock() + delay, next(self._counter), handle, callback))
            self._cond.notify()
        return handle

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
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
            if not handle.cancelled:
                try:
                    callback()
                except Exception:  # a dead actor or a bug in one callback must not stop the others
                    logging.getLogger(__name__).exception("timer callback failed")
