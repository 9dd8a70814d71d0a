"""GET /healthz under load: one engine check answers every probe that arrives while it runs, and a
passed check stands for `max_age` seconds (a monitor polling thousands of times a second costs the
actors a few asks per second, not one pair per probe)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None


class HealthCheck:
    def __init__(self, check: Callable[[], Any], max_age: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check  # raises when the engine is not healthy; bounded by the engine's timeout
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._passed_at: float | None = None
        self._result: Any = None  # what the passed check returned (e.g. a status word)
        self._flight: _Flight | None = None

    def __call__(self) -> Any:
        """What the check returns when the engine is healthy; raise what the check raised otherwise."""
        with self._lock:
            if self._passed_at is not None and self._clock() - self._passed_at < self._max_age:
                return self._result
            flight, leader = self._flight, self._flight is None
            if leader:
                flight = self._flight = _Flight()
        if not leader:
            flight.done.wait()  # bounded: the leader's check is
            if flight.error is not None:
                raise flight.error
            return flight.result
        try:
            flight.result = self._check()
            with self._lock:
                self._passed_at, self._result = self._clock(), flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()
        return flight.result
