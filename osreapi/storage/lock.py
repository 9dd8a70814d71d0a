"""One engine per data dir: an exclusive lock taken before anything in it is read or changed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from ..errors import DataDirInUse

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; one server per data dir is up to the operator
    fcntl = None  # type: ignore[assignment]


def lock_data_dir(data_dir: Path) -> IO[str] | None:
    """Hold `<data_dir>/lock` (with this pid in it) until the returned file is closed."""
    if fcntl is None:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
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
