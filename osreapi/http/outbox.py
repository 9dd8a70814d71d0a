"""Answers written without blocking a worker (cheroot's `conn.wfile`, replaced).

cheroot writes an answer with a blocking send: a client that asks for a big answer and reads
nothing holds the worker until the socket times out, and a few dozen such clients hold every
worker. Here a write sends what the socket takes now and keeps the rest in memory; the request
intake's selector thread sends it as the client reads (and only then reads the connection's next
request). The bytes kept for all slow readers together are bounded: past the budget an answer is
dropped and its connection closed, never waited for.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque

from .sockerrors import is_tls
from .uptake import Uptake, send_now

log = logging.getLogger(__name__)
BUDGET = 128 * 1024 * 1024  # bytes kept for slow readers, all connections together
WARN_EVERY = 10.0  # seconds between two warnings about dropped answers
MIN_RATE = 32 * 1024  # bytes per second a client must at least take a kept answer at (past the client timeout)
_TLS_SLICE = 64 * 1024  # a TLS write is offered again with the same bytes: a fixed slice of the head


class OutBudget:
    """The bytes kept by every Outbox of one server."""

    def __init__(self, limit: int = BUDGET) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()
        self._dropped = 0  # answers dropped since the last warning
        self.dropped_total = 0  # for /metrics
        self._next_warning = 0.0

    def take(self, size: int) -> bool:
        with self._lock:
            if self._used + size > self.limit:
                return False
            self._used += size
            return True

    def dropped(self, size: int) -> None:
        """An answer found no room: one WARNING line at most every WARN_EVERY seconds, with how
        many were dropped since the last one (a flood of them must not flood the log)."""
        with self._lock:
            self._dropped += 1
            self.dropped_total += 1
            now = time.monotonic()
            if now < self._next_warning:
                return
            self._next_warning = now + WARN_EVERY
            count, self._dropped = self._dropped, 0
        log.warning("%d answer(s) dropped (the last of %d bytes): %d bytes already wait for slow readers",
                    count, size, self._used)

    def give(self, size: int) -> None:
        with self._lock:
            self._used -= size

    @property
    def used(self) -> int:
        return self._used


class Outbox:
    """A connection's writer: never blocks; what the socket does not take waits in `_queue`."""

    def __init__(self, sock, budget: OutBudget) -> None:
        self._sock = sock
        self._budget = budget
        self._tls = is_tls(sock)
        # write(2) needs the fd non-blocking, as it is under a socket timeout (cheroot sets one)
        plain = os.name == "posix" and not self._tls and sock.gettimeout() is not None
        self._plain_fd = sock.fileno() if plain else None
        self._queue: deque[memoryview] = deque()
        self._head_sent = 0  # bytes of the queue's first entry already sent
        self._kept = 0  # bytes the queue's entries hold, all of them until sent whole: the budget's share
        self.bytes_written = 0  # cheroot's statistics read it
        self._uptake = Uptake(time.monotonic())  # when the client last took bytes
        self._due = 0.0  # when what is kept should have been taken at MIN_RATE (monotonic)

    def write(self, data: bytes) -> int:
        """Send what the socket takes now, keep the rest; an OSError when the client has gone, or
        when the budget has no room for the rest (the answer is dropped: cheroot then closes)."""
        view = memoryview(bytes(data) if isinstance(data, bytearray) else data).cast("B")
        size = len(view)
        self.bytes_written += size
        if not size:  # an empty entry would stop `drain` for good
            return 0
        if not self._queue:
            sent = self._send(view)
            if sent == size:
                return size
            if sent:  # a view of the rest would keep all of `data`: keep a copy of the rest alone
                view = memoryview(view[sent:].tobytes())
        if not self._budget.take(len(view)):
            self._budget.dropped(size)
            raise BrokenPipeError(errno.EPIPE, "no room left to keep this answer for a slow reader")
        if not self._queue:
            self._due = time.monotonic()
        self._due += len(view) / MIN_RATE
        self._queue.append(view)
        self._kept += len(view)
        return size

    def drain(self) -> bool:
        """Send what waits, as far as the socket takes it (intake thread). True once all is sent;
        an OSError when the client has gone."""
        while self._queue:
            head = self._queue[0]
            sent = self._send(head[self._head_sent :])
            if not sent:
                return False
            self._head_sent += sent
            if self._head_sent == len(head):  # its memory is freed only now
                self._queue.popleft()
                self._head_sent = 0
                self._kept -= len(head)
                self._budget.give(len(head))
        return True

    def discard(self) -> None:
        """Forget what waits (the connection closes without it)."""
        self._budget.give(self._kept)
        self._queue.clear()
        self._head_sent = self._kept = 0

    @property
    def queued(self) -> int:
        """Bytes of the answer the client has not taken yet."""
        return self._kept - self._head_sent

    def overdue(self, timeout: float) -> bool:
        """The client has taken nothing of what is kept for longer than `timeout` seconds, or takes
        it slower than MIN_RATE (a trickle of bytes would otherwise hold the budget for ever)."""
        now = time.monotonic()
        return now > self._due + timeout or self._uptake.stalled(self._sock, now, timeout)

    def flush(self) -> None:
        """Nothing is buffered here but what the socket refused: see `drain`."""

    def close(self) -> None:
        self.discard()

    def _send(self, view: memoryview) -> int:
        """Bytes sent without waiting (0 when the socket takes none now)."""
        return send_now(self._send_once, view, self._uptake, self._sock)

    def _send_once(self, view: memoryview) -> int:
        if self._plain_fd is not None:
            # The socket has a timeout, so its fd is non-blocking, but socket.send would first wait
            # for room (poll) up to that timeout: write(2) takes what fits and returns.
            return os.write(self._plain_fd, view)
        if self._tls:
            view = view[:_TLS_SLICE]
        timeout = self._sock.gettimeout()
        self._sock.settimeout(0)
        try:
            return self._sock.send(view)
        finally:
            self._sock.settimeout(timeout)


def waiting(conn) -> int:
    """Bytes of a connection's last answer its client has not taken yet (0 when its writer is not
    an Outbox: cheroot swaps in its own for a plain request on the TLS port)."""
    return conn.wfile.queued if isinstance(conn.wfile, Outbox) else 0
