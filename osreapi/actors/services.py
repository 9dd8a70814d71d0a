"""What every actor of one engine shares: settings, the store, the pool, the clock, the timers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pykka

from ..config import EngineConfig
from ..executor.janitor import Janitor
from ..executor.reaper import Reaper
from ..metrics import EngineMetrics
from ..storage.database import Database
from .pool import WorkerPool
from .timers import Scheduler


@dataclass(frozen=True)
class Services:
    config: EngineConfig
    db: Database  # reads only; writes go through the store actor
    store: pykka.ActorRef
    pool: WorkerPool
    scheduler: Scheduler  # on the engine's clock (injectable): step time limits, sweeps
    real_timer: Scheduler  # real time: what waits on real processes (kill rounds, saving a pid)
    clock: Callable[[], float]  # wall clock, seconds since the epoch
    metrics: EngineMetrics
    reaper: Reaper
    janitor: Janitor
