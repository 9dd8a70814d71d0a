"""What the engine remembers about a task and its steps (stored in LMDB as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .vocabulary import STEP_CODE_UNFINISHED, State


@dataclass(frozen=True)
class StepRecord:
    index: int
    name: str
    state: State = State.PENDING
    code: int = STEP_CODE_UNFINISHED
    output: str = ""
    begin: float | None = None
    end: float | None = None
    pid: int | None = None
    pid_created: float | None = None  # psutil create_time, guards against pid reuse
    run_id: str | None = None  # marks this run's processes (OSREAPI_RUN_ID), unique across restarts

    @property
    def succeeded(self) -> bool:
        return self.state is State.STOPPED and self.code == 0

    @property
    def failed(self) -> bool:
        """Finished without succeeding (skipped included)."""
        return self.state.finished and not self.succeeded

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "state": self.state.value}  # every field is a scalar: no asdict deep copy

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepRecord:
        return cls(**{**data, "state": State(data["state"])})

    def with_(self, **changes: Any) -> StepRecord:
        return _replaced(self, changes)


@dataclass(frozen=True)
class TaskRecord:
    id: str
    mode: str
    count: int
    accepted: float
    state: State = State.PENDING
    begin: float | None = None
    end: float | None = None
    expires: float | None = None
    failed_step: int | None = None  # lowest index of a step that did not succeed

    @property
    def succeeded(self) -> bool:
        return self.state is State.STOPPED and self.failed_step is None

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "state": self.state.value}  # every field is a scalar: no asdict deep copy

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        return cls(**{**data, "state": State(data["state"])})

    def with_(self, **changes: Any) -> TaskRecord:
        return _replaced(self, changes)


def _replaced(record: Any, changes: dict[str, Any]) -> Any:
    """dataclasses.replace for these records (a few times per step): their fields are plain values
    kept in __dict__, with no __post_init__, so a copy of it is the new record (replace() built
    it through __init__ at several times the cost). An unknown field is refused as replace() does."""
    unknown = changes.keys() - _FIELDS[type(record)]
    if unknown:
        raise TypeError(f"{type(record).__name__} has no field {sorted(unknown)[0]!r}")
    new = object.__new__(type(record))
    new.__dict__.update(vars(record), **changes)
    return new


_FIELDS = {kind: frozenset(field.name for field in fields(kind)) for kind in (StepRecord, TaskRecord)}


def lowest_failure(steps: list[StepRecord] | tuple[StepRecord, ...]) -> int | None:
    """The index named in '<i>, 执行失败': the lowest step that failed, else the lowest skipped."""
    failed = [s.index for s in steps if s.failed and s.state is not State.SKIPPED]
    if failed:
        return min(failed)
    skipped = [s.index for s in steps if s.state is State.SKIPPED]
    return min(skipped) if skipped else None
