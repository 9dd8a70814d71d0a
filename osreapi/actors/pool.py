"""The execution pool: at most `size` step processes at once; further requests wait in FIFO order."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import pykka


class ProcessPool:
    def __init__(self, size: int) -> None:
        self.size = size
        self._busy = 0
        self._waiting: deque[tuple[object, object, Callable[[], None]]] = deque()
        self._lock = threading.Lock()

    def request(self, owner: object, key: object, grant: Callable[[], None]) -> None:
        """Call grant() now if a slot is free, else when one frees. The grantee must release()."""
        with self._lock:
            if self._busy >= self.size:
                self._waiting.append((owner, key, grant))
                return
            self._busy += 1
        self._deliver(grant)

    def release(self) -> None:
        with self._lock:
            if not self._waiting:
                self._busy -= 1
                return
            _, _, grant = self._waiting.popleft()
        self._deliver(grant)

    def cancel(self, owner: object) -> list[object]:
        """Drop every waiting request of owner; return their keys (the others were granted)."""
        with self._lock:
            dropped = [key for who, key, _ in self._waiting if who is owner]
            if dropped:
                self._waiting = deque(item for item in self._waiting if item[0] is not owner)
        return dropped

    def cancel_key(self, owner: object, key: object) -> bool:
        """Drop owner's waiting request for key; False if it was already granted (or never made)."""
        with self._lock:
            for item in self._waiting:
                if item[0] is owner and item[1] == key:
                    self._waiting.remove(item)
                    return True
        return False

    def stats(self) -> tuple[int, int, int]:
        """(size, busy, waiting)"""
        with self._lock:
            return self.size, self._busy, len(self._waiting)

    def _deliver(self, grant: Callable[[], None]) -> None:
        try:
            grant()
        except pykka.ActorDeadError:  # the requester is gone: the slot goes to the next one
            self.release()
