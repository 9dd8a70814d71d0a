"""What a submission asks for: validated, immutable step specifications."""

from __future__ import annotations

import difflib
import json
import re
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import InvalidRequest, InvalidValue
from .executor import dag, interpreters
from .executor.durations import parse_duration
from .vocabulary import Phrase

MAX_STEPS = 1000
MAX_NAME_LENGTH = 128
TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Route words that a task id would shadow.
RESERVED_IDS = frozenset({"healthz", "version", "metrics", "ui", "events", "openapi.json", "favicon.ico"})
STEP_FIELDS = ("command_type", "command_content", "env_vars", "name", "depends_on", "timeout", "keep_background")
_ENV_NAME = re.compile(r"^[^=\x00]+$")


@dataclass(frozen=True)
class Limits:
    """What one submission may ask for; each is a server flag."""

    max_steps: int = MAX_STEPS
    max_script_bytes: int = 1 << 20  # command_content, UTF-8 bytes
    max_env_vars: int = 256  # per step
    max_env_bytes: int = 128 * 1024  # per step: names and values together


class Mode(str, Enum):
    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"
    DAG = "dag"


@dataclass(frozen=True)
class StepSpec:
    name: str
    command_type: str
    content: str
    env: tuple[tuple[str, str], ...] = ()
    depends_on: tuple[str, ...] = ()
    timeout: float | None = None  # seconds; None = the server's default; 0 = no limit
    keep_background: bool = False  # background processes may outlive the step

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command_type": self.command_type,
            "content": self.content,
            "env": [list(pair) for pair in self.env],
            "depends_on": list(self.depends_on),
            "timeout": self.timeout,
            "keep_background": self.keep_background,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepSpec:
        return cls(
            name=data["name"],
            command_type=data["command_type"],
            content=data["content"],
            env=tuple((k, v) for k, v in data["env"]),
            depends_on=tuple(data["depends_on"]),
            timeout=data["timeout"],
            keep_background=data.get("keep_background", False),  # absent from older records
        )


def validate_task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not TASK_ID_PATTERN.fullmatch(task_id):
        raise InvalidRequest("bad_id")
    if task_id.lower() in RESERVED_IDS:
        raise InvalidRequest("reserved_id", id=task_id)
    return task_id


