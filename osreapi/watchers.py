"""Threads waiting for news of one task, each woken by that task's news only."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TaskWatchers:
    """Who waits for which task. A waiter registers before it looks (so news that comes between
    its look and its wait still wakes it), waits on its own Event, and is forgotten after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}

    @contextmanager
    def watching(self, task_id: str) -> Iterator[threading.Event]:
        news = threading.Event()
        with self._lock:
            self._waiting.setdefault(task_id, set()).add(news)
        try:
            yield news
        finally:
            with self._lock:
                waiting = self._waiting.get(task_id)
                if waiting is not None:
                    waiting.discard(news)
                    if not waiting:
                        del self._waiting[task_id]

    def notify(self, task_id: str) -> None:
        with self._lock:
            waiting = tuple(self._waiting.get(task_id, ()))
        for news in waiting:
            news.set()

    def notify_all(self) -> None:
        with self._lock:
            waiting = [news for events in self._waiting.values() for news in events]
        for news in waiting:
            news.set()

    def __len__(self) -> int:
        """Tasks waited for now."""
        with self._lock:
            return len(self._waiting)

    def __contains__(self, task_id: str) -> bool:
        """Someone waits for this task now."""
        with self._lock:
            return task_id in self._waiting
