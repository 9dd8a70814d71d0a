"""The execution pool: at most `size` long-lived StepActors, each running one process tree at a
time. A free slot is an idle worker; requests wait in order of submission (task acceptance time,
then step index), whatever thread asked first. Workers are started on first need and live on."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable

import pykka

log = logging.getLogger(__name__)
Grant = Callable[[pykka.ActorRef], None]  # hands a worker to its requester; raises ActorDeadError if gone


class WorkerPool:
    def __init__(self, size: int, spawn: Callable[[], pykka.ActorRef]) -> None:
        self.size = size
        self._spawn = spawn
        self._workers: set[pykka.ActorRef] = set()
        self._idle: list[pykka.ActorRef] = []
        self._waiting: list[tuple[tuple, int, object, object, Grant]] = []  # a heap
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._closed = False  # the engine shuts down: no step starts any more

    def request(self, owner: object, key: object, grant: Grant, order: tuple = ()) -> pykka.ActorRef | None:
        """A free worker at once when nobody waits (no message round trip), else None and
        grant(worker) later, when one frees (lowest `order` first). The worker returns itself
        with release() when its process is gone."""
        with self._lock:
            if not self._waiting and not self._closed:
                worker = self._idle.pop() if self._idle else self._new_worker()
                if worker is not None:
                    return worker
            heapq.heappush(self._waiting, (order, next(self._counter), owner, key, grant))
        self._dispatch()
        return None

    def close(self) -> None:
        """The engine shuts down: from now on no worker is handed out (requests wait, and are
        cancelled by their runners' interrupts). A runner that handles its task's start only now
        leaves the task queued instead of starting a step the shutdown would interrupt."""
        with self._lock:
            self._closed = True

    def release(self, worker: pykka.ActorRef) -> None:
        with self._lock:
            if worker in self._workers:
                self._idle.append(worker)
        self._dispatch()

    def retire(self, worker: pykka.ActorRef) -> None:
        """A worker failed and stopped: forget it; a new one is started when needed."""
        with self._lock:
            self._workers.discard(worker)
            if worker in self._idle:
                self._idle.remove(worker)
        self._dispatch()

    def cancel(self, owner: object) -> list[object]:
        """Drop every waiting request of owner; return their keys (the others were granted)."""
        with self._lock:
            dropped = [item[3] for item in self._waiting if item[2] is owner]
            if dropped:
                self._waiting = [item for item in self._waiting if item[2] is not owner]
                heapq.heapify(self._waiting)
        return dropped

    def cancel_key(self, owner: object, key: object) -> bool:
        """Drop owner's waiting request for key; False if it was already granted (or never made)."""
        with self._lock:
            for position, item in enumerate(self._waiting):
                if item[2] is owner and item[3] == key:
                    self._waiting.pop(position)
                    heapq.heapify(self._waiting)
                    return True
        return False

    def stats(self) -> tuple[int, int, int]:
        """(size, busy, waiting)"""
        with self._lock:
            return self.size, len(self._workers) - len(self._idle), len(self._waiting)

    def stop_all(self, timeout: float) -> None:
        with self._lock:
            workers, self._workers, self._idle = list(self._workers), set(), []
        for worker in workers:
            try:
                worker.stop(timeout=timeout)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass

    def _dispatch(self) -> None:
        """Match waiting requests with idle workers (starting workers up to size)."""
        while True:
            with self._lock:
                if not self._waiting or self._closed:
                    return
                worker = self._idle.pop() if self._idle else self._new_worker()
                if worker is None:
                    return
                grant = heapq.heappop(self._waiting)[4]
            try:
                grant(worker)
            except pykka.ActorDeadError:  # the requester is gone: the worker serves the next one
                with self._lock:
                    self._idle.append(worker)

    def _new_worker(self) -> pykka.ActorRef | None:
        """Called with the lock held. None when the pool is full or no thread can be started
        (the request then waits for a worker to come back)."""
        if len(self._workers) >= self.size:
            return None
        try:
            worker = self._spawn()
        except Exception:  # e.g. RuntimeError: can't start new thread
            log.exception("cannot start a step worker; %d running", len(self._workers))
            return None
        self._workers.add(worker)
        return worker
