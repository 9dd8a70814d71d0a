"""The Bottle application: the seed's routes, a thin client of the Executor."""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import bottle
from cheroot.errors import MaxSizeExceeded

from .. import __version__
from ..embed import MAX_OFFSET, Executor
from ..errors import (
    ActionRejected,
    CaseConflict,
    DataDirLost,
    DiskFull,
    EngineBusy,
    EngineClosed,
    EngineFailed,
    InvalidRequest,
    NotFound,
    NotStored,
    StepNotFound,
    StoreUnavailable,
    TaskActive,
    TaskConflict,
    out_of_descriptors,
)
from ..events import EventBus
from ..executor.logsource import LogSource
from ..listing import check_sort
from ..plaintext import ASCII_DIGITS
from ..records import StepRecord
from ..spec import RESERVED_IDS
from ..vocabulary import (
    CODE_BAD_REQUEST,
    CODE_BUSY,
    CODE_CONFLICT,
    CODE_DISK_FULL,
    CODE_INTERNAL,
    CODE_NOT_FOUND,
    CODE_OK,
    CODE_RANGE,
    CODE_TOO_LARGE,
    CODE_TOO_MANY,
    DEFAULT_LANGUAGE,
    header_quality,
    message,
)
from . import dashboard, openapi, render, urltext
from .answers import JSON_TYPE, language_of, refuse
from .health import HealthCheck
from .intake import RETRY_AFTER
from .logstream import SharedPoll
from .resultcache import FinishedResults
from .security import Guard, audit, audit_key
from .streams import ENVIRON_SLOT, TICK, Handoff, RequestSlot, StreamHub
from .wait import wait_for_task, wait_time

log = logging.getLogger(__name__)
Answer = str | bytes | bottle.HTTPResponse  # what a route returns to Bottle
WHOLE_LOG_ANSWER = 1 << 20  # a log as it stands up to this size is answered whole, over it streamed
# A task id in a route: any path segment but the name of one of the server's own routes (an id can
# never be one), so that `PUT /events` is 405 and `/favicon.ico` "no such route", not "no such task".
_RESERVED = "|".join(re.escape(name) for name in sorted(RESERVED_IDS))
TASK = f"<task_id:re:(?!(?i:{_RESERVED})(?:/|$))[^/]+>"
# Methods counted by name on /metrics; any other is "OTHER": each name a client makes up would
# be a series of its own, kept for the server's life (method names up to --max_header long).
COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
_STATUS_OF_CODE = {CODE_NOT_FOUND: 404, CODE_BAD_REQUEST: 400, CODE_CONFLICT: 409, CODE_TOO_LARGE: 413, CODE_RANGE: 416, CODE_TOO_MANY: 429,
                   CODE_INTERNAL: 500, CODE_BUSY: 503, CODE_DISK_FULL: 507}


@dataclass(frozen=True)
class HttpSettings:
    lang: str = DEFAULT_LANGUAGE
    max_body: int = 1 << 20
    max_requests: int = 0  # 0 = no limit
    token: str | None = None  # None: protected mode (loopback clients only)


def request_language(default: str) -> str:
    return language_of(bottle.request.environ, default)


def json_response(code: int, msg: str, data: Any = None, headers: dict[str, str] | None = None) -> bytes:
    return json_body(render.envelope(code, msg, data), _STATUS_OF_CODE.get(code, 200), headers)


