"""A step's output as it is written: plain text (optionally followed) or Server-Sent Events.

The log file is the source; offsets are byte offsets into it, so a client that resumes at an
offset (?offset=N or Last-Event-ID) gets no gap and no duplicate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..records import StepRecord

CHUNK = 64 * 1024
POLL_INTERVAL = 0.05  # how often a follower looks for new output when there is none
HEARTBEAT = 15.0


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


def sse_event(text: str, offset: int) -> bytes:
    lines = text.split("\n")
    return ("".join(f"data: {line}\n" for line in lines) + f"id: {offset}\n\n").encode("utf-8")


class LogReader:
    def __init__(
        self,
        path: Path,
        step: Callable[[], StepRecord | None],
        stop: threading.Event,
        max_output: int,
    ) -> None:
        self._path = path
        self._step = step  # the step's current record, None once it is gone
        self._stop = stop
        self._max_output = max_output

    def _read(self, offset: int) -> bytes:
        try:
            with open(self._path, "rb") as log:
                log.seek(offset)
                return log.read(CHUNK)
        except FileNotFoundError:
            return b""

    def _size(self) -> int:
        try:
            return self._path.stat().st_size
        except FileNotFoundError:
            return 0

    def chunks(self, offset: int, follow: bool, utf8_whole: bool = False) -> Iterator[tuple[bytes, int] | None]:
        """Yield (data, offset after it) as output appears; None when idle (a chance to heartbeat).
        Ends at the end of the log (not following), or when the step has ended and all is read."""
        while True:
            data = self._read(offset)
            if utf8_whole and data:
                data = data[: complete_utf8(data)] or data  # a lone bad byte still moves on
            if data:
                offset += len(data)
                yield data, offset
                continue
            if not follow or self._stop.is_set():
                return
            record = self._step()
            if record is None or record.state.finished:
                data = self._read(offset)  # written between the last read and the end
                if data:
                    continue
                return
            yield None
            self._stop.wait(POLL_INTERVAL)

    def cap_notice(self) -> str | None:
        size = self._size()
        if size <= self._max_output:
            return None
        return (
            f"... output is {size} bytes, over the {self._max_output}-byte cap: "
            f"the stored result keeps the head and the tail ..."
        )

    def plain(self, offset: int, follow: bool) -> Iterator[bytes]:
        yield b""  # headers go out at once
        for item in self.chunks(offset, follow):
            if item is not None:
                yield item[0]
        if follow:
            notice = self.cap_notice()
            if notice:
                yield f"\n{notice}\n".encode()

    def sse(self, offset: int, follow: bool, end_record: Callable[[], dict | None]) -> Iterator[bytes]:
        yield b": osreapi log stream\n\n"
        idle_since = time.monotonic()
        for item in self.chunks(offset, follow, utf8_whole=True):
            if item is None:
                if time.monotonic() - idle_since > HEARTBEAT:
                    idle_since = time.monotonic()
                    yield b": keep-alive\n\n"
                continue
            data, after = item
            idle_since = time.monotonic()
            yield sse_event(data.decode("utf-8", "replace"), after)
        notice = self.cap_notice()
        if notice:
            yield f"event: notice\ndata: {notice}\n\n".encode()
        record = end_record()
        if record is not None and not self._stop.is_set():
            yield f"event: end\ndata: {json.dumps(record, ensure_ascii=False)}\n\n".encode()
