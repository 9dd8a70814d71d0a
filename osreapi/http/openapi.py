"""The OpenAPI 3.1 description of every route (served at /openapi.json, checked in tests)."""

from __future__ import annotations

from typing import Any

from .._version import __version__


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
ACTION = {"name": "action", "in": "query", "required": True,
          "schema": {"type": "string", "enum": ["kill", "pause", "resume"]}}
COMMON_ERRORS = {
    "400": _json(ERROR, "bad parameters"),
    "401": _json(ERROR, "a token is configured and the request lacks it (WWW-Authenticate: Bearer)"),
    "403": _json(ERROR, "protected mode: no token is configured and the client is not on loopback"),
    "429": _json(ERROR, "too many requests"),
    "408": _json(ERROR, "the request did not arrive whole within --read_timeout"),
    "431": _json(ERROR, "request header block over --max_header"),
    "503": _json(ERROR, "engine busy, or too many connections (Retry-After)"),
    "507": _json(ERROR, "the disk is full: nothing could be stored (code 507); reads go on working"),
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "osreapi", "version": __version__,
                 "description": "Remote executor: runs lists of scripts sequentially, in parallel or as a DAG."},
        "paths": {
            "/": {
                "get": {
                    "summary": "List tasks",
                    "operationId": "listTasks",
                    "parameters": [
                        {"name": "sort", "in": "query", "required": False, "schema": {
                            "type": "string", "enum": ["start", "begin", "end", "completed", "ttl", "expired"]}},
                        LANG,
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/TaskList"}, "all tasks"),
                        **COMMON_ERRORS,
                    },
                },
                "post": {
                    "summary": "Submit a task",
                    "operationId": "submitTask",
                    "parameters": [
                        {"name": "ansync", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]}},
                        {"name": "async", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]}},
                        {"name": "id", "in": "query", "required": False, "schema": {
                            "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}},
                        LANG,
                    ],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "array", "minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/StepInput"}}}}},
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Submitted"}, "accepted"),
                        "409": _json(ERROR, "the id names a task with a different submission (code 409)"),
                        "413": _json(ERROR, "body too large"),
                        **COMMON_ERRORS,
                    },
                },
            },
            "/{id}": {
                "get": {
                    "summary": "A task's result",
                    "operationId": "getTask",
                    "parameters": [TASK_ID, DETAIL, LANG],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Result"}, "0 all succeeded, 1001 running, 1002 failed"),
                        "404": _json(ERROR, "unknown or expired (code 1003)"),
                        **COMMON_ERRORS,
                    },
                },
                "delete": {
                    "summary": "Remove a finished task's record and workspace",
                    "operationId": "deleteTask",
                    "parameters": [TASK_ID, LANG],
                    "responses": {
                        "200": _json(_envelope(codes=[0]), "removed"),
                        "404": _json(ERROR, "unknown or expired (code 1003)"),
                        "409": _json(ERROR, "the task has not ended (code 409)"),
                        **COMMON_ERRORS,
                    },
                },
                "put": {
                    "summary": "Kill, pause or resume a task",
                    "operationId": "controlTask",
                    "parameters": [TASK_ID, ACTION, LANG],
                    "responses": {
                        "200": _json(_envelope(codes=[0]), "done"),
                        "404": _json(ERROR, "unknown task"),
                        **COMMON_ERRORS,
                    },
                },
            },
            "/{id}/{step}": {
                "get": {
                    "summary": "One step's record",
                    "operationId": "getStep",
                    "parameters": [TASK_ID, STEP_REF, LANG],
                    "responses": {
                        "200": _json(_envelope({"$ref": "#/components/schemas/Step"}, [0, 1001, 1002]), "the step"),
                        "404": _json(ERROR, "unknown task or step"),
                        **COMMON_ERRORS,
                    },
                },
                "put": {
                    "summary": "Kill, pause or resume one step",
                    "operationId": "controlStep",
                    "parameters": [TASK_ID, STEP_REF, ACTION, LANG],
                    "responses": {
                        "200": _json(_envelope(codes=[0]), "done"),
                        "404": _json(ERROR, "unknown task or step"),
                        **COMMON_ERRORS,
                    },
                },
            },
            "/{id}/{step}/log": {
                "get": {
                    "summary": "A step's output: text so far, followed (chunked), or Server-Sent Events",
                    "operationId": "getStepLog",
                    "parameters": [
                        TASK_ID, STEP_REF,
                        {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                        {"name": "follow", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]}},
                        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "output", "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "text/event-stream": {"schema": {"type": "string"}}}},
                        "404": _json(ERROR, "unknown task or step"),
                        "416": _json(ERROR, "offset past the end of the output (code 416)"),
                        **COMMON_ERRORS,
                    },
                },
            },
            "/healthz": {"get": {"summary": "Liveness of actors and store", "operationId": "health", "responses": {
                "200": _json(_envelope({"type": "object"}, [0]), 'alive; data.status is "ok" or "disk full"'),
                "503": _json(ERROR, "unhealthy")}}},
            "/version": {"get": {"summary": "Version", "operationId": "version", "responses": {
                "200": _json(_envelope({"type": "object", "required": ["version"],
                                        "properties": {"version": {"type": "string"}}}, [0]), "version")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/events": {"get": {
                "summary": "Server-Sent Events of task and step changes (event: task | step | reset; id: sequence)",
                "operationId": "events",
                "parameters": [
                    {"name": "task", "in": "query", "required": False, "schema": {
                        "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}},
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}},
                    LANG,
                ],
                "responses": {
                    "200": {"description": "an endless event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    **COMMON_ERRORS,
                }}},
            "/ui/": {"get": {"summary": "The dashboard (HTML; /ui redirects, /ui/tasks/{id} deep links)", "operationId": "dashboard",
                             "security": [{}], "responses": {
                "200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi", "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "security": [{}, {"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "needed on every route but /healthz when the server has a token"}},
            "schemas": {
                "Error": _envelope(),
                "Times": TIMES,
                "Step": STEP,
                "StepInput": STEP_INPUT,
                "Task": TASK,
                "Submitted": _envelope({"type": "object", "required": ["id", "count"], "properties": {
                    "id": {"type": "string"}, "count": {"type": "integer"}}, "additionalProperties": False}, [0]),
                "Result": _envelope({"oneOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
                    {"type": "object", "required": ["task", "steps"], "properties": {
                        "task": {"type": "object", "required": ["id", "mode"]},
                        "steps": {"type": "array", "items": {"type": "object", "required": ["step", "depends_on"]}}}},
                ]}, [0, 1001, 1002]),
                "TaskList": _envelope({"type": "object", "required": ["running", "tasks", "total"], "properties": {
                    "running": {"type": "integer"}, "total": {"type": "integer"},
                    "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}}}}, [0]),
            }
        },
    }
