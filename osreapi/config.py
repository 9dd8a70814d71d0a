"""Settings of the engine (shared by the CLI and the embedding API)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .spec import TASK_ID_PATTERN

HOUR = 3600.0


@dataclass(frozen=True)
class EngineConfig:
    data_dir: Path
    pool_size: int = 30
    exec_timeout: float = 24 * HOUR  # 0 = no limit
    key_expire: float = 48 * HOUR
    max_output: int = 1 << 20
    max_log: int = 64 << 20  # bytes of a step's log file kept on disk (head, marker, tail)
    kill_grace: float = 2.0  # seconds between TERM and KILL
    sweep_interval: float = 30.0
    call_timeout: float = 30.0  # how long a caller waits for an actor's answer
    extra_live_tasks: int = 16  # task actors beyond pool_size; further tasks wait as data

    @property
    def workspace_root(self) -> Path:
        return self.data_dir / "workspace"

    @functools.cached_property
    def _resolved_workspace_root(self) -> Path:
        return self.workspace_root.resolve()

    def workspace(self, task_id: str) -> Path:
        if not TASK_ID_PATTERN.fullmatch(task_id):
            raise ValueError(f"task id {task_id!r} cannot name a workspace")
        path = self._resolved_workspace_root / task_id
        # A valid id has no separator: a symlink planted in the workspace root is the one way out
        # of the data dir (checked with one lstat, not a full resolve per call).
        if path.is_symlink() and path.resolve().parent != self._resolved_workspace_root:
            raise ValueError(f"task id {task_id!r} does not name a workspace inside the data dir")
        return path

    @property
    def max_live_tasks(self) -> int:
        return self.pool_size + self.extra_live_tasks
