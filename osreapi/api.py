"""TaskRunner: what `osreapi.Executor` (in-process) and `osreapi.client.Client` (over HTTP) both
offer, so that a tool switches between them by changing the line that makes one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from .embed import TaskResult
from .records import TaskRecord


@runtime_checkable
class TaskRunner(Protocol):
    def submit(
        self, steps: list[dict[str, Any]] | str | bytes, mode: str | None = None, task_id: str | None = None
    ) -> str:
        """Queue a task; return its id. mode: None/"sequential", "parallel" or "dag"."""
        ...

    def get(self, task_id: str) -> TaskResult | None:
        """The task and every one of its steps; None when unknown or expired."""
        ...

    def list(self, sort: str | None = None) -> list[TaskRecord]:
        """Every task kept; sort "start", "end" or "ttl" (ascending, tasks without that time last)."""
        ...

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        """Block until the task has ended or `timeout` seconds passed; its result (None if unknown)."""
        ...

    def logs(self, task_id: str, step: str | int, follow: bool = False, offset: int = 0) -> Iterator[str]:
        """A step's output from byte `offset`, as text chunks; with follow, until the step ends."""
        ...

    def kill(self, task_id: str, step: str | int | None = None) -> None: ...

    def pause(self, task_id: str, step: str | int | None = None) -> None: ...

    def resume(self, task_id: str, step: str | int | None = None) -> None: ...

    def delete(self, task_id: str) -> None:
        """Remove a finished task's record and workspace."""
        ...


__all__ = ["TaskRunner"]
