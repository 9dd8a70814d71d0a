"""Prometheus metrics of one engine, kept per engine (several engines may share a process)."""

from __future__ import annotations

import bisect
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .vocabulary import State

EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600)


class EngineMetrics:
    """Counts kept as plain numbers, written in Prometheus's text format at each scrape. The format is
    small and fixed, while importing prometheus_client costs ~6 MB (its push client brings urllib,
    http.server and OpenSSL) on a server that needs ~27. Its parser checks our output in the tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.steps_started = 0
        self.steps_finished: Tally[str] = Tally()  # by outcome
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket, the last is +Inf
        self.duration_sum = 0.0
        self.http_requests: Tally[tuple[str, str, str]] = Tally()  # by (method, route, status)
        self._gauge_sources: list[Callable[[], dict[str, float]]] = []  # the engine's, the HTTP server's
        self.task_states: Callable[[], Tally] = Tally

    def step_started(self) -> None:
        with self._lock:
            self.steps_started += 1

    def step_ended(self, state: State, code: int, begin: float | None, end: float) -> None:
        """A step process ended (or could not start)."""
        with self._lock:
            self.steps_finished[outcome(state, code)] += 1
            if begin is not None:
                took = max(0.0, end - begin)
                self.duration_counts[bisect.bisect_left(DURATION_BUCKETS, took)] += 1
                self.duration_sum += took

    def http_request(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self.http_requests[(method, route, str(status))] += 1

    def add_gauges(self, read: Callable[[], dict[str, float]], task_states: Callable[[], Tally]) -> None:
        self.add_gauge_source(read)
        self.task_states = task_states

    def add_gauge_source(self, read: Callable[[], dict[str, float]]) -> None:
        """More values read at each scrape (names from _GAUGES and _COUNTED)."""
        self._gauge_sources.append(read)

    def remove_gauge_source(self, read: Callable[[], dict[str, float]]) -> None:
        """Its owner has stopped (an HTTP server): its values no longer show."""
        if read in self._gauge_sources:
            self._gauge_sources.remove(read)

    def read_gauges(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for read in self._gauge_sources:
            values.update(read())
        return values

    def snapshot(self) -> tuple[int, Tally[str], list[int], float, Tally[tuple[str, str, str]]]:
        with self._lock:
            return (self.steps_started, Tally(self.steps_finished), list(self.duration_counts),
                    self.duration_sum, Tally(self.http_requests))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (format 0.0.4) and its content type."""
        lines: list[str] = []
        for family in _families(self):
            lines.extend(family.lines())
        return ("\n".join(lines) + "\n").encode("utf-8"), EXPOSITION_TYPE


def outcome(state: State, code: int) -> str:
    if state is State.STOPPED:
        return "succeeded" if code == 0 else "failed"
    return state.value


@dataclass
class _Family:
    name: str
    help: str
    kind: str  # counter, gauge, histogram
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)  # suffix, labels, value

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append((suffix, labels, value))

    def lines(self) -> Iterator[str]:
        name = f"{self.name}_total" if self.kind == "counter" else self.name  # 0.0.4 names the sample
        yield f"# HELP {name} {_escape(self.help, quotes=False)}"
        yield f"# TYPE {name} {self.kind}"
        for suffix, labels, value in self.samples:
            text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
            yield f"{self.name}{suffix}{{{text}}} {float(value)!r}" if text else f"{self.name}{suffix} {float(value)!r}"


def _escape(text: str, quotes: bool = True) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quotes else text


def _families(metrics: EngineMetrics) -> Iterator[_Family]:
    """Every family, read at scrape time: counters, the duration histogram, the gauges."""
    started, finished, durations, duration_sum, requests = metrics.snapshot()
    family = _Family("osreapi_steps_started", "Step processes started.", "counter")
    family.add(started, "_total")
    yield family
    family = _Family("osreapi_steps_finished", "Steps that ended, by outcome (succeeded, failed, timeout, killed, interrupted).", "counter")
    for name, count in sorted(finished.items()):
        family.add(count, "_total", outcome=name)
    yield family
    family = _Family("osreapi_step_duration_seconds", "Wall time of a step process.", "histogram")
    cumulative = 0
    for bound, count in zip((*DURATION_BUCKETS, float("inf")), durations):
        cumulative += count
        family.add(cumulative, "_bucket", le="+Inf" if bound == float("inf") else repr(float(bound)))
    family.add(cumulative, "_count")
    family.add(duration_sum, "_sum")
    yield family
    family = _Family("osreapi_http_requests", "HTTP requests by route and status.", "counter")
    for (method, route, status), count in sorted(requests.items()):
        family.add(count, "_total", method=method, route=route, status=status)
    yield family
    values = metrics.read_gauges()
    for name, help_text in _GAUGES.items():
        if name in values:
            family = _Family(f"osreapi_{name}", help_text, "gauge")
            family.add(values[name])
            yield family
    for name, help_text in _COUNTED.items():
        if name in values:
            family = _Family(f"osreapi_{name}", help_text, "counter")
            family.add(values[name], "_total")
            yield family
    family = _Family("osreapi_tasks", "Stored tasks by state.", "gauge")
    counts = metrics.task_states()
    for state in State:
        family.add(counts.get(state, 0), state=state.value)
    yield family


_GAUGES = {
    "pool_size": "Most step processes at once.",
    "pool_busy": "Step processes running (or starting) now.",
    "pool_waiting": "Steps waiting for a pool slot.",
    "tasks_live": "Tasks with a TaskActor.",
    "tasks_queued": "Tasks waiting for their turn (no thread).",
    "store_bytes": "Bytes used in the LMDB map.",
    "threads": "Threads in the server process (actors, waiters, HTTP).",
    "http_answer_bytes_kept": "Bytes of answers kept for clients that read them slowly (all connections).",
    "http_answer_bytes_limit": "Most bytes of answers kept at once; past it an answer is dropped.",
    "http_streams": "Streams served without a worker thread: followed logs, event feeds, long waits.",
}
_COUNTED = {  # counters kept by their owners, read at each scrape
    "http_answers_dropped": "Answers dropped (their connection closed) because the kept bytes were at their limit.",
}
