"""The OpenAPI 3.1 description of every route (served at /openapi.json, checked in tests)."""

from __future__ import annotations

from typing import Any

from .._version import __version__
from ..spec import TASK_ID_PATTERN


def _envelope(data: dict[str, Any] | None = None, codes: list[int] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"code": {"type": "integer"}, "message": {"type": "string"}}
    if codes:
        props["code"] = {"type": "integer", "enum": codes}
    if data is not None:
        props["data"] = data
    return {"type": "object", "required": ["code", "message"], "properties": props}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = {"$ref": "#/components/schemas/Error"}
TIMES = {
    "type": "object",
    "properties": {
        "begin": {"type": "string", "description": "RFC 3339, whole seconds"},
        "end": {"type": "string"},
        "ttl": {"type": "string", "description": "Go duration left before the record expires"},
    },
    "additionalProperties": False,
}
STEP = {
    "type": "object",
    "required": ["step", "name", "state", "code", "message", "times"],
    "properties": {
        "step": {"type": "integer", "minimum": 0},
        "name": {"type": "string"},
        "state": {"type": "string"},
        "code": {"type": "integer"},
        "message": {"type": "string", "description": "combined stdout+stderr"},
        "times": {"$ref": "#/components/schemas/Times"},
    },
    "additionalProperties": False,
}
TASK = {
    "type": "object",
    "required": ["id", "state", "code", "count", "message", "times"],
    "properties": {
        "id": {"type": "string"},
        "state": {"type": "string"},
        "code": {"type": "integer", "enum": [0, 1001, 1002]},
        "count": {"type": "integer"},
        "message": {"type": "string"},
        "times": {"$ref": "#/components/schemas/Times"},
    },
    "additionalProperties": False,
}
STEP_INPUT = {
    "type": "object",
    "required": ["command_type", "command_content"],
    "properties": {
        "command_type": {"type": "string", "enum": ["sh", "bash", "python3", "python", "cmd", "powershell", "pwsh"]},
        "command_content": {"type": "string", "minLength": 1},
        "env_vars": {
            "oneOf": [
                {"type": "array", "items": {"type": "string", "pattern": "^[^=]+="}},
                {"type": "object", "additionalProperties": {"type": "string"}},
            ]
        },
        "name": {"type": "string"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "timeout": {"type": "string", "description": "Go duration, e.g. 30s"},
        "keep_background": {"type": "boolean", "description": "let background processes outlive the step"},
    },
    "additionalProperties": False,
}

TASK_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
STEP_REF = {"name": "step", "in": "path", "required": True, "description": "index or name",
            "schema": {"type": "string"}}
LANG = {"name": "lang", "in": "query", "required": False, "schema": {"type": "string", "enum": ["zh", "en"]}}
DETAIL = {"name": "detail", "in": "query", "required": False,
          "description": "true: data is {task, steps}: the task as listed plus its mode, every step plus its depends_on",
          "schema": {"type": "string", "enum": ["true", "false"]}}
WAIT = {"name": "wait", "in": "query", "required": False,
        "description": "a duration such as 30s (at most 60s): answer once the task has ended or the time is up",
        "schema": {"type": "string"}}
ACTION = {"name": "action", "in": "query", "required": True,
          "schema": {"type": "string", "enum": ["kill", "pause", "resume"]}}
COMMON_ERRORS = {
    "400": _json(ERROR, "bad parameters"),
    "401": _json(ERROR, "a token is configured and the request lacks it (WWW-Authenticate: Bearer)"),
    "403": _json(ERROR, "protected mode: no token is configured and the client is not on loopback, came through a "
                        "proxy or names a DNS host; or a page of another site sent a change"),
    "429": _json(ERROR, "too many requests"),
    "408": _json(ERROR, "the request did not arrive whole within --read_timeout"),
    "431": _json(ERROR, "request header block over --max_header"),
    "503": _json(ERROR, "engine busy, or too many connections (Retry-After)"),
    "507": _json(ERROR, "the disk is full, or the data dir was removed and cannot be made again: nothing could be "
                 "stored (code 507); reads go on working"),
}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


FLAG = {"type": "string", "enum": ["true", "false"]}
ID_SCHEMA = {"type": "string", "pattern": TASK_ID_PATTERN.pattern}
DONE = _json(_envelope(codes=[0]), "done")


def _op(summary: str, operation_id: str, parameters: list, responses: dict, common: bool = True, **extra: Any) -> dict:
    """One operation; `common`: it may also answer the errors every engine route can give."""
    operation = {"summary": summary, "operationId": operation_id, "responses": {**responses, **(COMMON_ERRORS if common else {})}}
    if parameters:
        operation["parameters"] = parameters
    return {**operation, **extra}


def _text(description: str, *types: str) -> dict[str, Any]:
    return {"description": description, "content": {t: {"schema": {"type": "string"}} for t in types}}


def _task_paths() -> dict[str, Any]:
    unknown = _json(ERROR, "unknown or expired (code 1003)")
    return {
        "/": {
            "get": _op("List tasks", "listTasks", [
                _query("sort", {"type": "string", "enum": ["start", "begin", "end", "completed", "ttl", "expired"]}), LANG,
            ], {"200": _json({"$ref": "#/components/schemas/TaskList"}, "all tasks")}),
            "post": _op("Submit a task", "submitTask", [_query("ansync", FLAG), _query("async", FLAG), _query("id", ID_SCHEMA), LANG], {
                "200": _json({"$ref": "#/components/schemas/Submitted"}, "accepted"),
                "409": _json(ERROR, "the id names a task with a different submission (code 409)"),
                "413": _json(ERROR, "body too large"),
            }, requestBody={"required": True, "content": {"application/json": {"schema": {
                "type": "array", "minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/StepInput"}}}}}),
        },
        "/{id}": {
            "get": _op("A task's result", "getTask", [TASK_ID, DETAIL, WAIT, LANG], {
                "200": _json({"$ref": "#/components/schemas/Result"}, "0 all succeeded, 1001 running, 1002 failed"),
                "400": _json(ERROR, "a wait that is not a duration"),
                "404": unknown,
            }),
            "delete": _op("Remove a finished task's record and workspace", "deleteTask", [TASK_ID, LANG], {
                "200": _json(_envelope(codes=[0]), "removed"),
                "404": unknown,
                "409": _json(ERROR, "the task has not ended (code 409)"),
            }),
            "put": _op("Kill, pause or resume a task", "controlTask", [TASK_ID, ACTION, LANG],
                       {"200": DONE, "404": _json(ERROR, "unknown task")}),
        },
    }


