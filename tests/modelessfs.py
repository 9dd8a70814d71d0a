"""A directory served again through FUSE as vfat shows one: every file with the mount's mode (0755
here, whatever it was made with) and a chmod refused. Run as `python -m tests.modelessfs SOURCE
MOUNTPOINT` (root): in the foreground, unmounted by `umount`."""

from __future__ import annotations

import errno
import stat
import sys

from fuse import FUSE, FuseOSError

from .casefs import CaseFolding


class Modeless(CaseFolding):
    """A pass-through (names as written) that keeps no file modes."""

    def _real(self, path: str) -> str:
        return self.source + path

    def getattr(self, path, fh=None):
        info = super().getattr(path, fh)
        if stat.S_ISREG(info["st_mode"]):
            info["st_mode"] = stat.S_IFREG | 0o755
        return info

    def chmod(self, path, mode):
        raise FuseOSError(errno.EPERM)


if __name__ == "__main__":
    source, mountpoint = sys.argv[1:3]
    FUSE(Modeless(source), mountpoint, foreground=True, nothreads=True, allow_other=True,
         entry_timeout=0, attr_timeout=0, negative_timeout=0)
