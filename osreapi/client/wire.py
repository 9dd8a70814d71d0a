"""The server's JSON (asked for with ?lang=en) back to the engine's records: times from RFC 3339
to epoch seconds, `ttl` to an expiry time, state words to `State`."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ..embed import TaskResult
from ..executor.durations import parse_duration
from ..records import StepRecord, TaskRecord, lowest_failure
from ..vocabulary import CODE_FAILED, LANGUAGES, STEP_CODE_UNFINISHED, State

_STATE_OF_WORD = {state.word(lang): state for state in State for lang in LANGUAGES}
_FAILED_INDEX = re.compile(r"^\s*([0-9]+)\s*,")


def state_of(word: str) -> State:
    try:
        return _STATE_OF_WORD[word]
    except KeyError:
        raise ValueError(f"unknown state word {word!r}") from None


def epoch(text: str | None) -> float | None:
    """'2022-11-16T21:59:49+08:00' (or ...Z) -> seconds since the epoch."""
    return None if text is None else datetime.fromisoformat(text).timestamp()


def expiry(ttl: str | None, now: float) -> float | None:
    return None if ttl is None else now + parse_duration(ttl)


def step_record(data: dict[str, Any]) -> StepRecord:
    times = data.get("times") or {}
    return StepRecord(
        index=int(data["step"]),
        name=str(data["name"]),
        state=state_of(data["state"]),
        code=int(data.get("code", STEP_CODE_UNFINISHED)),
        output=data.get("message") or "",
        begin=epoch(times.get("begin")),
        end=epoch(times.get("end")),
    )


def task_record(data: dict[str, Any], now: float, steps: tuple[StepRecord, ...] = ()) -> TaskRecord:
    """A task as GET / lists it (plus "mode" from ?detail=true). The wire has no acceptance time:
    `accepted` is the begin time, or 0.0 while the task waits."""
    times = data.get("times") or {}
    begin = epoch(times.get("begin"))
    return TaskRecord(
        id=str(data["id"]),
        mode=str(data.get("mode", "")),
        count=int(data["count"]),
        accepted=begin if begin is not None else 0.0,
        state=state_of(data["state"]),
        begin=begin,
        end=epoch(times.get("end")),
        expires=expiry(times.get("ttl"), now),
        failed_step=_failed_step(data, steps),
    )


def _failed_step(data: dict[str, Any], steps: tuple[StepRecord, ...]) -> int | None:
    if data.get("code") != CODE_FAILED:
        return None
    if steps:
        return lowest_failure(steps)
    match = _FAILED_INDEX.match(str(data.get("message", "")))
    return int(match.group(1)) if match else None


def task_result(data: dict[str, Any], now: float) -> TaskResult:
    """The data of GET /<id>?detail=true: {"task": {...}, "steps": [...]}."""
    steps = tuple(sorted((step_record(s) for s in data["steps"]), key=lambda s: s.index))
    return TaskResult(task_record(data["task"], now, steps), steps)
