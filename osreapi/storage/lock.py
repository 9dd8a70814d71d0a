"""One engine per data dir: an exclusive lock taken before anything in it is read or changed."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from ..errors import DataDirInUse, DataDirUnsafe

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; one server per data dir is up to the operator
    fcntl = None  # type: ignore[assignment]


def lock_data_dir(data_dir: Path) -> IO[str] | None:
    """Create the data dir for this user alone if it is new (it holds every step's script, env
    values and output), refuse one another user controls, and hold `<data_dir>/lock` (with this pid
    in it) until the returned file is closed."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_owner(data_dir)
    if fcntl is None:
        return None
    handle = open(data_dir / "lock", "a+", encoding="ascii")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DataDirInUse(f"data dir {data_dir} is in use by pid {holder}") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def check_owner(data_dir: Path) -> None:
    """Refuse a data dir another user controls: its owner, or anyone where every user may write
    (`--data_dir /tmp/x` made by someone else first), could put a link where the engine writes and
    change the scripts it runs, as the engine's user."""
    if not hasattr(os, "geteuid"):  # Windows: ownership is not told by a uid
        return
    info = data_dir.stat()
    mode, user = stat.S_IMODE(info.st_mode), os.geteuid()
    if info.st_uid != user:
        raise DataDirUnsafe(f"{data_dir} belongs to another user (uid {info.st_uid}), who could change the "
                            f"scripts the server runs; use a directory of this user's (uid {user})")
    if mode & 0o002:
        raise DataDirUnsafe(f"every local user may write in {data_dir} (mode {mode:04o}) and change the "
                            f"scripts the server runs; chmod o-w {data_dir}")