def _step_paths() -> dict[str, Any]:
    unknown = _json(ERROR, "unknown task or step")
    return {
        "/{id}/{step}": {
            "get": _op("One step's record", "getStep", [TASK_ID, STEP_REF, LANG], {
                "200": _json(_envelope({"$ref": "#/components/schemas/Step"}, [0, 1001, 1002]), "the step"),
                "404": unknown,
            }),
            "put": _op("Kill, pause or resume one step", "controlStep", [TASK_ID, STEP_REF, ACTION, LANG],
                       {"200": DONE, "404": unknown}),
        },
        "/{id}/{step}/log": {
            "get": _op("A step's output: text so far, followed (chunked), or Server-Sent Events", "getStepLog", [
                TASK_ID, STEP_REF,
                _query("offset", {"type": "integer", "minimum": 0}),
                _query("follow", FLAG),
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
            ], {
                "200": _text("output", "text/plain", "text/event-stream"),
                "404": unknown,
                "416": _json(ERROR, "offset past the end of the output (code 416)"),
            }),
        },
    }


def _service_paths() -> dict[str, Any]:
    version = {"type": "object", "required": ["version"], "properties": {"version": {"type": "string"}}}
    return {
        "/healthz": {"get": _op("Liveness of actors and store", "health", [], {
            "200": _json(_envelope({"type": "object"}, [0]), 'alive; data.status is "ok", "disk full" or "data dir lost"'),
            "503": _json(ERROR, "unhealthy"),
        }, common=False)},
        "/version": {"get": _op("Version", "version", [], {"200": _json(_envelope(version, [0]), "version")}, common=False)},
        "/metrics": {"get": _op("Prometheus metrics", "metrics", [], {"200": _text("Prometheus text format", "text/plain")},
                                common=False)},
        "/events": {"get": _op("Server-Sent Events of task and step changes (event: task | step | delete | reset; id: sequence)",
                               "events", [
            _query("task", ID_SCHEMA),
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}},
            LANG,
        ], {"200": _text("an endless event stream", "text/event-stream")})},
        "/ui/": {"get": _op("The dashboard (HTML; /ui redirects, /ui/tasks/{id} deep links)", "dashboard", [],
                            {"200": _text("the page", "text/html")}, common=False, security=[{}])},
        "/openapi.json": {"get": _op("This document", "openapi", [], {
            "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}},
        }, common=False)},
    }


def _schemas() -> dict[str, Any]:
    submitted = {"type": "object", "required": ["id", "count"], "additionalProperties": False,
                 "properties": {"id": {"type": "string"}, "count": {"type": "integer"}}}
    detail = {"type": "object", "required": ["task", "steps"], "properties": {
        "task": {"type": "object", "required": ["id", "mode"]},
        "steps": {"type": "array", "items": {"type": "object", "required": ["step", "depends_on"]}}}}
    listing = {"type": "object", "required": ["running", "tasks", "total"], "properties": {
        "running": {"type": "integer"}, "total": {"type": "integer"},
        "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}}}}
    steps = {"type": "array", "items": {"$ref": "#/components/schemas/Step"}}
    return {
        "Error": _envelope(),
        "Times": TIMES,
        "Step": STEP,
        "StepInput": STEP_INPUT,
        "Task": TASK,
        "Submitted": _envelope(submitted, [0]),
        "Result": _envelope({"oneOf": [steps, detail]}, [0, 1001, 1002]),
        "TaskList": _envelope(listing, [0]),
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "osreapi", "version": __version__,
                 "description": "Remote executor: runs lists of scripts sequentially, in parallel or as a DAG."},
        "paths": {**_task_paths(), **_step_paths(), **_service_paths()},
        "security": [{}, {"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "needed on every route but /healthz when the server has a token"}},
            "schemas": _schemas(),
        },
    }