def json_body(body: str | bytes, status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    """A JSON answer: status and headers set on Bottle's response, the body returned encoded (on
    the read path an HTTPResponse object costs more than rendering the body, and a str body makes
    Bottle parse the charset back out of the Content-Type)."""
    response = bottle.response
    response.status = status
    response.content_type = JSON_TYPE
    for name, value in (headers or {}).items():
        response.set_header(name, value)
    return body.encode("utf-8") if isinstance(body, str) else body


@dataclass(frozen=True)
class Routes:
    """What every route of one application shares."""

    executor: Executor
    settings: HttpSettings
    now: Callable[[], float]
    hub: StreamHub
    bus: EventBus  # every committed change, for /events and GET /<id>?wait=

    def lang(self) -> str:
        return request_language(self.settings.lang)

    def api(self, handler: Callable[..., Answer]) -> Callable[..., Answer]:
        """Turn engine errors into envelopes; never let a traceback reach the client."""

        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Answer:
            try:
                return handler(*args, **kwargs)
            except bottle.HTTPResponse:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes an envelope
                return self.refusal(exc)

        return wrapper

    def refusal(self, exc: Exception) -> Answer:
        lang = self.lang()
        match exc:
            case InvalidRequest() | ActionRejected():
                return json_response(CODE_BAD_REQUEST, exc.text(lang))
            case CaseConflict():
                return json_response(CODE_CONFLICT, message("task_case_conflict", lang, id=exc.task_id, existing=exc.existing))
            case TaskConflict():
                return json_response(CODE_CONFLICT, message("task_conflict", lang, id=exc.task_id))
            case TaskActive():
                return json_response(CODE_CONFLICT, message("task_active", lang, id=exc.task_id))
            case StepNotFound():  # the task exists: "id不存在" would send its reader the wrong way
                return json_response(CODE_NOT_FOUND, message("step_not_found", lang, step=exc.step))
            case NotFound():
                return json_response(CODE_NOT_FOUND, message("not_found", lang))
            case StoreUnavailable():  # opened again at once: worth a retry soon
                return json_response(CODE_BUSY, message("store_unavailable", lang), headers={"Retry-After": str(RETRY_AFTER)})
            case EngineBusy() | EngineClosed():
                return json_response(CODE_BUSY, message("busy", lang))
            case DataDirLost():  # before DiskFull, its base: the reason is another one
                return json_response(CODE_DISK_FULL, message("data_dir_lost", lang))
            case DiskFull():
                return json_response(CODE_DISK_FULL, message("disk_full", lang))
            case OSError() if out_of_descriptors(exc):  # short of a resource for now: say when to retry
                log.warning("%s %r: %s", bottle.request.method, bottle.request.path, exc)
                return json_response(CODE_BUSY, message("out_of_descriptors", lang), headers={"Retry-After": str(RETRY_AFTER)})
            case NotStored():  # a submit whose runner failed: no task ends interrupted, none exists
                log.error("%s %r: %s", bottle.request.method, bottle.request.path, exc)
                return json_response(CODE_INTERNAL, message("engine_failed_not_stored", lang))
            case EngineFailed():  # the failure itself was logged, with its traceback, where it happened
                log.error("%s %r: %s", bottle.request.method, bottle.request.path, exc)
                return json_response(CODE_INTERNAL, message("engine_failed", lang))
        # The path quoted: a line break a client put in it (%0A) cannot start a forged log line.
        log.exception("internal error on %s %r", bottle.request.method, bottle.request.path)
        return json_response(CODE_INTERNAL, message("internal", lang))

    def success(self, data: Any = None, headers: dict[str, str] | None = None) -> Answer:
        return json_response(CODE_OK, message("success", self.lang()), data, headers)


def make_app(
    executor: Executor, settings: HttpSettings, clock: Callable[[], float] | None = None, stream_tick: float = TICK
) -> Callable:
    """Build the WSGI application: the Bottle routes wrapped in auth, the request limit and the
    stream hand-off. stream_tick: how often the stream hub looks at its streams without news."""
    app = bottle.Bottle(catchall=True)
    hub = StreamHub(settings.lang, tick=stream_tick)
    routes = Routes(executor, settings, clock or executor.clock, hub, _event_bus(executor))
    routes.bus.add_waker(routes.hub.wake)  # news: the hub reads its streams now, not at its next tick
    _count_requests(app, executor)
    urltext.add_hook(app, routes.lang)
    _add_operations(app, routes)
    dashboard.add_routes(app, routes.api, routes.lang, routes.hub, routes.bus)
    _add_task_routes(app, routes)
    _add_step_routes(app, routes)
    _add_error_pages(app, routes)
    limited = RequestLimit(Handoff(app, routes.hub), settings, routes.hub)
    guarded = Guard(limited, settings.token, settings.lang, audit_key(executor.config.data_dir))
    guarded.metrics = executor.metrics  # the server adds its own gauges to them
    return guarded


def _event_bus(executor: Executor) -> EventBus:
    bus = EventBus(executor.task, clock=executor.clock)
    executor.subscribe(bus.publish, on_delete=bus.forget)
    return bus


def _count_requests(app: bottle.Bottle, executor: Executor) -> None:
    """Metrics and the audit log, after every request."""

    @app.hook("after_request")
    def count_request() -> None:
        environ = bottle.request.environ
        route = environ.get("bottle.route")
        rule = route.rule.replace(TASK, "<task_id>") if route is not None else "unmatched"  # the label as written
        status = bottle.response.status_code
        method = environ["REQUEST_METHOD"]
        executor.metrics.http_request(method if method in COUNTED_METHODS else "OTHER", rule, status)
        if method in ("POST", "PUT", "DELETE", "PATCH"):
            args = environ.get("route.url_args") or {}
            task_id, steps = environ.get("osreapi.submitted", (args.get("task_id"), None))
            audit(environ, route=rule, task_id=task_id, steps=steps, status=status)


def _add_operations(app: bottle.Bottle, routes: Routes) -> None:
    executor = routes.executor
    health = HealthCheck(executor.check_health)
    openapi_body = json.dumps(openapi.document(), ensure_ascii=False)

    @app.get("/healthz")
    @routes.api
    def healthz() -> Answer:
        return routes.success({"status": health()})  # alive either way; "disk full" while writes are refused

    @app.get("/version")
    @routes.api
    def version() -> Answer:
        return routes.success({"version": __version__})

    @app.get("/metrics")
    @routes.api
    def metrics() -> Answer:
        body, content_type = executor.metrics.render()
        return bottle.HTTPResponse(body=body, headers={"Content-Type": content_type})

    @app.get("/openapi.json")
    def openapi_json() -> Answer:
        return bottle.HTTPResponse(body=openapi_body, headers={"Content-Type": JSON_TYPE})


def _add_task_routes(app: bottle.Bottle, routes: Routes) -> None:
    executor, settings, now = routes.executor, routes.settings, routes.now

    @app.post("/")
    @routes.api
    def submit() -> Answer:
        query = bottle.request.query
        parallel = _flag(query, "async") or _flag(query, "ansync")
        body = _read_body(settings.max_body)
        if body is None:
            return json_response(CODE_TOO_LARGE, message("too_large", routes.lang(), limit=settings.max_body))
        submitted = executor.submit_task(body, parallel=parallel, task_id=query.get("id"))
        bottle.request.environ["osreapi.submitted"] = (submitted.id, submitted.count)
        return routes.success({"id": submitted.id, "count": submitted.count}, {"X-Task-ID": submitted.id})

    @app.get("/")
    @routes.api
    def list_tasks() -> Answer:
        sort = check_sort(bottle.request.query.get("sort") or "start")
        body = render.list_body(executor.list(), sort, routes.lang(), now())
        return bottle.HTTPResponse(body=body, headers={"Content-Type": JSON_TYPE})

    app.get(f"/{TASK}")(routes.api(TaskRoute(routes)))

    @app.delete(f"/{TASK}")
    @routes.api
    def delete_task(task_id: str) -> Answer:
        executor.delete(task_id)
        return routes.success()

    @app.put(f"/{TASK}")
    @routes.api
    def control_task(task_id: str) -> Answer:
        executor.control(task_id, bottle.request.query.get("action") or "", None)
        return routes.success()


def _add_step_routes(app: bottle.Bottle, routes: Routes) -> None:
    executor, now = routes.executor, routes.now

    @app.put(f"/{TASK}/<step>")
    @routes.api
    def control_step(task_id: str, step: str) -> Answer:
        executor.control(task_id, bottle.request.query.get("action") or "", step)
        return routes.success()

    @app.get(f"/{TASK}/<step>")
    @routes.api
    def get_step(task_id: str, step: str) -> Answer:
        task, record = executor.step(task_id, step)
        return json_response(*render.step_result_json(record, task, routes.lang(), now()))

    step_log = LogRoute(routes)
    app.get(f"/{TASK}/<step>/log")(routes.api(step_log))


class TaskRoute:
    """GET /<id>: a finished task's plain answer from the cache, `?detail=true` with every step,
    `?wait=` answered when the task ends."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes
        self._finished = FinishedResults()

    def __call__(self, task_id: str) -> Answer:
        routes, language = self._routes, self._routes.lang()
        deletions = routes.executor.deletions  # noted before the read (see FinishedResults)
        query = bottle.request.query if bottle.request.environ.get("QUERY_STRING") else {}  # none: no parsing
        detail = _flag(query, "detail")  # ours: every step, with its dependencies
        wait = query.get("wait")
        if wait is not None:
            seconds = wait_time(wait)  # checked even when the task has ended
        plain = set(query) <= {"lang", "wait"}  # the cache holds the plain answer only
        cached = self._finished.get(task_id, language, deletions, routes.now()) if plain else None
        if cached is not None:  # a finished task: nothing to wait for
            return json_body(cached)
        if wait is not None and bottle.request.method == "GET":  # HEAD: no stream, no wait
            waiting = wait_for_task(routes, task_id, seconds, lambda: self._answer(task_id, language, detail)[0])
            if waiting is not None:
                return waiting
        return json_body(*self._answer(task_id, language, detail, deletions if plain else None))

    def _answer(self, task_id: str, language: str, detail: bool, deletions: int | None = None) -> tuple[bytes, int]:
        """(body, HTTP status) of the task as it stands. Given `deletions` (noted before the read),
        a finished task's plain answer is also kept for the next ones."""
        executor, now = self._routes.executor, self._routes.now()
        result = executor.get(task_id)
        if result is None:
            return render.envelope(CODE_NOT_FOUND, message("not_found", language)).encode("utf-8"), 404
        kept = self._finished.put(result.task, result.steps, language, deletions, now) if deletions is not None else None
        if kept is not None:
            return kept, 200
        code, msg, data = render.result_json(result.task, result.steps, language, now)
        if detail:
            data = render.detail_json(result.task, result.steps, executor.specs(task_id), language, now)
        return render.envelope(code, msg, data).encode("utf-8"), _STATUS_OF_CODE.get(code, 200)


class LogRoute:
    """GET /<id>/<step>/log: the output so far, or followed (plain or SSE) on the stream hub."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes
        self._step_states = SharedPoll(self._step_state)  # followers of one step share each poll

    def _step_state(self, task_id: str, index: int) -> StepRecord | None:
        try:
            return self._routes.executor.step(task_id, index, output=False)[1]
        except NotFound:
            return None

    def __call__(self, task_id: str, step: str) -> Answer:
        executor, language = self._routes.executor, self._routes.lang()
        index = executor.step(task_id, step, output=False)[1].index
        environ = bottle.request.environ  # raw header text: bottle's headers raise on bytes that are not UTF-8
        sse = _accepts(environ.get("HTTP_ACCEPT", ""), "text/event-stream")
        follow = _flag(bottle.request.query, "follow")
        offset = _offset(bottle.request.query.get("offset"), urltext.header(environ, "HTTP_LAST_EVENT_ID") if sse else None)
        source = LogSource(executor.log_path(task_id, index), offset, sse=sse, follow=follow,
                           step=lambda read_since: self._step_states(task_id, index, read_since),
                           end_record=lambda: self._end_record(task_id, index, language),
                           max_output=executor.config.max_output, watches=task_id)
        size = source.size()
        if offset > size:
            return json_response(CODE_RANGE, message("offset_past_end", language, offset=offset, size=size))
        kind = "text/event-stream" if sse else "text/plain"
        headers = [("Content-Type", f"{kind}; charset=utf-8"), ("Cache-Control", "no-cache")]
        if not follow and size - offset <= WHOLE_LOG_ANSWER:  # built here: the connection stays alive
            return bottle.HTTPResponse(body=source.whole(), headers=dict(headers))
        # A long log is sent by the hub, read as the client takes it (a client that does not read
        # it holds no worker and no memory); a followed one too.
        return self._routes.hub.serve(environ, "200 OK", headers, source, answer=not follow)

    def _end_record(self, task_id: str, index: int, language: str) -> dict | None:
        """The step's record for the stream's last event, once it has ended."""
        try:
            task, step = self._routes.executor.step(task_id, index)
        except NotFound:
            return None
        if not step.state.finished:
            return None
        return render.step_json(step, task, language, self._routes.now())


def _add_error_pages(app: bottle.Bottle, routes: Routes) -> None:
    def page(code: int, key: str) -> str:
        bottle.response.content_type = JSON_TYPE
        return render.envelope(code, message(key, routes.lang()))

    app.error(404)(lambda _: page(CODE_NOT_FOUND, "no_route"))
    app.error(405)(lambda _: page(405, "method"))

    @app.error(500)
    def internal(err: bottle.HTTPError) -> str:
        log.error("unhandled error: %s", err.exception)
        return page(CODE_INTERNAL, "internal")


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
    if not ASCII_DIGITS.fullmatch(text) or len(text) > len(str(limit)) or int(text) > limit:
        raise InvalidRequest("bad_offset", name=name, value=text, limit=limit)
    return int(text)


def _read_body(limit: int) -> bytes | None:
    """The raw body whatever its Content-Type (curl -d sends form encoding); None if over limit."""
    environ = bottle.request.environ
    length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length.strip():
        if not ASCII_DIGITS.fullmatch(length.strip()):  # '-1' would read to EOF, past --max_body
            raise InvalidRequest("content_length", value=length)
        size = int(length) if len(length.strip()) <= 18 else limit + 1
        if size > limit:
            return None
        body = _read(stream, size) if size else b""
        if body is None:
            return None
        if len(body) < size:
            raise InvalidRequest("body_truncated", got=len(body), size=size)
        return body
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        body = _read(stream, limit + 1)
        return None if body is None or len(body) > limit else body
    return b""


def _read(stream, size: int) -> bytes | None:
    """`size` bytes of the body (fewer at its end); None when its chunks announce more than the
    server reads of a chunked body (cheroot's bound, set by the server's gateway)."""
    try:
        return stream.read(size)
    except MaxSizeExceeded:  # cheroot's words for size lines past its bound
        return None
    except OSError as exc:
        if exc.args == ("Request Entity Too Large",):  # and for a chunk past it
            return None
        raise InvalidRequest("body_unreadable", reason=exc.__class__.__name__) from None
    except ValueError as exc:  # a broken chunk
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
        slot = environ[ENVIRON_SLOT] = RequestSlot(self._slots.release)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            slot.release()
            raise
        if slot.kept_by_hub:  # an answer the hub sends: released once sent
            return result
        if isinstance(result, (list, tuple)):
            # Whole body already built: the request is no longer in flight.
            slot.release()
            return result
        return _ReleaseOnClose(result, slot)


class _ReleaseOnClose:
    """A streamed body holds its slot until it is exhausted (before the server writes the last
    chunk, so a client that then sends its next request never races the release) or closed
    (a client that went away); the slot is released once, however often it is asked."""

    def __init__(self, body: Iterable[bytes], slot: RequestSlot) -> None:
        self._body = body
        self._slot = slot

    def __iter__(self):
        try:
            yield from self._body
        finally:
            self._slot.release()

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close:
                close()
        finally:
            self._slot.release()


def _accepts(accept: str, media: str) -> bool:
    """Whether an Accept header asks for `media` by name with a q above 0 (`;q=0` refuses it)."""
    for item in accept.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() == media:
            return header_quality(params) > 0
    return False
