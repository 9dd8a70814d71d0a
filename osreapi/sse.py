"""Server-Sent Events framing, for every stream that speaks it (log follows, the event feed)."""

from __future__ import annotations

KEEP_ALIVE = b": keep-alive\n\n"  # a comment: keeps proxies open, finds a client that went away


def sse_message(data: str, *, event: str | None = None, id: int | None = None) -> bytes:
    """One message: its event name, each line of `data` as a `data:` line, its id."""
    head = f"event: {event}\n" if event else ""
    tail = f"id: {id}\n" if id is not None else ""
    return (head + "".join(f"data: {line}\n" for line in data.split("\n")) + tail + "\n").encode("utf-8")
