"""Task list order, shared by GET /?sort= and Executor.list(sort=)."""

from __future__ import annotations

from .errors import InvalidRequest
from .records import TaskRecord

SORT_KEYS = {
    "start": "begin",
    "begin": "begin",
    "end": "end",
    "completed": "end",
    "ttl": "expires",
    "expired": "expires",
}


def check_sort(sort: str) -> str:
    if sort not in SORT_KEYS:
        raise InvalidRequest("bad_sort", value=sort)
    return sort


def sorted_tasks(tasks: list[TaskRecord], sort: str) -> list[TaskRecord]:
    """Ascending by the chosen time; tasks without that time last (by acceptance among themselves)."""
    field = SORT_KEYS[check_sort(sort)]
    return sorted(
        tasks,
        key=lambda t: (getattr(t, field) is None, getattr(t, field) or 0.0, t.accepted),
    )
