"""Followers of one step share each read of its state (GET /<id>/<step>/log?follow=true)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..executor.logsource import STATE_POLL
from ..records import StepRecord


class SharedPoll:
    """The followers of one step ask for its state together: one read per step per `max_age`,
    however many follow it (the hub asks for them one after another)."""

    def __init__(self, read: Callable[[str, int], StepRecord | None], max_age: float = STATE_POLL) -> None:
        self._read = read
        self._max_age = max_age
        self._recent: dict[tuple[str, int], tuple[float, StepRecord | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, task_id: str, index: int, read_since: float = 0.0) -> StepRecord | None:
        """The step's record as read at or after `read_since` (monotonic) and within max_age."""
        now = time.monotonic()
        with self._lock:
            hit = self._recent.get((task_id, index))
        if hit is not None and now - hit[0] < self._max_age and hit[0] >= read_since:
            return hit[1]
        record = self._read(task_id, index)
        with self._lock:
            if len(self._recent) > 4096:  # forget steps nobody asked about lately
                self._recent = {k: v for k, v in self._recent.items() if now - v[0] < self._max_age}
            self._recent[(task_id, index)] = (now, record)
        return record
