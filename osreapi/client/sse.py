"""Server-sent events read from a response's bytes (the WHATWG event-stream rules), with a bound on
one line and on one event: a server sending `data: ` and then bytes without end made httpx-sse
buffer for as long as it lasted."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..plaintext import ASCII_DIGITS

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_RETRY_DIGITS = 15  # ms, ample; int() refuses over 4,300 digits (a ValueError out of Client.logs)


@dataclass(frozen=True)
class Event:
    event: str  # "message" unless an `event:` field named it
    data: str  # its `data:` lines joined by "\n"
    id: str  # the last `id:` seen on the stream, this event's or an earlier one's
    retry: int | None  # milliseconds a `retry:` field asked for, if any


class EventTooLong(ValueError):
    """One line, or one event, is over the bound."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line or an event over {limit} bytes")
        self.limit = limit


def lines(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """The lines of a byte stream (ended by CRLF, LF or CR), without their ends; EventTooLong as
    soon as a line, finished or not, is over `limit` bytes. A last line without its end is dropped."""
    partial = bytearray()
    after_cr = False  # a CR ended the last chunk: an LF starting the next is the same line end
    for chunk in chunks:
        if not chunk:  # keeps a CR at the last chunk's end waiting for its LF
            continue
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        after_cr = False
        start = 0
        for end in _LINE_END.finditer(chunk):
            partial += chunk[start : end.start()]
            if len(partial) > limit:
                raise EventTooLong(limit)
            yield bytes(partial)
            partial.clear()
            start = end.end()
            after_cr = end.group() == b"\r" and start == len(chunk)
        partial += chunk[start:]
        if len(partial) > limit:
            raise EventTooLong(limit)


def events(chunks: Iterable[bytes], limit: int) -> Iterator[Event]:
    """The events of a stream; EventTooLong when a line or an event's data is over `limit` bytes.
    An event not ended by an empty line (the stream cut) is dropped, as the rules say."""
    data: list[str] = []
    size = 0
    kind, last_id, retry = "", "", None
    for number, raw in enumerate(lines(chunks, limit)):
        line = (raw[len(_BOM) :] if number == 0 and raw.startswith(_BOM) else raw).decode("utf-8", "replace")
        if not line:
            if data:
                yield Event(kind or "message", "\n".join(data), last_id, retry)
            data, size, kind, retry = [], 0, "", None
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")  # one space, not more
        if field == "data":
            size += len(raw) + 1
            if size > limit:
                raise EventTooLong(limit)
            data.append(value)
        elif field == "event":
            kind = value
        elif field == "id" and "\0" not in value:
            last_id = value
        elif field == "retry" and ASCII_DIGITS.fullmatch(value) and len(value) <= _RETRY_DIGITS:
            retry = int(value)
        # an empty field name is a comment (a server's keep-alive); other fields are ignored
