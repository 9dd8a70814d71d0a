"""When a client last took bytes of an answer written for it without blocking.

Our own sends alone do not tell: the kernel's send buffer may hold megabytes (up to tcp_wmem's
maximum), and a send goes through again only once half of it is free. A client that reads slowly
but steadily (600 KB/s) empties those megabytes for longer than the client timeout without any
send of ours going through, and was dropped as if it read nothing. So when our sends say "stalled",
the kernel is asked how much it still holds for the peer (Linux: TIOCOUTQ, bytes written and not
yet acknowledged): less than when the last send would have blocked means the client took some.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from .sockerrors import would_block

try:
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # Windows, or a platform without the ioctl
    _OUTQ = None


def kernel_held(sock) -> int | None:
    """Bytes the kernel holds for the peer (unsent or unacknowledged); None when it cannot say."""
    if _OUTQ is None:
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
    except (OSError, ValueError):  # closed, or not a socket the ioctl knows
        return None
    return struct.unpack("i", raw)[0]


class Uptake:
    """When the client last took bytes: a send of ours went through, or the kernel's send buffer
    shrank. Only sends add to that buffer, so it shrinks only as the client acknowledges bytes."""

    def __init__(self, now: float) -> None:
        self.last = now
        self._held: int | None = None  # what the kernel held when we last looked

    def took(self, now: float) -> None:
        """A send went through (or nothing waits)."""
        self.last = now

    def blocked(self, sock, now: float) -> None:
        """A send would block: note what the kernel holds, to see it shrink later."""
        self._look(sock, now)

    def stalled(self, sock, now: float, limit: float) -> bool:
        """Nothing taken for longer than `limit` seconds (the kernel is asked only then)."""
        if now - self.last <= limit:
            return False
        self._look(sock, now)
        return now - self.last > limit

    def _look(self, sock, now: float) -> None:
        held = kernel_held(sock)
        if held is not None and self._held is not None and held < self._held:
            self.last = now
        self._held = held


def send_now(send: Callable[[memoryview], int], view: memoryview, uptake: Uptake, sock) -> int:
    """Send what the socket takes without waiting (Outbox answers and hub streams alike); note the
    client's uptake. The bytes sent; an OSError when the client has gone."""
    total = 0
    while total < len(view):
        try:
            sent = send(view[total:])
        except OSError as exc:
            if would_block(exc):  # over TLS the same bytes (and maybe more) are offered again
                break
            raise
        if not sent:
            break
        total += sent
    now = time.monotonic()
    if total or not view:  # took some, or nothing waits
        uptake.took(now)
    if total < len(view):
        uptake.blocked(sock, now)
    return total
