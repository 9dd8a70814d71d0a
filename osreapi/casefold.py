"""Task ids on a workspace root that folds case (ext4 or tmpfs casefold, FAT, a macOS or Windows
volume): `Abc` and `ABC` are two tasks but one directory, so one would run in, and its end delete,
the other's workspace."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from .errors import CaseConflict, DiskFull

PROBE = ".osreapi-case-probe"  # not a task id (those start with a letter or digit): recovery leaves it


def folds_case(root: Path) -> bool:
    """Whether root looks its names up without regard to case. Asked of the root itself: casefold
    is an attribute of each directory on ext4 and tmpfs (`chattr +F`), not of the whole mount."""
    probe = root / PROBE
    shutil.rmtree(probe, ignore_errors=True)  # left by a crash between the two lines below
    probe.mkdir(mode=0o700)
    try:
        return os.path.lexists(root / PROBE.upper())
    finally:
        probe.rmdir()


def claim_workspace(workspace: Path, task_id: str) -> bool:
    """On a root that folds case, the workspace of a task about to be stored, made by the store as
    it writes the record (ordered with the deletes and sweeps that remove workspaces), so that the
    name is taken at once, even while the task waits in the queue. True if made here; False if this
    very id's is there already (left by a crash, removed at the next start; or the retry of a write);
    CaseConflict naming the task whose workspace it is."""
    try:
        workspace.mkdir(mode=0o700)
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the answer to give (507), as the store's
            raise DiskFull(f"the task's workspace could not be made: {exc.strerror}") from None
        raise
    folded = task_id.casefold()
    with os.scandir(workspace.parent) as entries:  # the name as that task wrote it
        for entry in entries:
            if entry.name != task_id and entry.name.casefold() == folded:
                raise CaseConflict(task_id, entry.name)
    return False


def release_workspace(workspace: Path) -> None:
    """Give back a workspace's name: its directory, emptied (a task deleted, swept) or still empty
    (claimed for a task that was not stored), removed."""
    try:
        workspace.rmdir()
    except OSError:  # written in meanwhile (a leftover process): removed with the orphans at the next start
        pass
