"""Server-Sent Events framing, for every stream that speaks it (log follows, the event feed)."""

from __future__ import annotations

import re

KEEP_ALIVE = b": keep-alive\n\n"  # a comment: keeps proxies open, finds a client that went away


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what ends a line for an SSE reader (the format has no escape)


def sse_message(data: str, *, event: str | None = None, id: int | None = None) -> bytes:
    """One message: its event name, each line of `data` as a `data:` line, its id. A carriage
    return ends a line too (a progress bar's `\r` arrives as a line break): sent raw, a reader
    would end the `data:` line there and drop what follows it as a nameless field."""
    head = f"event: {event}\n" if event else ""
    tail = f"id: {id}\n" if id is not None else ""
    lines = _LINE_BREAK.split(data) if "\n" in data or "\r" in data else (data,)  # JSON: one line
    return (head + "".join(f"data: {line}\n" for line in lines) + tail + "\n").encode("utf-8")
