"""Report step process exits without a thread per process.

On Linux (pidfd, kernel 5.3+) one thread waits on every step's pidfd with epoll and reaps the
process when it exits; elsewhere each process gets a small waiter thread. Either way nothing
polls, and only the process's own Popen reaps it (never waitpid(-1)).
"""

from __future__ import annotations

import logging
import os
import selectors
import subprocess
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
OnExit = Callable[[int, float], None]  # (returncode, when)


class Reaper:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list[tuple[subprocess.Popen, OnExit]] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self._use_pidfd = hasattr(os, "pidfd_open") and _pidfd_works()
        if self._use_pidfd:
            self._selector = selectors.DefaultSelector()
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            self._thread = threading.Thread(target=self._loop, name="osreapi-reaper", daemon=True)
            self._thread.start()

    def watch(self, proc: subprocess.Popen, on_exit: OnExit) -> None:
        """Call on_exit(returncode, time) once proc has exited and been reaped."""
        if not self._use_pidfd:
            threading.Thread(target=self._wait_one, args=(proc, on_exit), name=f"osreapi-wait-{proc.pid}", daemon=True).start()
            return
        with self._lock:
            self._pending.append((proc, on_exit))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full of wake-ups already
            pass

    def close(self) -> None:
        if self._thread is None:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass
        self._thread.join(5)

    def _wait_one(self, proc: subprocess.Popen, on_exit: OnExit) -> None:
        returncode = proc.wait()
        self._report(on_exit, returncode)

    def _report(self, on_exit: OnExit, returncode: int) -> None:
        try:
            on_exit(returncode, self._clock())
        except Exception:
            log.exception("reporting a process exit failed")

    def _loop(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select():
                if key.data is None:
                    os.read(self._wake_r, 4096)
                    self._register_pending()
                    continue
                proc, on_exit = key.data
                self._selector.unregister(key.fd)
                os.close(key.fd)
                self._report(on_exit, proc.wait())  # exited: the wait returns at once
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _register_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for proc, on_exit in pending:
            try:
                fd = os.pidfd_open(proc.pid)
            except OSError:  # cannot watch it this way: a thread of its own
                threading.Thread(target=self._wait_one, args=(proc, on_exit), daemon=True).start()
                continue
            self._selector.register(fd, selectors.EVENT_READ, (proc, on_exit))


def _pidfd_works() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except OSError:
        return False