def parse_body(body: bytes | str) -> list[Any]:
    """Decode a submission body into a JSON array, with a clear error otherwise."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest("body_not_utf8", at=exc.start) from None
    if not body.strip():
        raise InvalidRequest("body_empty")
    try:
        data = json.loads(body, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise InvalidRequest("body_bad_json", line=exc.lineno, column=exc.colno, reason=exc.msg) from None
    except RecursionError:
        raise InvalidRequest("body_too_deep") from None
    except ValueError:  # int() refuses a number this long (CVE-2020-10735), and names no position
        raise InvalidRequest("body_number_too_long", limit=sys.get_int_max_str_digits()) from None
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different. Given twice (`"command_content"` twice in a
    step), json keeps the last, where a proxy or a reviewer that checked the body may have read
    the first: what runs would not be what was checked."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequest("body_duplicate_key", key=key[:64])
            seen.add(key)
    return obj


def build_steps(task_id: str, data: Any, limits: Limits = Limits()) -> tuple[StepSpec, ...]:
    """Validate a decoded submission; raise InvalidRequest naming the step and field."""
    if not isinstance(data, list):
        raise InvalidRequest("body_not_array", got=_json_type(data))
    if not data:
        raise InvalidRequest("body_no_steps")
    if len(data) > limits.max_steps:
        raise InvalidRequest("too_many_steps", count=len(data), limit=limits.max_steps)
    steps = tuple(_build_step(task_id, index, item, limits) for index, item in enumerate(data))
    names: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step.name in names:
            raise InvalidRequest("duplicate_name", step=index, name=step.name, other=names[step.name])
        names[step.name] = index
    for index, step in enumerate(steps):
        for dep in step.depends_on:
            if dep == step.name:
                raise InvalidRequest("self_dependency", step=index, name=dep)
            if dep not in names:
                raise InvalidRequest("unknown_dependency", step=index, name=dep)
    cycle = dag.find_cycle([[names[d] for d in step.depends_on] for step in steps])
    if cycle:
        path = " -> ".join(steps[i].name for i in cycle + [cycle[0]])
        raise InvalidRequest("dependency_cycle", path=path)
    return steps


def choose_mode(steps: tuple[StepSpec, ...], parallel: bool) -> Mode:
    if any(step.depends_on for step in steps):
        return Mode.DAG
    return Mode.PARALLEL if parallel else Mode.SEQUENTIAL


def _build_step(task_id: str, index: int, item: Any, limits: Limits) -> StepSpec:
    if not isinstance(item, dict):
        raise InvalidRequest("not_object", step=index, got=_json_type(item))
    _check_fields(index, item)
    command_type = _build_command_type(index, item.get("command_type"))
    content = _required_text(index, "command_content", item.get("command_content"))
    if len(content.encode("utf-8")) > limits.max_script_bytes:
        raise InvalidRequest("script_too_large", step=index, limit=limits.max_script_bytes)
    return StepSpec(
        name=_build_name(task_id, index, item.get("name")),
        command_type=command_type,
        content=content,
        env=_build_env(index, item.get("env_vars"), limits),
        depends_on=_build_depends(index, item.get("depends_on")),
        timeout=_build_timeout(index, item.get("timeout")),
        keep_background=_build_boolean(index, "keep_background", item.get("keep_background")),
    )


def _check_fields(index: int, item: dict[str, Any]) -> None:
    """A field the step does not know is refused, with the nearest known one when it is close."""
    for field in item:
        if field not in STEP_FIELDS:
            near = difflib.get_close_matches(str(field), STEP_FIELDS, n=1, cutoff=0.6)
            hint = Phrase("did_you_mean", {"field": near[0]}) if near else ""
            raise InvalidRequest("unknown_field", step=index, field=field, hint=hint)


def _required_text(index: int, field: str, value: Any) -> str:
    if value is None or value == "":
        raise InvalidRequest("required", step=index, field=field)
    if not isinstance(value, str):
        raise InvalidRequest("must_be_string", step=index, field=field)
    _check_text(index, field, value)
    return value


def _build_command_type(index: int, value: Any) -> str:
    command_type = _required_text(index, "command_type", value)
    if interpreters.lookup(command_type) is None:
        here = ", ".join(sorted(interpreters.available()))
        key = "type_unavailable" if command_type in interpreters.KNOWN_TYPES else "type_unknown"
        raise InvalidRequest(key, step=index, value=command_type, available=here)
    return interpreters.canonical_type(command_type)


def _build_name(task_id: str, index: int, name: Any) -> str:
    if name is None or name == "":
        return f"{task_id}-{index}"
    if not isinstance(name, str):
        raise InvalidRequest("must_be_string", step=index, field="name")
    if len(name) > MAX_NAME_LENGTH or "/" in name or name.strip() != name or not name.isprintable():
        raise InvalidRequest("bad_name", step=index, limit=MAX_NAME_LENGTH)
    if name.isdigit():
        raise InvalidRequest("digit_name", step=index, name=name)
    return name


def _check_text(index: int, field: str, value: str) -> None:
    """Refuse text that cannot be written as UTF-8 (lone surrogates from JSON escapes) or holds NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("lone_surrogate", step=index, field=field) from None
    if "\x00" in value:
        raise InvalidRequest("nul_character", step=index, field=field)


def _build_env(index: int, value: Any, limits: Limits) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, val in value.items():
            if not isinstance(val, (str, int, float)) or isinstance(val, bool):
                raise InvalidRequest("env_value_type", step=index, name=key)
            pairs.append((key, str(val)))
    elif isinstance(value, list):
        for position, entry in enumerate(value):
            if not isinstance(entry, str) or "=" not in entry:
                raise InvalidRequest("env_entry", step=index, position=position)
            key, _, val = entry.partition("=")
            pairs.append((key, val))
    else:
        raise InvalidRequest("env_type", step=index)
    if len(pairs) > limits.max_env_vars:
        raise InvalidRequest("env_count", step=index, count=len(pairs), limit=limits.max_env_vars)
    for key, val in pairs:
        if not _ENV_NAME.match(key):
            raise InvalidRequest("env_name", step=index, name=key)
        _check_text(index, f"env_vars[{key!r}]", key + val)
    if sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) + 2 for k, v in pairs) > limits.max_env_bytes:
        raise InvalidRequest("env_size", step=index, limit=limits.max_env_bytes)
    return tuple(pairs)


def _build_depends(index: int, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest("depends_on_type", step=index)
    return tuple(dict.fromkeys(value))


def _build_timeout(index: int, value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = parse_duration(value)
    except InvalidValue:
        raise InvalidRequest("bad_timeout", step=index, value=value) from None
    if seconds < 0:
        raise InvalidRequest("negative_timeout", step=index)
    return seconds


def _build_boolean(index: int, field: str, value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest("must_be_boolean", step=index, field=field)
    return value


def _json_type(value: Any) -> Phrase:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null", int: "number",
             float: "number"}
    if type(value) in kinds:
        return Phrase("json_" + kinds[type(value)])
    return Phrase(f"a Python {type(value).__name__}")  # from an embedding program: no JSON type to name
