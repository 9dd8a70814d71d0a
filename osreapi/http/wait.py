"""GET /<id>?wait=<duration>: answer once the task has ended (or the time is up), not before.

A client waiting for a task asks once instead of polling. The first 20 ms are waited on the
worker thread (most short tasks end by then; the connection stays alive); past that the wait is a
stream on the hub (no worker thread held): the hub reads the source at every committed change and
at each tick; the answer is the GET /<id> body of that moment. While waiting, a space every ~15 s
(JSON allows leading whitespace) keeps proxies open and finds a client that went away.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import bottle

from ..errors import InvalidRequest, InvalidValue
from ..events import EventBus, Reset
from ..executor.durations import parse_duration
from ..records import TaskRecord
from .answers import JSON_TYPE

LONGEST_WAIT = 60.0  # seconds; a client wanting longer asks again
# Many tasks waited for end within a few ms: the worker thread waits that long itself (the answer
# keeps the connection alive and skips the hub); a longer wait goes to the hub, holding no thread.
SHORT_WAIT = 0.02


def wait_time(value: str) -> float:
    """The `wait` parameter in seconds (a duration like 30s), at most LONGEST_WAIT."""
    try:
        seconds = parse_duration(value)
    except InvalidValue:
        raise InvalidRequest("bad_wait", value=value[:40]) from None
    if seconds < 0:
        raise InvalidRequest("bad_wait", value=value[:40])
    return min(seconds, LONGEST_WAIT)


class TaskWait:
    """A stream source: nothing until task_id's record says it ended, or the deadline passed."""

    def __init__(self, bus: EventBus, task_id: str, after: int, deadline: float,
                 load: Callable[[str], TaskRecord | None], answer: Callable[[], bytes]) -> None:
        self._bus = bus
        self._task_id = task_id
        self.watches = task_id  # the hub reads it at this task's changes only
        self._after = after  # bus position noted before the task was read
        self._deadline = deadline  # time.monotonic()
        self._load = load  # the task's record, when the bus cannot say
        self._answer = answer

    def ends_within(self, seconds: float) -> bool:
        """Wait here (this thread) up to `seconds` real time for the task's end."""
        deadline = time.monotonic() + seconds
        while not self._ended():
            left = deadline - time.monotonic()
            if left <= 0 or not self._bus.wait_for_task(self._task_id, self._after, left):
                return False
        return True

    def read(self) -> tuple[bytes, bool]:
        if self._ended() or time.monotonic() >= self._deadline:
            return self._answer(), True
        return b"", False

    def final(self) -> bytes:
        """The answer as it stands, when the server stops before the task ends."""
        return self._answer()

    def _ended(self) -> bool:
        news = self._bus.since(self._after, self._task_id)
        if isinstance(news, Reset):  # the bus dropped what we had not read: look at the record
            self._after = news.last
            task = self._load(self._task_id)
            return task is None or task.state.finished
        self._after = news.upto
        return any(e.deleted or (e.step is None and e.task.state.finished) for e in news.events)

    def heartbeat(self) -> bytes:
        return b" "

    def close(self) -> None:
        pass


def wait_for_task(routes, task_id: str, seconds: float, answer: Callable[[], bytes]) -> bottle.HTTPResponse | None:
    """A stream on the hub answering once the task ends; None (answer now) if it has ended, is
    unknown or seconds is 0."""
    after = routes.bus.last  # before the read: an end committed after it is seen by the source
    task = routes.executor.task(task_id)
    if task is None or task.state.finished or seconds <= 0:
        return None
    source = TaskWait(routes.bus, task_id, after, time.monotonic() + seconds, routes.executor.task, answer)
    if source.ends_within(min(seconds, SHORT_WAIT)):
        return None  # answered by this thread, the connection kept alive
    headers = [("Content-Type", JSON_TYPE), ("Cache-Control", "no-cache")]
    return routes.hub.serve(bottle.request.environ, "200 OK", headers, source)
