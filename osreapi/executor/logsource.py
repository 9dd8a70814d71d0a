"""A step's output as it is written: plain text (optionally followed) or Server-Sent Events.

The log file is the source; offsets are byte offsets into it, so a client that resumes at an
offset (?offset=N or Last-Event-ID) gets no gap and no duplicate. GET /<id>/<step>/log streams
it through the stream hub; Executor.logs reads it in process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import out_of_descriptors
from ..records import StepRecord
from ..sse import KEEP_ALIVE, sse_message
from .output import open_log

CHUNK = 64 * 1024
CONTINUATION_BYTES = bytes(range(0x80, 0xC0))  # UTF-8 bytes that never start a character
STATE_POLL = 0.25  # how often a follower asks whether its step has ended (when no output came)


def complete_utf8(data: bytes) -> int:
    """Length of the longest prefix of data that does not end inside a UTF-8 character."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte & 0x80 == 0:
            return end
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return end if back >= need else end - back
    return end


class LogSource:
    """A step's log as a stream source (the hub's StreamSource, http/streams.py): plain text or SSE events from a byte offset,
    optionally following the step until it ends. Never blocks: the file stays open and is read
    only when it has grown; the step's state is asked for at most every STATE_POLL seconds."""

    def __init__(
        self,
        path: Path,
        offset: int,
        *,
        sse: bool,
        follow: bool,
        step: Callable[[float], StepRecord | None],
        end_record: Callable[[], dict | None],
        max_output: int,
        watches: str | None = None,
    ) -> None:
        """watches: the task the step is of; the stream hub reads this source at its changes."""
        self._path = path
        self.watches = watches
        self._offset = offset
        self._sse = sse
        self._follow = follow
        self._step = step  # the step's record as read at or after a time (monotonic), None once it is gone
        self._end_record = end_record  # the step's record as JSON once it has ended, else None
        self._max_output = max_output
        self._file = None
        # Without follow, the output so far is what the log held when asked: a step printing fast
        # cannot make the answer longer than that.
        self._until = None if follow else self.size()
        self._next_poll = 0.0
        self._news_at = 0.0  # when its task last changed, as the stream hub said (see news)
        self._step_over = False  # the step has ended: read what is left, then finish
        self._preamble = b": osreapi log stream\n\n" if sse else b""
        self._aligned = offset == 0  # the first bytes read start a character (else skip to one)
        self._unopened = False  # the log could not be opened at the last try for want of a descriptor

    def read(self) -> tuple[bytes, bool]:
        if self._preamble:
            preamble, self._preamble = self._preamble, b""
            return preamble, False
        data = self._read_new()
        if data:
            return self._format(data), False
        if not self._follow or (self._step_over and not self._unopened):
            return self._tail(), True
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + STATE_POLL
            record = self._step(self._news_at)
            self._step_over = record is None or record.state.finished
            if self._step_over:  # what it wrote last, then the end: now, not at a later read
                return self.read()
        return b"", False

    def news(self, at: float) -> None:
        """Its task has changed by `at` (monotonic; the stream hub reads it now): the step's state
        is asked at once, as read since then, not up to STATE_POLL later. Its end is the last
        change of its task: a follower that let it pass would end only at the hub's next tick."""
        self._next_poll, self._news_at = 0.0, at

    def heartbeat(self) -> bytes:
        return KEEP_ALIVE if self._sse else b""

    def cut_short(self) -> bool:
        """A plain follow of a step that may still write is unfinished if the server stops now: its
        end is left out (SSE says a real end with `event: end`)."""
        return not self._sse and self._may_grow(False)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def whole(self) -> bytes:
        """Every byte of a source that does not follow, read now (for a small answer)."""
        parts = []
        done = False
        while not done:
            data, done = self.read()
            parts.append(data)
        self.close()
        return b"".join(parts)

    def size(self) -> int:
        try:
            return self._path.stat().st_size
        except FileNotFoundError:
            return 0

    def _read_new(self) -> bytes:
        if self._file is None:
            self._unopened = False
            try:
                self._file = open_log(self._path)  # a FIFO there would hold up the hub
            except FileNotFoundError:  # not written yet, or gone with its task
                return b""
            except OSError as exc:
                short = out_of_descriptors(exc)
                if short and not self._follow:
                    raise
                # Not a log the engine wrote (a link or a directory the step put there) reads as
                # empty, as a missing one. A followed one is tried again at the next read, to the
                # step's end; and past it while no descriptor is free (ending then, the stream said
                # the log was empty).
                self._unopened = short
                return b""
        end = os.fstat(self._file.fileno()).st_size if self._until is None else self._until
        if end <= self._offset:
            return b""
        self._file.seek(self._offset)
        data = self._file.read(min(CHUNK, end - self._offset))
        if self._sse and data:
            if not self._aligned:  # an offset inside a character: events start at the next one
                self._aligned = True
                skip = len(data) - len(data[:3].lstrip(CONTINUATION_BYTES) + data[3:])
                self._offset += skip
                data = data[skip:]
            data = self._whole_characters(data, more=self._may_grow(end - self._offset > len(data)))
        self._offset += len(data)
        return data

    def _may_grow(self, read_more: bool) -> bool:
        """More bytes may still come after these: the file holds more than was read, or it is
        followed and its step may still write."""
        return read_more or (self._until is None and not self._step_over)

    @staticmethod
    def _whole_characters(data: bytes, more: bool) -> bytes:
        """data without an incomplete character or a CR at its end (a CRLF cut between two events
        reads as two line breaks) while more may come: the rest is sent with what completes it.
        Nothing more can come: sent as it is (a bad byte still moves on)."""
        if not more:
            return data
        keep = complete_utf8(data)
        if data[:keep].endswith(b"\r"):
            keep -= 1
        return data[:keep]

    def _format(self, data: bytes) -> bytes:
        return sse_message(data.decode("utf-8", "replace"), id=self._offset) if self._sse else data

    def _tail(self) -> bytes:
        """What ends the stream: the cap notice (when the stored result was cut) and, for SSE, the
        step's record."""
        notice = self._cap_notice() if self._follow or self._sse else None
        if not self._sse:
            return f"\n{notice}\n".encode() if notice else b""
        tail = sse_message(notice, event="notice") if notice else b""
        record = self._end_record()
        if record is not None:
            tail += sse_message(json.dumps(record, ensure_ascii=False), event="end")
        return tail

    def _cap_notice(self) -> str | None:
        size = self.size()
        if size <= self._max_output:
            return None
        return (
            f"... output is {size} bytes, over the {self._max_output}-byte cap: "
            f"the stored result keeps the head and the tail ..."
        )
