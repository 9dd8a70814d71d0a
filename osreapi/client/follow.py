"""--follow: one thread per started step streams its output into a queue; the main thread prints
whole lines, prefixed with the step's name when the task's steps may run at once (parallel or DAG)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from ..embed import TaskResult
from ..errors import OsreapiError
from ..records import StepRecord
from ..vocabulary import State, message
from .client import Client
from .errors import ServerError

_NOT_STARTED = (State.PENDING, State.SKIPPED)


class Followers:
    def __init__(self, client: Client, task_id: str, emit: Callable[[str], None]) -> None:
        self._client = client
        self._task_id = task_id
        self._emit = emit
        self._queue: queue.Queue[tuple[StepRecord, str | None]] = queue.Queue()
        self._threads: dict[int, threading.Thread] = {}
        self._active: set[int] = set()
        self._partial: dict[int, str] = {}
        self.prefixed = False

    def start(self, result: TaskResult) -> None:
        """Follow every step that has started and is not followed yet."""
        new = [s for s in result.steps if s.state not in _NOT_STARTED and s.index not in self._threads]
        # Steps of a parallel or DAG task may run at once (and do so between two polls unseen).
        self.prefixed = result.task.mode != "sequential" and len(result.steps) > 1
        for step in new:
            thread = threading.Thread(target=self._follow, args=(step,), daemon=True)
            self._threads[step.index] = thread
            self._active.add(step.index)
            thread.start()

    def _follow(self, step: StepRecord) -> None:
        try:
            for chunk in self._client.logs(self._task_id, step.index, follow=True):
                self._queue.put((step, chunk))
        except OsreapiError as exc:
            text = exc.message if isinstance(exc, ServerError) else str(exc)
            self._queue.put((step, message("cli_output_lost", self._client.lang, index=step.index, error=text) + "\n"))
        finally:
            self._queue.put((step, None))

    def drain(self, seconds: float) -> None:
        """Print what arrives for up to `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                step, chunk = self._queue.get(timeout=left)
            except queue.Empty:
                return
            self._print(step, chunk)

    def finish(self, deadline: float | None) -> None:
        """Print until every follower has ended (or the deadline passed)."""
        while self._active and (deadline is None or time.monotonic() < deadline):
            self.drain(0.25 if deadline is None else min(0.25, deadline - time.monotonic()))

    def _print(self, step: StepRecord, chunk: str | None) -> None:
        text = self._partial.pop(step.index, "") + (chunk or "")
        if chunk is None:
            self._active.discard(step.index)
            if text:
                text += "\n"  # the step ended without a newline
        head, newline, rest = text.rpartition("\n")
        if rest:
            self._partial[step.index] = rest
        if not newline:
            return
        lines = head.split("\n")
        prefix = f"[{step.name}] " if self.prefixed else ""
        self._emit("".join(f"{prefix}{line}\n" for line in lines))
