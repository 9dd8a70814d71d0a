"""A look at an LMDB data file before it is mapped: one cut short would crash the process.

LMDB maps data.mdb and reads its pages where its meta page says they are; a page past the end of
a file cut short (a copy that stopped, a restore from a partial backup) is a SIGBUS that kills the
process with no word said. Its two meta pages (pages 0 and 1) tell how long the file must be.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ..errors import StoreDamaged

_MAGIC = 0xBEEFC0DE
_P_META = 0x08
_PAGE_HEAD = struct.Struct("=QHH4x")  # mp_pgno, mp_pad, mp_flags, lower/upper
_META = struct.Struct("=II8x8x")  # mm_magic, mm_version, mm_address, mm_mapsize
_DB = struct.Struct("=IHH5Q")  # MDB_db: md_pad (the page size, in the free DB's), flags, depth, counts, root
_TAIL = struct.Struct("=QQ")  # mm_last_pg, mm_txnid


def _meta(page: bytes) -> tuple[int, int, int] | None:
    """(page size, last page, txnid) of a meta page, or None if it is not one."""
    if len(page) < _PAGE_HEAD.size + _META.size + 2 * _DB.size + _TAIL.size:
        return None
    _pgno, _pad, flags = _PAGE_HEAD.unpack_from(page)
    magic, _version = _META.unpack_from(page, _PAGE_HEAD.size)
    if not flags & _P_META or magic != _MAGIC:
        return None
    page_size = _DB.unpack_from(page, _PAGE_HEAD.size + _META.size)[0]
    last_page, txnid = _TAIL.unpack_from(page, _PAGE_HEAD.size + _META.size + 2 * _DB.size)
    return page_size, last_page, txnid


def check_data_file(path: Path) -> None:
    """Raise StoreDamaged if path is an LMDB data file shorter than the pages its newest meta page
    counts (the one LMDB will use). A missing or empty file is a new database; one that is not an
    LMDB file at all LMDB refuses by itself (MDB_INVALID)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(256)
            first = _meta(head)
            if first is None:
                return
            handle.seek(first[0])
            second = _meta(handle.read(256))
    except (FileNotFoundError, PermissionError):  # no file yet, or LMDB's own open says why
        return
    page_size, last_page, _txnid = max((m for m in (first, second) if m), key=lambda m: m[2])
    needed = (last_page + 1) * page_size
    if size < needed:
        raise StoreDamaged(
            f"{path} is cut short: {size} bytes, where its last commit needs {needed} "
            f"(a copy or restore that stopped?); opening it would crash the server. Restore it whole "
            f"from a backup, or move the db directory aside to start with an empty database")
