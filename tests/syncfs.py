"""A directory served again through FUSE whose flushes (fsync, fdatasync) fail with ENOSPC while a
switch file exists, as a disk with delayed allocation refuses at the flush what it took at the
write: the store's commit goes through (readers see it) and its flush fails. A switch that says
`writes` makes the writes to data.mdb fail too once a flush has failed (the disk is full now). One
that says `meta` fails only the writes of LMDB's two meta pages (EIO; its flushes go through), which
is what puts an LMDB environment in its fatal state (MDB_PANIC). Run as
`python -m tests.syncfs SOURCE MOUNTPOINT SWITCH` (root): in the foreground, unmounted by `umount`."""

from __future__ import annotations

import errno
import os
import sys

from fuse import FUSE, FuseOSError

from .casefs import CaseFolding

META_PAGES = 2 * 4096  # LMDB's two meta pages open its data file (4 KiB pages here)


class FailingSync(CaseFolding):
    """A plain pass-through (names as written) whose fsync fails while `switch` exists."""

    def __init__(self, source: str, switch: str) -> None:
        super().__init__(source)
        self.switch = switch
        self.full = False  # a flush failed under a switch saying `writes`

    def _said(self) -> str | None:
        try:
            with open(self.switch) as said:
                return said.read()
        except FileNotFoundError:
            return None

    def _refused(self) -> bool:
        return "writes" in (self._said() or "")

    def write(self, path, data, offset, fh):
        if path.endswith("data.mdb") and offset < META_PAGES and self._said() == "meta":
            raise FuseOSError(errno.EIO)
        self.full = self.full and os.path.exists(self.switch)
        if self.full and path.endswith("data.mdb"):
            raise FuseOSError(errno.ENOSPC)
        return os.pwrite(fh, data, offset)

    def _real(self, path: str) -> str:
        return os.path.join(self.source, *filter(None, path.split("/")))

    def create(self, path, mode, fi=None):  # read and written through one handle (LMDB maps its files)
        return os.open(self._real(path), os.O_RDWR | os.O_CREAT, mode)

    def fsync(self, path, datasync, fh):
        if self._said() not in (None, "meta"):
            self.full = self._refused()
            raise FuseOSError(errno.ENOSPC)
        return os.fsync(fh)


if __name__ == "__main__":
    source, mountpoint, switch = sys.argv[1:4]
    FUSE(FailingSync(source, switch), mountpoint, foreground=True, nothreads=True, allow_other=True,
         entry_timeout=0, attr_timeout=0, negative_timeout=0)
