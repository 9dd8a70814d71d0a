"""Prometheus metrics of one engine, in its own registry (several engines may share a process)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .vocabulary import State

DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600)


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.steps_started = Counter("osreapi_steps_started", "Step processes started.", registry=self.registry)
        self.steps_finished = Counter(
            "osreapi_steps_finished",
            "Steps that ended, by outcome (succeeded, failed, timeout, killed, interrupted).",
            ["outcome"],
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "osreapi_step_duration_seconds", "Wall time of a step process.", buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "osreapi_http_requests", "HTTP requests by route and status.", ["method", "route", "status"],
            registry=self.registry,
        )

    def step_ended(self, state: State, code: int, begin: float | None, end: float) -> None:
        """A step process ended (or could not start)."""
        self.steps_finished.labels(outcome=outcome(state, code)).inc()
        if begin is not None:
            self.step_duration.observe(max(0.0, end - begin))

    def add_gauges(self, read: Callable[[], dict[str, float]], task_states: Callable[[], Tally]) -> None:
        self.registry.register(_Gauges(read, task_states))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def outcome(state: State, code: int) -> str:
    if state is State.STOPPED:
        return "succeeded" if code == 0 else "failed"
    return state.value


class _Gauges(Collector):
    """Read at scrape time: pool, queue, store size, threads, tasks by state."""

    def __init__(self, read: Callable[[], dict[str, float]], task_states: Callable[[], Tally]) -> None:
        self._read = read
        self._task_states = task_states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = self._read()
        for name, help_text in _GAUGES.items():
            if name in values:
                yield GaugeMetricFamily(f"osreapi_{name}", help_text, value=values[name])
        tasks = GaugeMetricFamily("osreapi_tasks", "Stored tasks by state.", labels=["state"])
        counts = self._task_states()
        for state in State:
            tasks.add_metric([state.value], counts.get(state, 0))
        yield tasks

    def describe(self) -> list:
        return []


_GAUGES = {
    "pool_size": "Most step processes at once.",
    "pool_busy": "Step processes running (or starting) now.",
    "pool_waiting": "Steps waiting for a pool slot.",
    "tasks_live": "Tasks with a TaskActor.",
    "tasks_queued": "Tasks waiting for their turn (no thread).",
    "store_bytes": "Bytes used in the LMDB map.",
    "threads": "Threads in the server process (actors, waiters, HTTP).",
}
