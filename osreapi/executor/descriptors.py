"""How many steps the process's descriptor limit lets run at once.

A step holds descriptors while it runs (its output pipe, its pidfd, its log) and more while it
starts (the pipe's other end, Popen's error pipe). With more steps at once than the limit allows,
starts failed with EMFILE, and together: each one's descriptors were taken while the others
started, so under `ulimit -n 64` not one of 20 parallel steps ran. The pool is fitted to the limit
instead: the steps beyond it wait their turn, as they do beyond --pool_size.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

STEP_DESCRIPTORS = 5  # a step starting: its pipe's two ends, Popen's error pipe (two), its pidfd
RESERVED = 48  # the engine's own (LMDB, epoll, the lock, ~16) and a connection per HTTP worker thread (32)


def descriptor_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None where there is none to heed."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def fitted_pool_size(pool_size: int, limit: int | None = None) -> int:
    """pool_size, or fewer (at least one) when the descriptor limit would not let so many start."""
    limit = descriptor_limit() if limit is None else limit
    if limit is None or not pool_size >= 1:  # (`not >=`: NaN too) the config refuses it, naming it
        return pool_size
    allowed = max(1, (limit - RESERVED) // STEP_DESCRIPTORS)
    if allowed >= pool_size:
        return pool_size
    log.warning("pool size %d needs about %d file descriptors and this process may open %d (ulimit -n, systemd's "
                "LimitNOFILE): at most %d steps run at once, the others wait their turn", pool_size,
                RESERVED + pool_size * STEP_DESCRIPTORS, limit, allowed)
    return allowed
