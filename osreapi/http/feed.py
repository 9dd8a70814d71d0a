"""GET /events: the event bus as Server-Sent Events, one subscriber's stream source.

`FeedSource` follows the stream hub's StreamSource protocol: `read()` hands back what is new,
`heartbeat()` a comment that keeps proxies open and finds vanished clients. The bus wakes the hub
once per change for every subscriber at once, and each event is rendered once per language for all
of them (`EventFrames`): an event tells how things stood when it happened, its ttl included.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from ..events import Batch, Event, EventBus, Reset
from ..sse import KEEP_ALIVE, sse_message
from . import render

OPENING = b": osreapi events\nretry: 2000\n\n"
# Bytes one read renders (past its first event). A finished step's event carries its output (up to
# --max_output, six times that as JSON escapes): a subscriber far behind, handed a whole batch at
# once, held hundreds of MiB; the hub reads again as its buffer drains.
READ_BUDGET = 64 * 1024


def sse(kind: str, seq: int, data: Any) -> bytes:
    return sse_message(json.dumps(data, ensure_ascii=False, separators=(",", ":")), event=kind, id=seq)


def event_json(event: Event, lang: str) -> dict[str, Any]:
    """A task event's data is its entry as GET / listed it when the event happened; a step event's
    {"id", "step"}; a delete event's {"id"}."""
    if event.deleted:
        return {"id": event.task.id}
    if event.step is None:
        return render.task_summary_json(event.task, lang, event.at)
    return {"id": event.task.id, "step": render.step_json(event.step, event.task, lang, event.at)}


class EventFrames:
    """Each event's SSE frame, rendered once per language for every subscriber: a finished step's
    event carries its output, and N subscribers rendering it N times cost the server's CPU (the GIL)
    in proportion to how many watch. The newest frames are kept, up to `budget` bytes."""

    def __init__(self, budget: int = 8 * 1024 * 1024) -> None:
        self._budget = budget
        self._held = 0
        self._frames: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def frame(self, event: Event, lang: str) -> bytes:
        key = (event.seq, lang)
        with self._lock:
            kept = self._frames.get(key)
        if kept is not None:
            return kept
        frame = sse(event.kind, event.seq, event_json(event, lang))
        with self._lock:
            if key not in self._frames:
                self._frames[key] = frame
                self._held += len(frame)
            while self._held > self._budget and len(self._frames) > 1:
                self._held -= len(self._frames.popitem(last=False)[1])
        return frame


class FeedSource:
    def __init__(self, bus: EventBus, frames: EventFrames, after: int | None, task_id: str | None, lang: str) -> None:
        self._bus = bus
        self._frames = frames
        self._cursor = bus.last if after is None else after  # no Last-Event-ID: only what comes next
        self._task_id = task_id
        self.watches = task_id  # the hub reads it at this task's changes (None: every task's)
        self._lang = lang
        self._opened = False

    def read(self) -> tuple[bytes, bool]:
        parts = [] if self._opened else [OPENING]
        self._opened = True
        batch = self._bus.since(self._cursor, self._task_id)
        if isinstance(batch, Reset):
            parts.append(sse("reset", batch.last, {"last": batch.last}))
            self._cursor = batch.last
            return b"".join(parts), False
        events, done = self._render(batch)
        return b"".join(parts + events), done

    def _render(self, batch: Batch) -> tuple[list[bytes], bool]:
        """The batch's events up to READ_BUDGET bytes (one at least); the cursor moves past those
        sent. Done once the one task followed has been deleted: nothing more can come for it."""
        parts: list[bytes] = []
        size = 0
        for event in batch.events:
            if size >= READ_BUDGET:
                return parts, False  # the rest at the next read, from the last one sent
            parts.append(self._frames.frame(event, self._lang))
            size += len(parts[-1])
            self._cursor = event.seq
            if event.deleted and self._task_id is not None:
                return parts, True
        self._cursor = batch.upto  # past the events the task filter skipped too
        return parts, False

    def heartbeat(self) -> bytes:
        return KEEP_ALIVE

    def close(self) -> None:
        """Nothing to release: the bus keeps no state per subscriber."""
