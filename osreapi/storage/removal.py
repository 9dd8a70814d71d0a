"""Removing a workspace's tree, however deep and whatever modes its steps left on it.

shutil.rmtree recurses once per directory level (and, before Python 3.13, holds a descriptor per
level): a step that makes a tree a thousand directories deep (`mkdir d && cd d` in a loop) made it
raise RecursionError, which no error handler sees. A workspace like that could never be deleted,
stopped every sweep at it, and its id posted again stopped the store.
Nor can rmtree empty a directory without write permission (Go's module cache is read-only, `chmod
-R a-w` is common): unless the server runs with CAP_DAC_OVERRIDE (root), those files stayed for
good, their record gone. The files are all the server user's, so their directories are opened up
on the way. And a tree deeper than the descriptors left (a thousand levels under the default limit
of 1024) looked like a shortage for ever: its record was kept, and every sweep stopped at it."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from ..errors import out_of_descriptors

ONEXC = sys.version_info >= (3, 12)  # shutil.rmtree's onerror is deprecated there
# (getattr: Windows has none of these, and no fd-based walk either; rmtree is its only way there)
_OPEN_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

Failed = Callable[[str, BaseException], None]  # (path, error) for what could not be removed


class Leftovers:
    """What a removal could not remove, sorted: for want of a descriptor (`short`: try again
    later) or for good (`left`: a file made immutable, a read-only mount), a missing path not at
    all. Its `failed` is the removal's Failed."""

    def __init__(self) -> None:
        self.short: list[BaseException] = []
        self.left: list[tuple[str, BaseException]] = []

    def failed(self, where: str, exc: BaseException) -> None:
        if out_of_descriptors(exc):
            self.short.append(exc)
        elif not isinstance(exc, FileNotFoundError):
            self.left.append((where, exc))

    def summary(self) -> str:
        """One line however many were left: the count, the first path and its error."""
        where, exc = self.left[0]
        return f"{len(self.left)} entries not removed, the first {where}: {exc}"


def remove_tree(path: Path, failed: Failed) -> None:
    """Remove path and everything under it, not following symbolic links; `failed` hears each error
    (a missing path among them)."""
    errors: list[tuple[str, BaseException]] = []
    too_deep = False
    try:
        if ONEXC:
            shutil.rmtree(path, onexc=lambda _function, where, exc: errors.append((where, exc)))
        else:
            shutil.rmtree(path, onerror=lambda _function, where, info: errors.append((where, info[1])))
    except RecursionError:
        too_deep = True
    # Walked again: a tree deeper than the stack, or than the descriptors left (rmtree holds one per
    # level: a real shortage makes the walk fail too), or directories without write permission.
    if too_deep or any(isinstance(exc, PermissionError) or out_of_descriptors(exc) for _where, exc in errors):
        _remove_deep(path, failed)
        return
    for where, exc in errors:
        failed(where, exc)


def _remove_deep(path: Path, failed: Failed) -> None:
    """rmtree without recursion, holding one descriptor at a time: down into the first directory
    that is not empty, up again ("..", checked to be the directory it came from) once it is, each
    directory opened up (u+rwx) first. It stops at the first error: a tree something still writes
    in is not walked for ever."""
    try:
        with suppress(OSError):  # (not a symbolic link: rmtree refused those before any PermissionError)
            os.chmod(path, stat.S_IRWXU)
        fd = os.open(path, _OPEN_DIR)
    except OSError as exc:
        failed(str(path), exc)
        return
    above: list[tuple[int, int, str]] = []  # (st_dev, st_ino, name gone into) of each directory above fd
    try:
        while True:
            child = _empty_or_first_full(fd)
            if child is not None:
                info = os.fstat(fd)
                above.append((info.st_dev, info.st_ino, child))
                with suppress(OSError):  # (a symbolic link put there meanwhile: also the server user's)
                    os.chmod(child, stat.S_IRWXU, dir_fd=fd)
                fd = _swap(fd, os.open(child, _OPEN_DIR, dir_fd=fd))
            elif above:
                fd = _swap(fd, os.open("..", _OPEN_DIR, dir_fd=fd))
                info, (device, inode, emptied) = os.fstat(fd), above.pop()
                if (info.st_dev, info.st_ino) != (device, inode):
                    raise OSError(errno.ESTALE, "a directory moved while it was removed", emptied)
                os.rmdir(emptied, dir_fd=fd)  # not empty again: something writes in it, stop
            else:
                break
        os.rmdir(path)
    except OSError as exc:
        failed(str(path), exc)
    finally:
        os.close(fd)


def _swap(old: int, new: int) -> int:
    os.close(old)
    return new


def _empty_or_first_full(fd: int) -> str | None:
    """Remove what fd's directory holds; the name of the first directory in it that is not empty
    (to go down into), or None once it is empty."""
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                if stat.S_ISDIR(entry.stat(follow_symlinks=False).st_mode):
                    os.rmdir(entry.name, dir_fd=fd)
                else:
                    os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                return entry.name
    return None


def empty_tree(path: Path, failed: Failed) -> None:
    """Remove what path holds, path itself kept (a workspace's name stays taken). A symbolic link
    in path's place (a step's doing) is removed itself, never followed: what it points to (another
    task's workspace, a directory outside) is not the task's."""
    if path.is_symlink():
        try:
            os.unlink(path)
        except OSError as exc:
            failed(str(path), exc)
        return
    with suppress(OSError):  # a workspace's mode (a step may have taken its write permission)
        os.chmod(path, stat.S_IRWXU)
    try:
        with os.scandir(path) as scan:
            entries = list(scan)
    except OSError as exc:
        failed(str(path), exc)
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(Path(entry.path), failed)
            continue
        try:
            os.unlink(entry.path)
        except OSError as exc:
            failed(entry.path, exc)
