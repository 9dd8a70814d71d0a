"""A directory served again through FUSE with names looked up regardless of case, as on FAT, a
macOS or Windows volume, or an ext4/tmpfs `casefold` directory (which need a kernel built with
CONFIG_UNICODE). Run as `python -m tests.casefs SOURCE MOUNTPOINT` (root): in the foreground,
unmounted by `umount` or a TERM."""

from __future__ import annotations

import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations


class CaseFolding(Operations):
    """A pass-through to `source` whose every path component names the existing entry equal to it
    under case folding (the entry's own name when it exists as written)."""

    def __init__(self, source: str) -> None:
        self.source = os.path.realpath(source)

    def _real(self, path: str) -> str:
        real = self.source
        for part in filter(None, path.split("/")):
            exact = os.path.join(real, part)
            if os.path.lexists(exact) or not os.path.isdir(real):
                real = exact
                continue
            folded = part.casefold()
            real = next((os.path.join(real, name) for name in os.listdir(real) if name.casefold() == folded), exact)
        return real

    def __call__(self, op, path, *args):
        try:
            return super().__call__(op, path, *args)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from None

    def getattr(self, path, fh=None):
        info = os.lstat(self._real(path))
        return {key: getattr(info, key) for key in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                                                    "st_nlink", "st_size", "st_uid")}

    def access(self, path, mode):
        if not os.access(self._real(path), mode):
            raise FuseOSError(errno.EACCES)

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._real(path))]

    def readlink(self, path):
        return os.readlink(self._real(path))

    def mkdir(self, path, mode):
        return os.mkdir(self._real(path), mode)

    def rmdir(self, path):
        return os.rmdir(self._real(path))

    def unlink(self, path):
        return os.unlink(self._real(path))

    def symlink(self, target, source):
        return os.symlink(source, self._real(target))

    def rename(self, old, new):
        return os.rename(self._real(old), self._real(new))

    def chmod(self, path, mode):
        return os.chmod(self._real(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._real(path), uid, gid)

    def utimens(self, path, times=None):
        return os.utime(self._real(path), times)

    def truncate(self, path, length, fh=None):
        with open(self._real(path), "r+b") as handle:
            handle.truncate(length)

    def statfs(self, path):
        info = os.statvfs(self._real(path))
        return {key: getattr(info, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                    "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def open(self, path, flags):
        return os.open(self._real(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._real(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return None

    def fsync(self, path, datasync, fh):
        return os.fsync(fh)

    def release(self, path, fh):
        return os.close(fh)


if __name__ == "__main__":
    source, mountpoint = sys.argv[1:3]
    FUSE(CaseFolding(source), mountpoint, foreground=True, nothreads=True, allow_other=True,
         entry_timeout=0, attr_timeout=0, negative_timeout=0)
