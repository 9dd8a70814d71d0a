"""Report step process exits and copy their output to log files, without a thread per process.

On Linux (pidfd, kernel 5.3+) one thread waits with epoll on every step's pidfd and output pipe:
it copies output into the step's log file (capped, see LogSink) and, when the process exits,
reaps it, drains its pipe and reports. Elsewhere each process gets a small thread doing the same.
Only the process's own Popen reaps it (never waitpid(-1)).

A step's log is closed when its process exits. A daemon kept with keep_background may hold the
pipe open for its whole life: its pipe is then handed to a detached `cat` that discards what it
writes, so the server keeps nothing for it and the daemon never gets SIGPIPE, the server's
restarts included.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from .process import CREATE_FLAGS, PRIVATE_FILE

# The step's log, made at its first byte: never through a link the step put there, never waiting
# for a reader of a FIFO it put there (ENXIO without one; a full one refuses the write).
LOG_FLAGS = CREATE_FLAGS | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)

log = logging.getLogger(__name__)
OnExit = Callable[[int, float], None]  # (returncode, when)
TAIL = 64 * 1024  # bytes kept from the end of an output over the cap
KEEP_SMALL = 16 * 1024  # an output up to this size is also kept in memory for the step's record
# Runs `cat` in the background of a shell that exits at once: the `cat` belongs to init, not to us.
# Its stdin is given explicitly: a background job's implicit stdin is /dev/null.
DISCARD = "exec 3<&0 </dev/null; cat <&3 >/dev/null 2>&1 3<&- &"


class LogSink:
    """A step's output pipe into its log file: the first `cap` bytes, then (once the pipe closes)
    a marker line saying how many bytes were dropped and the last 64 KiB. A write the disk refuses
    is dropped and counted, never raised. The file is made at the first byte: a step that prints
    nothing has none (a create cost a tenth of a silent step's CPU on ext4 after deletions). What
    the step put in its place before that (a directory, a FIFO, a link) is not written through:
    the bytes are dropped from the log, and the marker says why."""

    def __init__(self, fd: int, path: Path, cap: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._path = path
        self._log_fd: int | None = None
        self._room = cap
        self._tail = bytearray()
        self._dropped = 0
        self._refused = 0  # of those, the bytes the log file refused (kept in memory while it has none)
        self._why: str | None = None  # why bytes went missing from the log, other than the cap
        self.closed = False
        self._kept: bytearray | None = bytearray()  # the whole output while it is small

    def pump(self) -> bool:
        """Copy what the pipe holds now; False once it is at its end."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self._take(data)

    def _take(self, data: bytes) -> None:
        head = data[: max(0, self._room)]
        if head:
            self._room -= len(head)
            self._write(head)
        rest = data[len(head):]
        if rest:
            self._dropped += len(rest)
            self._tail += rest
            del self._tail[:-TAIL]

    def small_output(self) -> bytes | None:
        """The whole output once the sink is closed, if it was at most KEEP_SMALL bytes (read back
        from the log file otherwise): a short step's output needs no file read."""
        return bytes(self._kept) if self.closed and self._kept is not None else None

    def _write(self, data: bytes) -> bool:
        if self._kept is not None:
            self._kept += data
            if len(self._kept) > KEEP_SMALL:
                self._kept = None
        view = memoryview(data)
        try:
            if self._log_fd is None:  # O_TRUNC: a leftover of a reused id goes
                self._log_fd = os.open(self._path, LOG_FLAGS, PRIVATE_FILE)
            while view:  # a raw write may be short (a disk nearly full): the rest raises or goes
                view = view[os.write(self._log_fd, view):]
            return True
        except OSError as exc:  # ENOSPC and friends: the bytes are lost, the step goes on
            if self._log_fd is not None:
                self._kept = None  # the file says what was lost (without one, the record keeps the output)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            self._why = "the disk was full" if full else f"the log could not be written: {exc.strerror or exc}"
            self._dropped += len(view)
            self._refused += len(view)
            return False

    def close(self, hand_off: bool = False) -> None:
        """Copy what is left, write the drop marker, close the log and the pipe. hand_off: the
        pipe may still have writers (kept daemons); what they write later is discarded elsewhere."""
        if self.closed:
            return
        self.closed = True
        writers_left = False
        try:
            writers_left = self.pump()
            if self._dropped:
                self._write(self._marker() + bytes(self._tail))
        finally:  # a fault above (a bug) cuts the output short: the descriptors are closed all the same
            if self._log_fd is not None:
                os.close(self._log_fd)
            if hand_off and writers_left:
                _discard_elsewhere(self.fd)
            os.close(self.fd)


    def _marker(self) -> bytes:
        """The line before the kept tail. With no log file made, what the file refused is all in
        the record (it said those bytes were dropped, above the whole output)."""
        lost = self._dropped - len(self._tail)
        if self._log_fd is None and self._kept is not None:
            lost -= self._refused
            if not lost:
                return f"\n... no log file ({self._why}): the output above is whole, in this record only ...\n".encode()
        return (f"\n... {lost} bytes of output dropped ({self._why or 'over the --max_log cap'}); "
                f"the last {len(self._tail)} bytes follow ...\n").encode()


def _discard_elsewhere(fd: int) -> None:
    """Give a pipe's read end to a detached `cat` that discards what comes until its writers close it."""
    try:
        os.set_blocking(fd, True)  # the flag is shared with cat, whose read would fail with EAGAIN
        # Not waited for (the reaper thread serves every step): the shell exits at once, and
        # subprocess reaps it at a later Popen.
        subprocess.Popen(["sh", "-c", DISCARD], stdin=fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd="/", start_new_session=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("a kept daemon's output cannot be discarded (%s): its next write gets SIGPIPE", exc)


class _Watch:
    __slots__ = ("proc", "sink", "on_exit", "keep_output", "pidfd")

    def __init__(self, proc: subprocess.Popen, sink: LogSink, on_exit: OnExit, keep_output: bool) -> None:
        self.proc = proc
        self.sink = sink
        self.on_exit = on_exit
        self.keep_output = keep_output  # kept background processes may go on writing after the exit
        self.pidfd: int | None = None  # open while the exit is watched (see Reaper._close_pidfd)


class Reaper:
    """One thread waits (epoll) on every step's pidfd and output pipe. A watch is registered by
    the thread that started the process, straight into the epoll set: no wake-up of this thread
    per start, which under load cost a GIL hand-off or two each."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[str, _Watch]] = {}  # fd -> ("exit" | "output", watch)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._use_pidfd = hasattr(os, "pidfd_open") and hasattr(select, "epoll") and _pidfd_works()
        if self._use_pidfd:
            self._epoll = select.epoll()
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            self._epoll.register(self._wake_r, select.EPOLLIN)
            self._thread = threading.Thread(target=self._loop, name="osreapi-reaper", daemon=True)
            self._thread.start()

    def watch(self, proc: subprocess.Popen, sink: LogSink, on_exit: OnExit, keep_output: bool = False) -> None:
        """Copy proc's output through sink; call on_exit(returncode, time) once it has exited,
        been reaped and its output drained."""
        watch = _Watch(proc, sink, on_exit, keep_output)
        try:
            pidfd = os.pidfd_open(proc.pid) if self._use_pidfd else None
        except OSError:  # cannot watch it this way
            pidfd = None
        if pidfd is None:  # a thread of its own
            threading.Thread(target=self._wait_one, args=(watch,), name=f"osreapi-wait-{proc.pid}", daemon=True).start()
            return
        watch.pidfd = pidfd
        with self._lock:  # known before the epoll set can report them
            self._watched[sink.fd] = ("output", watch)
            self._watched[pidfd] = ("exit", watch)
        self._epoll.register(sink.fd, select.EPOLLIN)
        self._epoll.register(pidfd, select.EPOLLIN)

    def close(self) -> None:
        if self._thread is None:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass
        self._thread.join(5)

    def _wait_one(self, watch: _Watch) -> None:
        try:
            self._follow_one(watch)
        except Exception:  # a bug: this thread is the only one to report the process's end
            log.exception("reaper: following process %d failed; its output is cut short", watch.proc.pid)
            self._close_output(watch)  # not left unread: a step that writes more than the pipe holds would block
        self._exited(watch)  # waits for the exit (this thread is the process's own)

    @staticmethod
    def _follow_one(watch: _Watch) -> None:
        """Copy the process's output until it exits."""
        selector = _selector_without_descriptor()
        try:
            selector.register(watch.sink.fd, selectors.EVENT_READ)
            open_pipe = True
            while watch.proc.poll() is None:
                if open_pipe and selector.select(0.05) and not watch.sink.pump():
                    selector.unregister(watch.sink.fd)
                    open_pipe = False
                elif not open_pipe:
                    watch.proc.wait()
        finally:
            selector.close()

    def _exited(self, watch: _Watch) -> None:
        """The process is reaped: drain and close its output (unless kept), then report."""
        returncode = watch.proc.wait()
        self._close_output(watch, hand_off=watch.keep_output)  # a fault cuts it short: the end is reported
        try:
            watch.on_exit(returncode, self._clock())
        except Exception:
            log.exception("reporting a process exit failed")

    def _loop(self) -> None:
        while not self._closed:
            # The fds this batch closed: another thread may already hold their numbers for a new
            # watch, in the table but not yet in the epoll set; the batch's later events for them
            # are about the closed ones (stale), and acting on the new watch would close its fds
            # under watch(). A skipped event of a live fd comes back at the next poll.
            closed: set[int] = set()
            for fd, _ in self._epoll.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                if fd in closed:
                    continue
                with self._lock:
                    kind, watch = self._watched.get(fd, (None, None))
                try:
                    self._event(fd, kind, watch, closed)
                except Exception:  # a bug: this thread reports every step's end, it must go on
                    log.exception("reaper: a step's %s event failed; its output may be cut short", kind)
                    closed.add(fd)
                    self._event_failed(fd, kind, watch)
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _event_failed(self, fd: int, kind: str | None, watch: _Watch | None) -> None:
        """After a fault in an event's handling: the fd is not polled again, and the step ends."""
        if kind == "exit":  # its pidfd closed if the fault came first (once: its number may be another's now)
            self._close_pidfd(watch)
            self._exited(watch)
            return
        self._forget(fd)
        if kind == "output":  # closed, not left unread: a step that writes more than
            self._close_output(watch)  # the pipe holds would block for ever (now EPIPE)

    @staticmethod
    def _close_output(watch: _Watch, hand_off: bool = False) -> None:
        """Close a step's output; a fault in it (a bug) cuts the output short, and is logged."""
        try:
            watch.sink.close(hand_off=hand_off)
        except Exception:
            log.exception("closing a step's output failed")

    def _event(self, fd: int, kind: str | None, watch: _Watch | None, closed: set[int]) -> None:
        if kind == "exit" and watch.proc.poll() is not None:  # never a wait() here for a running one
            closed.update((fd, watch.sink.fd))
            self._close_pidfd(watch)
            self._forget_output(watch)
            self._exited(watch)
        elif kind == "output" and not watch.sink.pump():
            closed.add(fd)
            self._forget_output(watch)
            watch.sink.close()

    def _close_pidfd(self, watch: _Watch) -> None:
        """Stop watching an exited step's pidfd and close it, once, whatever fails on the way: a
        fault in the exit's handling before the close left it open for the server's life."""
        fd, watch.pidfd = watch.pidfd, None
        if fd is None:
            return
        try:
            self._forget(fd)  # first: once closed, its number may be another watch's
        finally:
            os.close(fd)

    def _forget(self, fd: int) -> None:
        with self._lock:
            self._watched.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass

    def _forget_output(self, watch: _Watch) -> None:
        if not watch.sink.closed:
            self._forget(watch.sink.fd)


def _selector_without_descriptor() -> selectors.BaseSelector:
    """poll() where there is one: an epoll or kqueue selector takes a descriptor of its own, and
    this waiter is the fallback when pidfd_open() found none free (EMFILE): its thread died at its
    start, and the step's end was never reported (running for ever, its pool slot taken)."""
    return selectors.PollSelector() if hasattr(selectors, "PollSelector") else selectors.DefaultSelector()


def _pidfd_works() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except OSError:
        return False
