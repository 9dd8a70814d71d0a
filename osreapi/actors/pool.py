"""The execution pool: at most `size` step processes at once; further requests wait in order of
submission (task acceptance time, then step index), whatever thread asked first."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

import pykka

Grant = Callable[[], None]


class ProcessPool:
    def __init__(self, size: int) -> None:
        self.size = size
        self._busy = 0
        self._waiting: list[tuple[tuple, int, object, object, Grant]] = []  # a heap
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def request(self, owner: object, key: object, grant: Grant, order: tuple = ()) -> None:
        """Call grant() now if a slot is free, else when one frees (lowest `order` first).
        The grantee must release()."""
        with self._lock:
            if self._busy >= self.size:
                heapq.heappush(self._waiting, (order, next(self._counter), owner, key, grant))
                return
            self._busy += 1
        self._deliver(grant)

    def release(self) -> None:
        with self._lock:
            if not self._waiting:
                self._busy -= 1
                return
            grant = heapq.heappop(self._waiting)[4]
        self._deliver(grant)

    def cancel(self, owner: object) -> list[object]:
        """Drop every waiting request of owner; return their keys (the others were granted)."""
        with self._lock:
            dropped = [item[3] for item in self._waiting if item[2] is owner]
            if dropped:
                self._waiting = [item for item in self._waiting if item[2] is not owner]
                heapq.heapify(self._waiting)
        return dropped

    def cancel_key(self, owner: object, key: object) -> bool:
        """Drop owner's waiting request for key; False if it was already granted (or never made)."""
        with self._lock:
            for position, item in enumerate(self._waiting):
                if item[2] is owner and item[3] == key:
                    self._waiting.pop(position)
                    heapq.heapify(self._waiting)
                    return True
        return False

    def stats(self) -> tuple[int, int, int]:
        """(size, busy, waiting)"""
        with self._lock:
            return self.size, self._busy, len(self._waiting)

    def _deliver(self, grant: Grant) -> None:
        try:
            grant()
        except pykka.ActorDeadError:  # the requester is gone: the slot goes to the next one
            self.release()
