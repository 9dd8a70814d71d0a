"""The data file at its path, or not: a data dir removed while the engine runs (by hand, by a
cleaner of old files under /tmp) takes its database out of every directory while LMDB keeps
writing to it. Unnoticed, every record written from then on is lost at the next start, and the
data dir's lock is gone with it, so a second server may start there. Noticed, the open
environment (which holds every record) is copied to the path again."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import lmdb

Identity = tuple[int, int]  # st_dev, st_ino


class Place(Enum):
    KEPT = "kept"  # the file at the path is the one open
    GONE = "gone"  # nothing is at the path: the file (its data dir with it?) was removed
    REPLACED = "replaced"  # another file is there: never overwritten


def identity(path: Path) -> Identity:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def place(path: Path, opened: Identity) -> Place:
    try:
        return Place.KEPT if identity(path) == opened else Place.REPLACED
    except (FileNotFoundError, NotADirectoryError):  # (a file where the data dir or db/ was)
        return Place.GONE


def copy_into_place(env: lmdb.Environment, target: Path) -> None:
    """Write a copy of env (its last commit, compacted) at target, whole or not at all: written
    and flushed under another name, then linked into place, which fails if a file is there."""
    spare = target.with_name(f"{target.name}.{os.getpid()}.copy")
    spare.unlink(missing_ok=True)  # this process's, left by an attempt that failed
    descriptor = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            env.copyfd(descriptor, compact=True)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.link(spare, target)
    finally:
        spare.unlink(missing_ok=True)
