"""kill / pause / resume as shortcuts of one `control(task_id, action, step)` call, shared by the
in-process Executor and the HTTP Client."""

from __future__ import annotations

from typing import Any


class ControlCalls:
    def control(self, task_id: str, action: str, step: str | int | None = None) -> Any:
        raise NotImplementedError

    def kill(self, task_id: str, step: str | int | None = None) -> None:
        """Kill a task's process trees (its remaining steps are skipped), or one step's."""
        self.control(task_id, "kill", step)

    def pause(self, task_id: str, step: str | int | None = None) -> None:
        """Suspend a task's process trees, or one step's; what has not started is held."""
        self.control(task_id, "pause", step)

    def resume(self, task_id: str, step: str | int | None = None) -> None:
        self.control(task_id, "resume", step)
