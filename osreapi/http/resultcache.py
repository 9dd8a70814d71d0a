"""GET /<id> of a finished task, rendered once per language.

A finished task's records never change until it is deleted or expires; only its `ttl` (time left)
does. The body is kept with the ttl cut out and put back on each answer. An entry is used only
while no task has been deleted since it was made (Executor.deletions) and before its expiry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass

from ..executor.durations import format_duration
from ..records import StepRecord, TaskRecord
from . import render

_PROBE_LEFT = 1234567.891  # a ttl no real answer renders with, cut out of the cached body
# A task's answer carries its steps' outputs (up to --max_output each): only answers this small are
# kept, so that 1,024 of them hold at most 64 MiB (big ones cost their reading and rendering anyway).
MAX_ENTRY = 64 * 1024


@dataclass(frozen=True)
class _Entry:
    deletions: int
    expires: float
    parts: tuple[bytes, ...]  # the encoded body split where the ttl goes

    def body(self, now: float) -> bytes:
        ttl = format_duration(max(0.0, self.expires - now))
        return f'"ttl":"{ttl}"'.encode("utf-8").join(self.parts)  # under 1 ms Go says µs: not ASCII


class FinishedResults:
    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, task_id: str, lang: str, deletions: int, now: float) -> bytes | None:
        # No lock: each OrderedDict call is one step under the GIL, and a lock taken by every
        # reader made concurrent readers of the hottest route queue on it.
        key = (task_id, lang)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.deletions != deletions or now >= entry.expires:
            self._entries.pop(key, None)
            return None
        with suppress(KeyError):  # evicted by a writer meanwhile
            self._entries.move_to_end(key)
        return entry.body(now)

    def put(self, task: TaskRecord, steps: tuple[StepRecord, ...], lang: str, deletions: int, now: float) -> bytes | None:
        """Keep a finished task's answer (unless it is over MAX_ENTRY); return it as of `now`
        (None: not a task to keep)."""
        if task.expires is None or not task.state.finished:
            return None
        code, msg, data = render.result_json(task, steps, lang, task.expires - _PROBE_LEFT)
        probe = f'"ttl":"{format_duration(_PROBE_LEFT)}"'.encode("ascii")
        entry = _Entry(deletions, task.expires, tuple(render.envelope(code, msg, data).encode("utf-8").split(probe)))
        if sum(map(len, entry.parts)) > MAX_ENTRY:
            return entry.body(now)  # answered, not kept
        with self._lock:
            self._entries[(task.id, lang)] = entry
            self._entries.move_to_end((task.id, lang))
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return entry.body(now)
