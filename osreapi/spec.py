"""What a submission asks for: validated, immutable step specifications."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import InvalidRequest, InvalidValue
from .executor import dag, interpreters
from .executor.durations import parse_duration

MAX_STEPS = 1000
MAX_NAME_LENGTH = 128
TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Route words that a task id would shadow.
RESERVED_IDS = frozenset({"healthz", "version", "metrics", "ui", "events", "openapi.json", "favicon.ico"})
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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command_type": self.command_type,
            "content": self.content,
            "env": [list(pair) for pair in self.env],
            "depends_on": list(self.depends_on),
            "timeout": self.timeout,
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
        )


def validate_task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not TASK_ID_PATTERN.fullmatch(task_id):
        raise InvalidRequest(
            "id: must be 1-64 characters, a letter or digit first, then letters, digits, '.', '_' or '-'"
        )
    if task_id.lower() in RESERVED_IDS:
        raise InvalidRequest(f"id: {task_id!r} is reserved for a route")
    return task_id


def parse_body(body: bytes | str) -> list[Any]:
    """Decode a submission body into a JSON array, with a clear error otherwise."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"body: not valid UTF-8 at byte {exc.start}") from None
    if not body.strip():
        raise InvalidRequest("body: empty, expected a JSON array of steps")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"body: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise InvalidRequest("body: JSON nested too deeply") from None
    return data


def build_steps(task_id: str, data: Any, limits: Limits = Limits()) -> tuple[StepSpec, ...]:
    """Validate a decoded submission; raise InvalidRequest naming the step and field."""
    if not isinstance(data, list):
        raise InvalidRequest(f"body: expected a JSON array of steps, got {_json_type(data)}")
    if not data:
        raise InvalidRequest("body: the array of steps is empty")
    if len(data) > limits.max_steps:
        raise InvalidRequest(f"body: too many steps ({len(data)}), the limit is {limits.max_steps}")
    steps = tuple(_build_step(task_id, index, item, limits) for index, item in enumerate(data))
    names: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step.name in names:
            raise InvalidRequest(f"step {index}: name {step.name!r} is already used by step {names[step.name]}")
        names[step.name] = index
    for index, step in enumerate(steps):
        for dep in step.depends_on:
            if dep == step.name:
                raise InvalidRequest(f"step {index}: depends_on names the step itself ({dep!r})")
            if dep not in names:
                raise InvalidRequest(f"step {index}: depends_on names an unknown step {dep!r}")
    cycle = dag.find_cycle([[names[d] for d in step.depends_on] for step in steps])
    if cycle:
        path = " -> ".join(steps[i].name for i in cycle + [cycle[0]])
        raise InvalidRequest(f"depends_on: dependency cycle {path}")
    return steps


def choose_mode(steps: tuple[StepSpec, ...], parallel: bool) -> Mode:
    if any(step.depends_on for step in steps):
        return Mode.DAG
    return Mode.PARALLEL if parallel else Mode.SEQUENTIAL


def _build_step(task_id: str, index: int, item: Any, limits: Limits) -> StepSpec:
    where = f"step {index}"
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}: expected an object, got {_json_type(item)}")
    command_type = item.get("command_type")
    if command_type is None or command_type == "":
        raise InvalidRequest(f"{where}: command_type is required")
    if not isinstance(command_type, str):
        raise InvalidRequest(f"{where}: command_type must be a string")
    if interpreters.lookup(command_type) is None:
        here = ", ".join(sorted(interpreters.available()))
        known = command_type in interpreters.KNOWN_TYPES
        reason = "is not available on this host" if known else "is unknown"
        raise InvalidRequest(f"{where}: command_type {command_type!r} {reason} (available: {here})")
    content = item.get("command_content")
    if content is None or content == "":
        raise InvalidRequest(f"{where}: command_content is required")
    if not isinstance(content, str):
        raise InvalidRequest(f"{where}: command_content must be a string")
    _check_text(where, "command_content", content)
    if len(content.encode("utf-8")) > limits.max_script_bytes:
        raise InvalidRequest(f"{where}: command_content is larger than {limits.max_script_bytes} bytes")
    name = item.get("name")
    if name is None or name == "":
        name = f"{task_id}-{index}"
    elif not isinstance(name, str):
        raise InvalidRequest(f"{where}: name must be a string")
    elif len(name) > MAX_NAME_LENGTH or "/" in name or name.strip() != name or not name.isprintable():
        raise InvalidRequest(
            f"{where}: name must be printable, at most {MAX_NAME_LENGTH} characters, without '/' or surrounding spaces"
        )
    elif name.isdigit():
        raise InvalidRequest(f"{where}: name {name!r} must not be all digits (it would read as a step index)")
    return StepSpec(
        name=name,
        command_type=interpreters.canonical_type(command_type),
        content=content,
        env=_build_env(where, item.get("env_vars"), limits),
        depends_on=_build_depends(where, item.get("depends_on")),
        timeout=_build_timeout(where, item.get("timeout")),
    )


def _check_text(where: str, field: str, value: str) -> None:
    """Refuse text that cannot be written as UTF-8 (lone surrogates from JSON escapes) or holds NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where}: {field} is not valid Unicode (a lone surrogate)") from None
    if "\x00" in value:
        raise InvalidRequest(f"{where}: {field} contains a NUL character")


def _build_env(where: str, value: Any, limits: Limits) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, val in value.items():
            if not isinstance(val, (str, int, float, bool)) or isinstance(val, bool):
                raise InvalidRequest(f"{where}: env_vars[{key!r}] must be a string")
            pairs.append((key, str(val)))
    elif isinstance(value, list):
        for position, entry in enumerate(value):
            if not isinstance(entry, str) or "=" not in entry:
                raise InvalidRequest(f"{where}: env_vars[{position}] must be a string 'NAME=value'")
            key, _, val = entry.partition("=")
            pairs.append((key, val))
    else:
        raise InvalidRequest(f"{where}: env_vars must be an array of 'NAME=value' strings or an object")
    if len(pairs) > limits.max_env_vars:
        raise InvalidRequest(f"{where}: env_vars has {len(pairs)} entries, the limit is {limits.max_env_vars}")
    for key, val in pairs:
        if not _ENV_NAME.match(key):
            raise InvalidRequest(f"{where}: env_vars has an invalid name {key!r}")
        _check_text(where, f"env_vars[{key!r}]", key + val)
    if sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) + 2 for k, v in pairs) > limits.max_env_bytes:
        raise InvalidRequest(f"{where}: env_vars are larger than {limits.max_env_bytes} bytes")
    return tuple(pairs)


def _build_depends(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"{where}: depends_on must be an array of step names")
    return tuple(dict.fromkeys(value))


def _build_timeout(where: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = parse_duration(value)
    except InvalidValue as exc:
        raise InvalidRequest(f"{where}: timeout: {exc}") from None
    if seconds < 0:
        raise InvalidRequest(f"{where}: timeout must not be negative")
    return seconds


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
