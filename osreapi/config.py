"""Settings of the engine (shared by the CLI and the embedding API)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidValue
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

    def __post_init__(self) -> None:
        """The bounds `osreapi run` puts on its flags, for an Executor made in Python too (a negative
        key_expire expired every task at its end; call_timeout 0 made every call EngineBusy)."""
        for name, minimum, strict in (("pool_size", 1, False), ("exec_timeout", 0, False), ("key_expire", 0, True),
                                      ("max_output", 1, False), ("max_log", 1, False), ("kill_grace", 0, False),
                                      ("sweep_interval", 0, True), ("call_timeout", 0, True)):
            value = getattr(self, name)
            if not value >= minimum or (strict and value == minimum):  # `not >=`: NaN is refused too
                bound = f"greater than {minimum}" if strict else f"at least {minimum}"
                raise InvalidValue(f"{name} must be {bound}, got {value!r}")

    @property
    def workspace_root(self) -> Path:
        return self.data_dir / "workspace"

    @functools.cached_property
    def _resolved_workspace_root(self) -> Path:
        return self.workspace_root.resolve()

    def workspace_entry(self, task_id: str) -> Path:
        """The workspace's name in the root, not resolved: what removal works on (a link a step put
        in its place is removed, never followed) and what a running step's log is read through (a
        read goes where the step's own link leads, as the step's own output could); `workspace`
        refuses a link that leads out, for what the engine writes there."""
        if not TASK_ID_PATTERN.fullmatch(task_id):
            raise ValueError(f"task id {task_id!r} cannot name a workspace")
        return self.workspace_root / task_id

    def workspace(self, task_id: str) -> Path:
        path = self._resolved_workspace_root / self.workspace_entry(task_id).name
        # A valid id has no separator: a symlink planted in the workspace root is the one way out
        # of the data dir (checked with one lstat, not a full resolve per call).
        if path.is_symlink() and path.resolve().parent != self._resolved_workspace_root:
            raise ValueError(f"task id {task_id!r} does not name a workspace inside the data dir")
        return path

    @property
    def max_live_tasks(self) -> int:
        return self.pool_size + self.extra_live_tasks
