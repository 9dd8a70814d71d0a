"""The answer to one control request, given once every part of the work has arrived.

A control request (pause a task, kill a step...) is answered after the processes were signalled
and the records committed; the actors doing those parts each call arrive(), so none of them waits
for another, and the HTTP thread waits on one future with a bound.
"""

from __future__ import annotations

import threading

import pykka


class Reply:
    def __init__(self) -> None:
        self._future: pykka.ThreadingFuture = pykka.ThreadingFuture()
        self._left = 1  # the part of whoever handles the request first
        self._lock = threading.Lock()
        self._done = False

    def expect(self, parts: int = 1) -> None:
        """More parts to wait for (call before handing them out)."""
        with self._lock:
            self._left += parts

    def arrive(self, value: object = None) -> None:
        """One part is done; the last one's value is what get() returns."""
        with self._lock:
            self._left -= 1
            if self._left > 0 or self._done:
                return
            self._done = True
        self._future.set(value)

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._future.set_exception((type(error), error, None))

    def get(self, timeout: float) -> object:
        """The last part's value; raise what failed, or pykka.Timeout."""
        return self._future.get(timeout=timeout)


def arrive(reply: Reply | None) -> None:
    if reply is not None:
        reply.arrive()
