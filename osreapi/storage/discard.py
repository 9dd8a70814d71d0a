"""Workspaces removed off the store's thread.

A deleted, swept or replaced task's files were removed by the store, the single writer, before it
went on: a workspace of 50,000 files (an `npm install`) held every other write, and so every step's
start, for about a second. The store now only moves the workspace aside (one rename into the trash,
its directory made again empty, so that its name stays taken as before) and this thread removes
the tree. What cannot be removed for want of a descriptor is tried again; whatever a crash or a
stop leaves in the trash is removed after the next start."""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path

from . import removal

log = logging.getLogger(__name__)

TRASH = "trash"  # in the data dir, beside the workspace root: moved there by a rename (elsewhere: removed in place)
RETRY_AFTER = 1.0  # seconds before a tree left for want of a descriptor is tried again


class Discarder:
    def __init__(self, data_dir: Path) -> None:
        self.trash = data_dir / TRASH
        self._queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._idle = threading.Event()  # nothing queued nor deferred (tests and close() wait on it)
        self._idle.set()
        self._pending = 0  # queued or deferred; changed on the caller's side (+) and this thread's (-)
        self._count = threading.Lock()
        self._warned = False  # of a trash that is not a directory (once)
        self._stopping = threading.Event()  # set by close(): no tree is begun after the one in hand
        self._thread = threading.Thread(target=self._run, name="osreapi-discard", daemon=True)
        self._thread.start()
        self._take_leftovers()

    def detach(self, workspace: Path) -> bool:
        """Move a workspace's tree into the trash and make its directory again, empty; its removal
        follows on this thread. False if it could not be moved whole (a link or no directory in
        its place, another file system, a disk with no room for the new directory): the caller
        removes it where it is, as before."""
        if workspace.is_symlink() or not workspace.is_dir():
            return False
        aside = self.trash / f"{workspace.name}.{uuid.uuid4().hex}"  # its task named in a warning
        try:
            with suppress(FileExistsError):
                self.trash.mkdir(mode=0o700)
            if not self._trash_is_ours():
                return False
            os.rename(workspace, aside)
        except OSError:
            return False
        try:
            workspace.mkdir(mode=0o700)
        except OSError as exc:  # (a full disk): put it back, removed in place by the caller
            try:
                os.rename(aside, workspace)
            except OSError:
                log.warning("workspace %s: moved to the trash, not made again (%s)", workspace.name, exc)
                self._discard(aside)
                return True
            return False
        self._discard(aside)
        return True

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def close(self, timeout: float) -> None:
        """Stop after the tree in hand (what is left goes after the next start): not behind every
        tree queued, which a close waited for, and which went on being removed after it returned
        (in a data dir whose lock was given up)."""
        self._stopping.set()
        self._queue.put(None)  # wakes the thread if it waits
        self._thread.join(timeout)

    def _trash_is_ours(self) -> bool:
        """Whether the trash is a real directory. It is what a step reaches as ../../trash: a link
        put there is never followed (the next start removed all that the directory it led to held);
        workspaces are then removed in place."""
        if stat.S_ISDIR(os.lstat(self.trash).st_mode):
            return True
        if not self._warned:
            self._warned = True
            log.warning("%s is not a directory (a link a step made?): it is left alone, workspaces are removed in "
                        "place; remove it to have them removed in the background again", self.trash)
        return False

    def _take_leftovers(self) -> None:
        try:
            if not self._trash_is_ours():
                return
        except FileNotFoundError:
            return
        with suppress(FileNotFoundError), os.scandir(self.trash) as entries:
            for entry in entries:
                self._discard(Path(entry.path))

    def _discard(self, path: Path) -> None:
        with self._count:
            self._pending += 1
            self._idle.clear()
        self._queue.put(path)

    def _run(self) -> None:
        deferred: list[Path] = []  # left for want of a descriptor: tried again at retry_at
        retry_at = 0.0
        while not self._stopping.is_set():
            if deferred and time.monotonic() >= retry_at:  # however busy the queue is
                retried, deferred = deferred, []
                for path in retried:
                    if not self._stopping.is_set():
                        self._remove(path, deferred)
                retry_at = time.monotonic() + RETRY_AFTER
                continue
            try:
                path = self._queue.get(timeout=max(0.0, retry_at - time.monotonic()) if deferred else None)
            except queue.Empty:
                continue
            if path is not None and not self._stopping.is_set():
                first = not deferred
                self._remove(path, deferred)
                if first and deferred:
                    retry_at = time.monotonic() + RETRY_AFTER

    def _remove(self, path: Path, deferred: list[Path]) -> None:
        leftovers = removal.Leftovers()
        try:
            removal.remove_tree(path, leftovers.failed)
        except Exception:  # a bug: this thread removes every workspace, it goes on
            log.exception("removing %s failed", path)
        if leftovers.short:
            deferred.append(path)  # its count stays pending
            return
        if leftovers.left:
            log.warning("trash %s: %s", path, leftovers.summary())
        with self._count:
            self._pending -= 1
            if not self._pending:
                self._idle.set()
