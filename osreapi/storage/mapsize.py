"""The size of LMDB's map under an address-space limit (ulimit -v, systemd's LimitAS=).

LMDB maps its whole map at once: a 2 GiB map does not fit under a 1.5 GiB limit, and the server
could not start ("Cannot allocate memory"); one that takes what is left leaves no room for the
threads' stacks. The map starts at a quarter of the room left, and grows as it fills.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

FLOOR = 16 << 20  # the smallest map worth starting with


def address_space_room() -> int | None:
    """Bytes of address space this process may still map; None without a limit (or a way to tell)."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm", "rb") as statm:
            used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError):
        return None
    return max(0, soft - used)


def fitted_map_size(wanted: int, room: int | None = None) -> int:
    """wanted, or halved until it is at most a quarter of the address space left (not below FLOOR)."""
    room = address_space_room() if room is None else room
    size = wanted
    while room is not None and size > room // 4 and size // 2 >= FLOOR:
        size //= 2
    if size < wanted:
        log.warning("the address space is limited (ulimit -v, LimitAS=): the database's map starts at %d MiB "
                    "instead of %d, and grows as it fills", size >> 20, wanted >> 20)
    return size
