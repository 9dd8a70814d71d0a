"""Kill a step run's processes until none is left: its process group and everything carrying its
run marker (found even after setsid). TERM, then KILL after a grace, again and again (bounded),
since a TERM-ignoring step can keep starting setsid children while it is killed, and a process that
cleared its environment is still in the group.

Driven by the scheduler's timer thread, never by an actor: a kill never blocks the StepActor.
One /proc scan per round serves every step being cleaned up at that time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import treekill
from .treekill import GIVE_UP_AFTER, ROUND

log = logging.getLogger(__name__)


@dataclass
class _Job:
    group: int | None  # the step's process group (its first process's pid)
    grace: float
    since: float
    signalled: set[int] = field(default_factory=set)


class Janitor:
    def __init__(
        self, call_later: Callable[[float, Callable[[], None]], object], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._call_later = call_later  # a real-time timer: processes take real time to die
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}  # by run id
        self._scheduled = False
        self._scan_failing = False  # the last round could not read /proc (the timer thread's own)

    def clean(self, run_id: str, group: int | None, grace: float) -> None:
        """TERM the run's group now; from the next round, TERM every marked process, KILL what is
        left (marked or in the group) once `grace` has passed, until nothing is left."""
        if group is not None:
            treekill.term_group(group)  # most often gone already: then no CONT either
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None or grace < job.grace:
                self._jobs[run_id] = _Job(group, grace, self._clock())
            self._schedule()

    def busy(self) -> bool:
        with self._lock:
            return bool(self._jobs)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._call_later(ROUND, self._round)

    def _round(self) -> None:
        with self._lock:
            self._scheduled = False
            jobs = dict(self._jobs)
        finished = []
        try:
            found = self._scan(set(jobs))
            now = self._clock()
            for key, job in jobs.items():
                if self._job_round(key, job, found, now):
                    finished.append(key)
        finally:  # a fault (a bug) cut this round short: the next round tries again, else nothing is ever KILLed
            with self._lock:
                for key in finished:
                    if self._jobs.get(key) is jobs[key]:
                        del self._jobs[key]
                if self._jobs:
                    self._schedule()

    def _job_round(self, key: str, job: _Job, found: dict[str, list[int]] | None, now: float) -> bool:
        """Signal what is left of one run; True once it is gone (or given up on). A fault (a bug)
        is this run's, logged: the other runs are still killed, and it is tried again next round."""
        try:
            pids = (found or {}).get(key, [])
            late = now - job.since >= job.grace
            grouped = job.group is not None and treekill.signal_group(job.group, 0)
            gone = found is not None and not (pids or grouped)  # unscanned: its marked ones may live
            if gone or now - job.since > job.grace + GIVE_UP_AFTER:
                if not gone:
                    log.error("processes %s (group %s) of run %s survive SIGKILL", pids, job.group, key)
                return True
            treekill.kill_round(pids, [job.group] if grouped else [], job.signalled, late)
        except Exception:
            log.exception("janitor: a kill round of run %s failed; trying again", key)
            return now - job.since > job.grace + GIVE_UP_AFTER  # bounded, as a process that survives KILL
        return False

    def _scan(self, runs: set[str]) -> dict[str, list[int]] | None:
        """The marked processes of each run; None while /proc cannot be read (no descriptor free):
        the groups are still killed, and the jobs wait for a round that can scan."""
        try:
            found = treekill.scan_markers(runs)
        except Exception as exc:  # OSError, or a bug: the groups are still killed meanwhile
            if not self._scan_failing:  # one line per spell, not one per round
                log.warning("cannot scan for processes to kill (%s); trying again every round", exc,
                            exc_info=not isinstance(exc, OSError))
            self._scan_failing = True
            return None
        self._scan_failing = False
        return found
