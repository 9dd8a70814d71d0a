"""Records to the seed's JSON shapes: steps, tasks, times and the response envelope."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..executor.durations import format_duration
from ..listing import sorted_tasks
from ..records import StepRecord, TaskRecord
from ..spec import StepSpec
from ..vocabulary import CODE_FAILED, CODE_OK, CODE_RUNNING, State, message


def envelope(code: int, msg: str, data: Any = None) -> str:
    body: dict[str, Any] = {"code": code, "message": msg}
    if data is not None:
        body["data"] = data
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def timestamp(seconds: float) -> str:
    """RFC 3339 in the server's local zone, whole seconds, with offset."""
    return _timestamp(int(seconds))


@lru_cache(maxsize=8192)
def _timestamp(whole_seconds: int) -> str:
    # Cached: listing thousands of tasks formats the same few seconds again and again.
    return datetime.fromtimestamp(whole_seconds).astimezone().isoformat()


def times(begin: float | None, end: float | None, expires: float | None, now: float) -> dict[str, str]:
    out: dict[str, str] = {}
    if begin is not None:
        out["begin"] = timestamp(begin)
    if end is not None:
        out["end"] = timestamp(end)
    if expires is not None:
        out["ttl"] = format_duration(max(0.0, expires - now))
    return out


def step_json(step: StepRecord, task: TaskRecord, lang: str, now: float) -> dict[str, Any]:
    return {
        "step": step.index,
        "name": step.name,
        "state": step.state.word(lang),
        "code": step.code,
        "message": step.output,
        "times": times(step.begin, step.end, task.expires, now),
    }


def step_result_json(step: StepRecord, task: TaskRecord, lang: str, now: float) -> tuple[int, str, dict[str, Any]]:
    """(code, message, data) of GET /<id>/<step>: codes as for a task, the step alone as data."""
    if not step.state.finished:
        code, msg = CODE_RUNNING, message("running", lang)
    elif step.succeeded:
        code, msg = CODE_OK, message("success", lang)
    else:
        code, msg = CODE_FAILED, message("failed", lang, index=step.index)
    return code, msg, step_json(step, task, lang, now)


def task_code(task: TaskRecord) -> int:
    if not task.state.finished:
        return CODE_RUNNING
    return CODE_OK if task.succeeded else CODE_FAILED


def task_message(task: TaskRecord, lang: str, *, listing: bool) -> str:
    code = task_code(task)
    if code == CODE_RUNNING:
        return message("running", lang)
    if code == CODE_OK:
        return message("all_succeeded" if listing else "success", lang)
    return message("failed", lang, index=task.failed_step if task.failed_step is not None else 0)


def result_json(task: TaskRecord, steps: tuple[StepRecord, ...], lang: str, now: float) -> tuple[int, str, list]:
    """(code, message, data) of GET /<id>: all steps, or only those that did not succeed."""
    code = task_code(task)
    shown = [s for s in steps if s.failed] if code == CODE_FAILED else list(steps)
    return code, task_message(task, lang, listing=False), [step_json(s, task, lang, now) for s in shown]


def detail_json(
    task: TaskRecord, steps: tuple[StepRecord, ...], specs: tuple[StepSpec, ...], lang: str, now: float
) -> dict[str, Any]:
    """GET /<id>?detail=true: the task as listed (with its mode) and every step with its depends_on."""
    depends = {s.name: list(s.depends_on) for s in specs}
    return {
        "task": {**task_summary_json(task, lang, now), "mode": task.mode},
        "steps": [{**step_json(s, task, lang, now), "depends_on": depends.get(s.name, [])} for s in steps],
    }


def task_summary_json(task: TaskRecord, lang: str, now: float) -> dict[str, Any]:
    return {
        "id": task.id,
        "state": task.state.word(lang),
        "code": task_code(task),
        "count": task.count,
        "message": task_message(task, lang, listing=True),
        "times": times(task.begin, task.end, task.expires, now),
    }


def list_body(tasks: list[TaskRecord], sort: str, lang: str, now: float, batch: int = 500) -> Iterator[bytes]:
    """The GET / envelope as a stream of chunks, so that a long list is never one big string."""
    ordered = sorted_tasks(tasks, sort)
    head = envelope(CODE_OK, message("success", lang), {"running": running_count(tasks), "tasks": []})
    yield head[: -len("]}}")].encode("utf-8")
    for start in range(0, len(ordered), batch):
        part = ",".join(
            json.dumps(task_summary_json(t, lang, now), ensure_ascii=False, separators=(",", ":"))
            for t in ordered[start : start + batch]
        )
        yield (("," if start else "") + part).encode("utf-8")
    yield f'],"total":{len(tasks)}}}}}'.encode()


def running_count(tasks: list[TaskRecord]) -> int:
    return sum(1 for t in tasks if t.state is State.RUNNING)
