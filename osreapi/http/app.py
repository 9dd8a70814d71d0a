"""The Bottle application: the seed's routes, a thin client of the Executor."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import bottle

from .. import __version__
from ..embed import Executor
from ..errors import ActionRejected, EngineBusy, EngineClosed, InvalidRequest, NotFound, TaskActive, TaskConflict
from ..records import StepRecord
from ..vocabulary import (
    CODE_BAD_REQUEST,
    CODE_BUSY,
    CODE_CONFLICT,
    CODE_RANGE,
    CODE_INTERNAL,
    CODE_NOT_FOUND,
    CODE_OK,
    CODE_TOO_LARGE,
    CODE_TOO_MANY,
    DEFAULT_LANGUAGE,
    message,
)
from . import openapi, render
from .answers import JSON_TYPE, language_of, refuse
from .logstream import LogSource
from .security import Guard, audit
from .streams import Handoff, StreamHub

log = logging.getLogger(__name__)
_DIGITS = re.compile(r"[0-9]+")
MAX_OFFSET = 1 << 62  # fits os.lseek
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
_STATUS_OF_CODE = {CODE_NOT_FOUND: 404, CODE_BAD_REQUEST: 400, CODE_CONFLICT: 409, CODE_TOO_LARGE: 413, CODE_RANGE: 416, CODE_TOO_MANY: 429,
                   CODE_INTERNAL: 500, CODE_BUSY: 503}


@dataclass(frozen=True)
class HttpSettings:
    lang: str = DEFAULT_LANGUAGE
    max_body: int = 1 << 20
    max_requests: int = 0  # 0 = no limit
    token: str | None = None  # None: protected mode (loopback clients only)


def request_language(default: str) -> str:
    return language_of(bottle.request.environ, default)


def json_response(code: int, msg: str, data: Any = None, headers: dict[str, str] | None = None) -> bottle.HTTPResponse:
    status = _STATUS_OF_CODE.get(code, 200)
    all_headers = {"Content-Type": JSON_TYPE, **(headers or {})}
    return bottle.HTTPResponse(body=render.envelope(code, msg, data), status=status, headers=all_headers)


def make_app(executor: Executor, settings: HttpSettings, clock: Callable[[], float] | None = None) -> Callable:
    """Build the WSGI application (the Bottle app wrapped in the concurrency limit)."""
    app = bottle.Bottle(catchall=True)
    now = clock or executor.clock

    def lang() -> str:
        return request_language(settings.lang)

    def api(handler: Callable[..., bottle.HTTPResponse]) -> Callable[..., bottle.HTTPResponse]:
        """Turn engine errors into envelopes; never let a traceback reach the client."""

        def wrapper(*args: Any, **kwargs: Any) -> bottle.HTTPResponse:
            try:
                return handler(*args, **kwargs)
            except (InvalidRequest, ActionRejected) as exc:
                return json_response(CODE_BAD_REQUEST, exc.text(lang()))
            except TaskConflict as exc:
                return json_response(CODE_CONFLICT, message("task_conflict", lang(), id=exc.task_id))
            except NotFound:
                return json_response(CODE_NOT_FOUND, message("not_found", lang()))
            except (EngineBusy, EngineClosed):
                return json_response(CODE_BUSY, message("busy", lang()))
            except bottle.HTTPResponse:
                raise
            except Exception:
                log.exception("internal error on %s %s", bottle.request.method, bottle.request.path)
                return json_response(CODE_INTERNAL, message("internal", lang()))

        return wrapper

    hub = StreamHub(settings.lang)
    openapi_body = json.dumps(openapi.document(), ensure_ascii=False)

    @app.hook("after_request")
    def count_request() -> None:
        environ = bottle.request.environ
        route = environ.get("bottle.route")
        rule = route.rule if route is not None else "unmatched"
        status = bottle.response.status_code
        executor.metrics.http_requests.labels(bottle.request.method, rule, str(status)).inc()
        if bottle.request.method in ("POST", "PUT", "DELETE", "PATCH"):
            args = environ.get("route.url_args") or {}
            task_id, steps = environ.get("osreapi.submitted", (args.get("task_id"), None))
            audit(environ, route=rule, task_id=task_id, steps=steps, status=status)

    @app.get("/healthz")
    @api
    def healthz() -> bottle.HTTPResponse:
        executor.check_health()
        return json_response(CODE_OK, message("success", lang()), {"status": "ok"})

    @app.get("/version")
    @api
    def version() -> bottle.HTTPResponse:
        return json_response(CODE_OK, message("success", lang()), {"version": __version__})

    @app.get("/metrics")
    @api
    def metrics() -> bottle.HTTPResponse:
        from prometheus_client import CONTENT_TYPE_LATEST

        return bottle.HTTPResponse(body=executor.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/openapi.json")
    def openapi_json() -> bottle.HTTPResponse:
        return bottle.HTTPResponse(body=openapi_body, headers={"Content-Type": JSON_TYPE})

    @app.post("/")
    @api
    def submit() -> bottle.HTTPResponse:
        query = bottle.request.query
        parallel = _flag(query, "async") or _flag(query, "ansync")
        task_id = query.get("id")
        body = _read_body(settings.max_body)
        if body is None:
            return json_response(CODE_TOO_LARGE, message("too_large", lang(), limit=settings.max_body))
        submitted = executor.submit_task(body, parallel=parallel, task_id=task_id)
        bottle.request.environ["osreapi.submitted"] = (submitted.id, submitted.count)
        data = {"id": submitted.id, "count": submitted.count}
        return json_response(CODE_OK, message("success", lang()), data, {"X-Task-ID": submitted.id})

    @app.get("/")
    @api
    def list_tasks() -> bottle.HTTPResponse:
        sort = bottle.request.query.get("sort") or "start"
        if sort not in render.SORT_KEYS:
            raise InvalidRequest("bad_sort", value=sort)
        tasks = executor.list()
        return bottle.HTTPResponse(body=render.list_body(tasks, sort, lang(), now()), headers={"Content-Type": JSON_TYPE})

    @app.get("/<task_id>")
    @api
    def get_task(task_id: str) -> bottle.HTTPResponse:
        language = lang()
        result = executor.get(task_id)
        if result is None:
            return json_response(CODE_NOT_FOUND, message("not_found", language))
        code, msg, data = render.result_json(result.task, result.steps, language, now())
        if _flag(bottle.request.query, "detail"):  # ours: every step, with its dependencies
            data = render.detail_json(result.task, result.steps, executor.specs(task_id), language, now())
        return json_response(code, msg, data)

    @app.delete("/<task_id>")
    @api
    def delete_task(task_id: str) -> bottle.HTTPResponse:
        try:
            executor.delete(task_id)
        except TaskActive:
            return json_response(CODE_CONFLICT, message("task_active", lang(), id=task_id))
        return json_response(CODE_OK, message("success", lang()))

    @app.put("/<task_id>")
    @api
    def control_task(task_id: str) -> bottle.HTTPResponse:
        executor.control(task_id, bottle.request.query.get("action") or "", None)
        return json_response(CODE_OK, message("success", lang()))

    @app.put("/<task_id>/<step>")
    @api
    def control_step(task_id: str, step: str) -> bottle.HTTPResponse:
        executor.control(task_id, bottle.request.query.get("action") or "", step)
        return json_response(CODE_OK, message("success", lang()))

    @app.get("/<task_id>/<step>")
    @api
    def get_step(task_id: str, step: str) -> bottle.HTTPResponse:
        task, record = executor.step(task_id, step)
        return json_response(*render.step_result_json(record, task, lang(), now()))

    @app.get("/<task_id>/<step>/log")
    @api
    def step_log(task_id: str, step: str) -> bottle.HTTPResponse:
        language = lang()
        index = executor.step(task_id, step, output=False)[1].index
        environ = bottle.request.environ  # raw header text: bottle's headers raise on bytes that are not UTF-8
        sse = "text/event-stream" in environ.get("HTTP_ACCEPT", "")
        follow = _flag(bottle.request.query, "follow")
        offset = _offset(bottle.request.query.get("offset"), environ.get("HTTP_LAST_EVENT_ID") if sse else None)

        def current() -> StepRecord | None:  # polled while following: state only, no log read
            try:
                return executor.step(task_id, index, output=False)[1]
            except NotFound:
                return None

        def end_record() -> dict | None:
            try:
                task_now, step_now = executor.step(task_id, index)
            except NotFound:
                return None
            if not step_now.state.finished:
                return None
            return render.step_json(step_now, task_now, language, now())

        source = LogSource(executor.log_path(task_id, index), offset, sse=sse, follow=follow, step=current,
                           end_record=end_record, max_output=executor.config.max_output)
        if offset > source.size():
            return json_response(CODE_RANGE, message("offset_past_end", language, offset=offset, size=source.size()))
        kind = "text/event-stream" if sse else "text/plain"
        headers = [("Content-Type", f"{kind}; charset=utf-8"), ("Cache-Control", "no-cache")]
        if follow:
            return hub.serve(environ, "200 OK", headers, source)
        return bottle.HTTPResponse(body=hub.drive(source), headers=dict(headers))

    @app.error(404)
    def not_found(_: bottle.HTTPError) -> str:
        bottle.response.content_type = JSON_TYPE
        return render.envelope(CODE_NOT_FOUND, message("no_route", lang()))

    @app.error(405)
    def method_not_allowed(_: bottle.HTTPError) -> str:
        bottle.response.content_type = JSON_TYPE
        return render.envelope(405, message("method", lang()))

    @app.error(500)
    def internal(err: bottle.HTTPError) -> str:
        log.error("unhandled error: %s", err.exception)
        bottle.response.content_type = JSON_TYPE
        return render.envelope(CODE_INTERNAL, message("internal", lang()))

    return Guard(RequestLimit(Handoff(app, hub), settings, hub), settings.token, settings.lang)


def _flag(query: bottle.FormsDict, name: str) -> bool:
    value = query.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidRequest("bad_flag", name=name, value=value)


def _offset(query_value: str | None, last_event_id: str | None) -> int:
    for name, value in (("Last-Event-ID", last_event_id), ("offset", query_value)):
        if value is None or value == "":
            continue
        return _whole_number(name, value.strip(), MAX_OFFSET)
    return 0


def _whole_number(name: str, text: str, limit: int) -> int:
    """ASCII digits only ('²'.isdigit() is true) and at most `limit`, so that lseek and int() never fail."""
    if not _DIGITS.fullmatch(text) or len(text) > len(str(limit)) or int(text) > limit:
        raise InvalidRequest("bad_offset", name=name, value=text, limit=limit)
    return int(text)


def _read_body(limit: int) -> bytes | None:
    """The raw body whatever its Content-Type (curl -d sends form encoding); None if over limit."""
    environ = bottle.request.environ
    length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length.strip():
        if not _DIGITS.fullmatch(length.strip()):  # '-1' would read to EOF, past --max_body
            raise InvalidRequest("content_length", value=length)
        size = int(length) if len(length.strip()) <= 18 else limit + 1
        if size > limit:
            return None
        body = _read(stream, size) if size else b""
        if len(body) < size:
            raise InvalidRequest("body_truncated", got=len(body), size=size)
        return body
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        body = _read(stream, limit + 1)
        return None if len(body) > limit else body
    return b""


def _read(stream, size: int) -> bytes:
    try:
        return stream.read(size)
    except (OSError, ValueError) as exc:  # a client that stopped sending or sent a broken chunk
        raise InvalidRequest("body_unreadable", reason=exc.__class__.__name__) from None


class RequestLimit:
    """WSGI middleware: at most `max_requests` requests in flight; beyond it 429."""

    def __init__(self, app: Callable, settings: HttpSettings, hub: StreamHub) -> None:
        self.app = app
        self.hub = hub  # streams handed off to it no longer hold a slot
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_requests) if settings.max_requests > 0 else None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self._slots is None:
            return self.app(environ, start_response)
        if not self._slots.acquire(blocking=False):
            text = message("too_many_requests", language_of(environ, self.settings.lang))
            return refuse(start_response, "429 Too Many Requests", CODE_TOO_MANY, text)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            self._slots.release()
            raise
        if isinstance(result, (list, tuple)):
            # Whole body already built: the request is no longer in flight.
            self._slots.release()
            return result
        return _ReleaseOnClose(result, self._slots.release)


class _ReleaseOnClose:
    """A streamed body holds its slot until it is exhausted (before the server writes the last
    chunk, so a client that then sends its next request never races the release) or closed
    (a client that went away)."""

    def __init__(self, body: Iterable[bytes], release: Callable[[], None]) -> None:
        self._body = body
        self._release = release
        self._released = False

    def __iter__(self):
        try:
            yield from self._body
        finally:
            self._release_once()

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close:
                close()
        finally:
            self._release_once()

    def _release_once(self) -> None:
        if not self._released:
            self._released = True
            self._release()
