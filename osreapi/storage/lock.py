"""One engine per data dir: an exclusive lock taken before anything in it is read or changed."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import IO

import psutil

from ..errors import DataDirInUse, DataDirUnsafe

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; one server per data dir is up to the operator
    fcntl = None  # type: ignore[assignment]


ORPHAN_WAIT = 5.0  # seconds a start waits for the children of a dead holder to let its lock go


def lock_data_dir(data_dir: Path) -> IO[str] | None:
    """Create the data dir for this user alone if it is new (it holds every step's script, env
    values and output), refuse one another user controls, and hold `<data_dir>/lock` (with this pid
    in it) until the returned file is closed."""
    check_owner(data_dir)  # before anything is made in a directory another user controls
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_owner(data_dir)  # parents it made under a loose umask, too
    if fcntl is None:
        return None
    handle = open(data_dir / "lock", "a+", encoding="ascii")
    deadline = time.monotonic() + ORPHAN_WAIT
    while not _locked(handle):
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        # A dead holder's lock is held by a child it was forking (a step before its exec): that
        # lets go by itself in a moment. A live holder (or one not written yet) is refused at once.
        if _alive(holder) or time.monotonic() > deadline:
            handle.close()
            raise DataDirInUse(f"data dir {data_dir} is in use by pid {holder}")
        time.sleep(0.02)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def still_held(handle: IO[str], data_dir: Path) -> bool:
    """Whether the lock held is still the data dir's lock file: one removed with its data dir
    keeps no other server out."""
    try:
        here = os.stat(data_dir / "lock")
    except (FileNotFoundError, NotADirectoryError):
        return False
    held = os.fstat(handle.fileno())
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def check_owner(data_dir: Path) -> None:
    """Refuse a data dir another user controls: its owner, or anyone where every user may write
    (`--data_dir /tmp/x` made by someone else first), could put a link where the engine writes and
    change the scripts it runs, as the engine's user. So could whoever controls a directory above
    it, by renaming the data dir and putting a link to one of theirs in its place: each one that
    exists must be the user's or root's, and not open to every user unless sticky (/tmp)."""
    if not hasattr(os, "geteuid"):  # Windows: ownership is not told by a uid
        return
    user = os.geteuid()
    if data_dir.exists():
        _check_one(data_dir, {user}, sticky_ok=False)
    unmapped = unmapped_owner()
    for parent in data_dir.parents:
        if parent.exists():
            _check_one(parent, {user, 0}, sticky_ok=True, where=", a directory above the data dir", unmapped=unmapped)


def unmapped_owner(proc: Path = Path("/proc")) -> int | None:
    """The uid that files of users outside this user namespace's map show (the overflow uid,
    65534), when this process runs in a namespace that maps no user of its own to it; else None.
    In a rootless container `/` and `/home` belong to such users (the host's root among them): they
    are trusted as root is, since whoever they are, they are outside and above the container."""
    try:
        overflow = int((proc / "sys/kernel/overflowuid").read_text())
        ranges = [[int(field) for field in line.split()] for line in (proc / "self/uid_map").read_text().splitlines()]
    except (OSError, ValueError):  # no /proc (or not Linux): no namespace to allow for
        return None
    mapped = any(inside <= overflow < inside + count for inside, _outside, count in ranges)
    return None if mapped else overflow


def _check_one(path: Path, trusted: set[int], sticky_ok: bool, where: str = "", unmapped: int | None = None) -> None:
    """Refuse path if a user not trusted owns it, or every user may write in it (in a sticky one,
    such as /tmp, they cannot rename or remove what is not theirs). One owned by a user outside
    the namespace (`unmapped`) is refused also when its group may write in it: that group is
    unmapped too, and may hold anyone."""
    info = path.stat()
    if info.st_uid not in trusted and info.st_uid != unmapped:
        raise DataDirUnsafe(f"{path} belongs to another user (uid {info.st_uid}{where}), who could change the "
                            f"scripts the server runs; use a directory of this user's (uid {os.geteuid()})")
    mode = stat.S_IMODE(info.st_mode)
    open_to = stat.S_IWOTH | (stat.S_IWGRP if info.st_uid == unmapped else 0)
    if mode & open_to and not (sticky_ok and mode & stat.S_ISVTX):
        who, bits = ("every local user", "o") if mode & stat.S_IWOTH else ("every user of its group", "g")
        raise DataDirUnsafe(f"{who} may write in {path} (mode {mode:04o}{where}) and change the "
                            f"scripts the server runs; chmod {bits}-w {path}")


def _locked(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _alive(holder: str) -> bool:
    """Whether the pid written in the lock file runs (an unreadable one counts as running)."""
    try:
        return psutil.Process(int(holder)).status() != psutil.STATUS_ZOMBIE
    except ValueError:
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
