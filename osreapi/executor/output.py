"""A step's output, read back from its log file with a bounded head + tail."""

from __future__ import annotations

import codecs
import errno
import os
import stat
from pathlib import Path

from ..errors import DESCRIPTOR_TURN

_NO_WAIT = getattr(os, "O_NONBLOCK", 0)  # for a FIFO (no effect on a regular file)
_NO_LINK = getattr(os, "O_NOFOLLOW", 0)


def open_log(path: Path):
    """A step's log, opened for reading without waiting: a step may have put a FIFO in its place,
    whose open waits for a writer (opened this way, it reads as empty), or a link, which is not
    followed (the engine writes none through one either). Under DESCRIPTOR_TURN: never the slot
    the intake frees to refuse a connection with."""
    with DESCRIPTOR_TURN:
        descriptor = os.open(path, os.O_RDONLY | _NO_WAIT | _NO_LINK | getattr(os, "O_CLOEXEC", 0))
    try:
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):  # opens, then fails every read
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_output(path: Path, max_bytes: int) -> str:
    """Decode the log as UTF-8 (bad bytes replaced), keeping at most max_bytes: head and tail."""
    try:
        with open_log(path) as log:
            size = os.fstat(log.fileno()).st_size
            if size <= max_bytes:
                return log.read(size).decode("utf-8", "replace")
            head_size = max_bytes // 2
            head = log.read(head_size)
            log.seek(size - (max_bytes - head_size))
            tail = log.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:  # e.g. no descriptor free (EMFILE): said, never raised into a worker or a read
        return f"... the output could not be read ({exc.strerror or exc}); the step's log has it ..."
    # Cut at character boundaries so the seams do not turn into replacement characters.
    head_text = codecs.getincrementaldecoder("utf-8")("replace").decode(head, final=False)
    skip = 0
    while skip < min(3, len(tail)) and 0x80 <= tail[skip] <= 0xBF:
        skip += 1
    tail_text = tail[skip:].decode("utf-8", "replace")
    return f"{head_text}\n... {size - len(head) - len(tail)} bytes truncated ...\n{tail_text}"


def with_exit_status(output: str, code: int) -> str:
    """Add 'exit status N' as the last line of a failed step's output unless it already says so."""
    line = f"exit status {code}"
    stripped = output.rstrip("\n")
    if stripped.endswith(line) and stripped[: -len(line)].endswith(("", "\n", " ")):
        return output
    if stripped and not output.endswith("\n"):
        output += "\n"
    return output + line


def add_line(output: str, line: str) -> str:
    """Append one line to a step's output."""
    if output and not output.endswith("\n"):
        output += "\n"
    return output + line
