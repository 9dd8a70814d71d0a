"""Client: the HTTP API of one osreapi server as the same calls `osreapi.Executor` offers."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ..controls import ControlCalls
from ..embed import TaskResult, check_offset
from ..errors import EngineClosed, InvalidRequest, InvalidValue, NotFound
from ..executor.durations import format_duration
from ..plaintext import ASCII_DIGITS, header_safe
from ..records import TaskRecord
from ..vocabulary import CODE_FAILED, CODE_OK, CODE_RUNNING, message
from . import sse, wire
from .deadline import AnswerTooSlow, DeadlineTransport, until
from .errors import (
    ON_CONTROL,
    ON_DELETE,
    ON_SUBMIT,
    ConnectionFailed,
    RemoteBusy,
    ServerError,
    error_for,
)

DEFAULT_URL = "http://127.0.0.1:2376"
DEFAULT_TIMEOUT = 10.0
STREAM_READ_TIMEOUT = 60.0  # over the server's 15 s heartbeat on a quiet log stream
MAX_REQUEST_TIMEOUT = 24 * 3600.0  # seconds; a socket's timeout must fit in a time_t
MAX_SUBMISSION = 64 << 20  # characters of a submission as JSON (a server takes 1 MiB by default)
MAX_ANSWER = 1 << 30  # bytes of one envelope: a task of 1,000 steps at the server's default --max_output fits
MODES = (None, "sequential", "parallel", "dag")
_ANSWERED = (CODE_OK, CODE_RUNNING, CODE_FAILED)

Envelope = dict[str, Any]
T = TypeVar("T")
_EVENT_HEADERS = {"Accept": "text/event-stream", "Cache-Control": "no-store"}


class Client(ControlCalls):
    """One server. `timeout` bounds each request in seconds, its whole answer included (a log
    stream: its head; then each read within STREAM_READ_TIMEOUT); `verify` is
    True, False or a CA bundle path; `cert` a client certificate path or (cert, key) for mTLS;
    `lang` the language of the server's messages in the errors raised ("en" or "zh"); an answer
    over `max_answer` bytes is refused (ConnectionFailed), as is a log stream's line or event over it."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        poll_interval: float = 0.05,
        reconnects: int = 5,
        lang: str = "en",
        max_answer: int = MAX_ANSWER,
    ) -> None:
        self.url = _checked_url(url.rstrip("/"))
        self.max_answer = max_answer
        self.lang = lang
        self.timeout = request_timeout(timeout)
        self.poll_interval = poll_interval
        self.reconnects = reconnects
        headers = {"Authorization": f"Bearer {header_safe(token, 'token')}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, trust_env=False,
            transport=DeadlineTransport(tls_context(verify, cert)),
        )

    # -- the envelope ---------------------------------------------------------------------

    def envelope(
        self, method: str, path: str, params: dict[str, str] | None = None, content: bytes | None = None,
        lang: str | None = None,
    ) -> tuple[int, Envelope]:
        """(HTTP status, the envelope as sent). Raises ConnectionFailed when there is no envelope."""
        status, data = self._fetch(method, path, {**(params or {}), "lang": lang or self.lang}, content)
        return status, self._envelope_of(status, data)

    def _fetch(self, method: str, path: str, params: dict[str, str], content: bytes | None) -> tuple[int, bytes]:
        """(HTTP status, body) of one request that ends within `timeout` in all."""
        try:
            with self._answer(method, path, params, content) as response:
                return response.status_code, self._body(response)
        except httpx.HTTPError as exc:
            raise self._failure("client_no_answer", retry=_dropped(exc), reason=_reason(exc)) from None

    @contextmanager
    def _answer(
        self, method: str, path: str, params: dict[str, str], content: bytes | None = None, events: bool = False
    ) -> Iterator[httpx.Response]:
        """The response to one request: its head, and its body as read inside, by one deadline
        `timeout` away (httpx bounds each read only: a server dripping its answer held the caller
        for ever). `events`: a 200 answer's body is an event stream, as long as it lasts, each read
        within STREAM_READ_TIMEOUT (over the server's heartbeat)."""
        at = time.monotonic() + self.timeout
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, STREAM_READ_TIMEOUT)) if events else self.timeout
        headers = _EVENT_HEADERS if events else None
        status = None
        try:
            with ExitStack() as stack:
                with until(at):
                    response = stack.enter_context(
                        self._open().stream(method, path, params=params, content=content, headers=headers, timeout=timeout)
                    )
                status = response.status_code
                if events and status == 200:
                    yield response
                else:
                    with until(at):
                        yield response
        except AnswerTooSlow:
            key = "client_too_slow_head" if status is None else "client_too_slow"
            raise self._failure(key, status=status, seconds=f"{self.timeout:g}") from None

    def _body(self, response: httpx.Response) -> bytes:
        """The whole body, at most `max_answer` bytes: a server streaming without end would fill the
        caller's memory. A redirect (a proxy sending http:// to https://) is not followed: the
        caller is told where."""
        if response.is_redirect:
            location = response.headers.get("location", "")[:200]
            raise self._failure("client_redirect", status=response.status_code, location=location)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self.max_answer:
                raise self._failure("client_too_big", status=response.status_code, limit=self.max_answer)
        return bytes(body)

    def _envelope_of(self, status: int, data: bytes) -> Envelope:
        try:
            body = json.loads(data)
        except ValueError:
            raise self._failure("client_no_envelope", status=status) from None
        if not isinstance(body, dict) or not isinstance(body.get("code"), int) or not isinstance(body.get("message"), str):
            raise self._failure("client_not_envelope", status=status)
        return body

    def _open(self) -> httpx.Client:
        """The connection pool, or EngineClosed after close(), as `Executor` raises (httpx: RuntimeError)."""
        if self._http.is_closed:
            raise EngineClosed(f"{self.url}: the client is closed")
        return self._http

    def _failure(self, key: str, retry: bool = False, **values: object) -> ConnectionFailed:
        """ConnectionFailed naming this server, in the client's language."""
        return ConnectionFailed(f"{self.url}: {message(key, self.lang, **values)}", retry=retry)

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        overrides: dict[int, type[ServerError]] | None = None,
        lang: str | None = None,
    ) -> Envelope:
        """The envelope of an answered request (codes 0, 1001, 1002); raises the typed error otherwise."""
        status, body = self.envelope(method, path, params, content, lang)
        if body["code"] not in _ANSWERED:
            raise error_for(status, body["code"], str(body.get("message", "")), overrides)
        return body

    # -- TaskRunner -----------------------------------------------------------------------

    def submit(
        self, steps: list[dict[str, Any]] | str | bytes, mode: str | None = None, task_id: str | None = None
    ) -> str:
        return self.submit_envelope(steps, mode, task_id)["data"]["id"]

    def submit_envelope(
        self, steps: list[dict[str, Any]] | str | bytes, mode: str | None = None, task_id: str | None = None,
        lang: str | None = None,
    ) -> Envelope:
        """POST / as the server answered it: {"code": 0, "message": ..., "data": {"id", "count"}}."""
        body = self.call("POST", "/", submit_params(mode, task_id), submit_body(steps), ON_SUBMIT, lang)
        self._data(body, _check_submitted)
        return body

    def get(self, task_id: str) -> TaskResult | None:
        try:
            body = self.call("GET", task_path(task_id), {"detail": "true"})
        except NotFound:
            return None
        return self._data(body, lambda data: wire.task_result(data, time.time()))

    def list(self, sort: str | None = None) -> list[TaskRecord]:
        """Tasks as GET / lists them (their `mode` is not on that list: it is "")."""
        body = self.call("GET", "/", {"sort": sort} if sort else None)
        now = time.time()
        return self._data(body, lambda data: [wire.task_record(entry, now) for entry in data["tasks"]])

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        """Until the task has ended or timeout passed. The server answers when the task ends
        (GET /<id>?wait=, a few seconds per request); one that answers at once (an older server)
        is polled, backing off to 1 s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self.poll_interval
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            wait = self.timeout * 0.8 if left is None else min(self.timeout * 0.8, left)
            asked = time.monotonic()
            try:
                answer = self.resumed(lambda: self.call("GET", task_path(task_id), {"wait": f"{wait:.3f}s"}), deadline)
            except NotFound:
                return None
            if answer["code"] != CODE_RUNNING or left == 0:
                return self.resumed(lambda: self.get(task_id), deadline)
            if time.monotonic() - asked < wait / 2:  # answered at once: this server does not wait
                time.sleep(interval if left is None else min(interval, left))
                interval = min(interval * 1.5, 1.0)

    def resumed(self, call: Callable[[], T], deadline: float | None = None) -> T:
        """call(), asked again after a dropped or refused connection (a server restarting) or a busy
        answer (429 at --max-requests, 503), as a log stream is resumed: up to `reconnects` times in
        a row, never past `deadline` (monotonic). A request that timed out is not asked again: a
        hung server costs one `timeout`."""
        failures = 0
        while True:
            try:
                return call()
            except (ConnectionFailed, RemoteBusy) as exc:
                failures += 1
                left = None if deadline is None else deadline - time.monotonic()
                again = isinstance(exc, RemoteBusy) or exc.retry
                if not again or failures > self.reconnects or (left is not None and left <= 0):
                    raise
                time.sleep(_backoff(failures) if left is None else min(_backoff(failures), left))

    def logs(self, task_id: str, step: str | int, follow: bool = False, offset: int = 0) -> Iterator[str]:
        """Output chunks from byte `offset` (SSE). A dropped connection is resumed from the last byte
        received, up to `reconnects` times in a row. Raises NotFound (unknown step) or
        InvalidRequest (offset past the end) at once: the stream's request is made here, and its
        answer read on iterating (one request, where a plain one asked first for the errors)."""
        check_offset(offset)
        try:
            stream = self._open_log(step_path(task_id, step) + "/log", follow, offset)
        except httpx.HTTPError as exc:
            raise self._failure("client_no_answer", reason=_reason(exc)) from None
        return self._log_chunks(task_id, step, follow, offset, stream)

    def control(self, task_id: str, action: str, step: str | int | None = None, lang: str | None = None) -> Envelope:
        path = task_path(task_id) if step is None else step_path(task_id, step)
        return self.call("PUT", path, {"action": action}, overrides=ON_CONTROL, lang=lang)

    def delete(self, task_id: str) -> None:
        self.delete_envelope(task_id)

    def delete_envelope(self, task_id: str, lang: str | None = None) -> Envelope:
        return self.call("DELETE", task_path(task_id), overrides=ON_DELETE, lang=lang)

    @property
    def server(self) -> tuple[str, str, int | None, str]:
        """(scheme, host, port, path) of the server, whatever the spelling of its URL (two servers
        behind one proxy differ by their path)."""
        url = self._http.base_url
        return url.scheme, url.host, url.port, url.path.rstrip("/")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _data(self, body: Envelope, read: Callable[[Any], T]) -> T:
        """read(the envelope's data); data osreapi never sends (another service, a proxy's page) is
        ConnectionFailed naming the server, not a traceback."""
        try:
            return read(body.get("data"))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise self._failure("client_not_answer", error=f"{type(exc).__name__}: {exc}") from None

    def _log_chunks(
        self, task_id: str, step: str | int, follow: bool, offset: int, stream: Iterator[tuple[str, int | None]] | None
    ) -> Iterator[str]:
        """The chunks of `stream` (open), then of the streams that resume it."""
        path, failures = step_path(task_id, step) + "/log", 0
        while True:
            self._open()  # closed since: EngineClosed, as a closed Executor's logs raise, whatever was read ahead
            try:
                for text, after in stream or self._open_log(path, follow, offset):
                    if after is None:  # event: end
                        return
                    offset, failures = after, 0
                    yield text
                if not follow:
                    return
                reason = message("client_stream_ended", self.lang)
            except httpx.HTTPError as exc:
                reason = _reason(exc)
            except RemoteBusy as exc:  # a server at its --max-requests (open streams count): for a moment
                reason = exc.message
            stream = None
            failures += 1  # resume from the last byte received
            if failures > self.reconnects:
                raise self._failure("log_stream_lost", task=task_id, step=step, reason=reason)
            time.sleep(_backoff(failures))

    def _open_log(self, path: str, follow: bool, offset: int) -> Iterator[tuple[str, int | None]]:
        """A log stream whose answer has come: an error answer is raised here, its events are read
        on iterating (closed with the iterator)."""
        stream = self._log_stream(path, follow, offset)
        next(stream)
        return stream  # type: ignore[return-value]  # its first item, None, was taken

    def _log_stream(self, path: str, follow: bool, offset: int) -> Iterator[tuple[str, int | None] | None]:
        """None once the stream answered 200; then (text, byte offset after it) per output event of
        the connection; ("", None) for the end."""
        params = {"offset": str(offset), "lang": self.lang, **({"follow": "true"} if follow else {})}
        with self._answer("GET", path, params, events=True) as response:
            if response.status_code != 200:
                self._raise_answer(response)
            yield None
            for event in self._events(response, path):
                if event.event == "end":
                    yield "", None
                    return
                if event.event == "message" and event.id:
                    after = _log_offset(event.id, offset + self.max_answer)
                    if not 0 <= after - offset <= self.max_answer:
                        raise self._failure("client_not_log", id=repr(event.id[:40]), offset=offset)
                    text = event.data
                    if len(text.encode("utf-8")) != after - offset:
                        text = self._log_bytes(path, offset, after)
                    offset = after
                    yield text, after

    def _events(self, response: httpx.Response, path: str) -> Iterator[sse.Event]:
        """The stream's events; a line or an event over `max_answer` bytes ends it (ConnectionFailed):
        what osreapi sends fits in an envelope of that size."""
        try:
            yield from sse.events(response.iter_bytes(), self.max_answer)
        except sse.EventTooLong:
            raise self._failure("client_event_too_long", path=path, limit=self.max_answer) from None

    def _log_bytes(self, path: str, start: int, end: int) -> str:
        """Bytes start..end of a log as plain text: SSE framing takes a carriage return in the
        output for a line break (and bad bytes arrive replaced), so such an event is read again."""
        data = b""
        with self._answer("GET", path, {"offset": str(start)}) as response:
            if response.status_code != 200:
                self._raise_answer(response)
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) >= end - start:
                    break
        return data[: end - start].decode("utf-8", "replace")

    def _raise_answer(self, response: httpx.Response) -> None:
        """The typed error of a streamed request's error answer, its body read as any answer's."""
        body = self._envelope_of(response.status_code, self._body(response))
        raise error_for(response.status_code, body["code"], body["message"])


@lru_cache(maxsize=16)  # one context per setting, shared: loading the system's CAs is not free
def tls_context(verify: bool | str, cert: str | tuple[str, str] | None) -> ssl.SSLContext:
    """verify: True (the system's CAs), False (no check) or a CA bundle; cert: ours for mTLS.
    Raises InvalidValue naming the file that cannot be read or is not PEM."""
    try:
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    except (OSError, ssl.SSLError) as exc:  # SSLError is an OSError: both named for a reader
        raise InvalidValue(f"CA bundle {verify}: {_file_problem(exc, 'holds no PEM certificate')}") from None
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        files = (cert,) if isinstance(cert, str) else cert
        try:  # an empty password: a key that needs one is refused instead of prompted for on the terminal
            context.load_cert_chain(*files, password=b"")
        except OSError as exc:
            problem = _file_problem(exc, "not a PEM certificate and its unencrypted key")
            raise InvalidValue(f"client certificate {' and key '.join(files)}: {problem}") from None
    return context


def request_timeout(seconds: float) -> float:
    """`seconds` as the limit of one request, or InvalidValue: more than 0 (httpx would fail every
    connect at once, saying "Operation now in progress") and at most MAX_REQUEST_TIMEOUT (a socket's
    timeout must fit in a time_t: an OverflowError)."""
    if not 0 < seconds <= MAX_REQUEST_TIMEOUT:
        limit = format_duration(MAX_REQUEST_TIMEOUT)
        raise InvalidValue(f"timeout: expected more than 0 and at most {limit}, got {seconds!r} seconds")
    return seconds


def _backoff(failures: int) -> float:
    """Seconds before asking again after `failures` dropped connections in a row (a server restarting)."""
    return min(0.1 * 2**failures, 2.0)


def _file_problem(exc: OSError, not_pem: str) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{not_pem} ({exc.reason or exc})"
    return f"cannot read: {exc.strerror}"


def submit_params(mode: str | None, task_id: str | None) -> dict[str, str]:
    if mode not in MODES:
        raise InvalidRequest("bad_mode", value=mode)
    if task_id is not None and not isinstance(task_id, str):  # 5 would be sent as "5": Executor refuses it
        raise InvalidRequest("bad_id")
    params = {"async": "true"} if mode in ("parallel", "dag") else {}
    return {**params, "id": task_id} if task_id is not None else params


def submit_body(steps: list[dict[str, Any]] | str | bytes) -> bytes:
    """The POST body; InvalidRequest for steps that JSON cannot hold (a set, bytes), as `Executor`
    refuses them, or that would be over MAX_SUBMISSION characters as JSON."""
    if isinstance(steps, bytes):
        return steps
    try:
        text = steps if isinstance(steps, str) else json.dumps(_within_size(steps), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:  # a set, bytes; lists nested thousands deep
        raise InvalidRequest("steps_not_json", error=str(exc)) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: sent as a JSON escape, the server names its step and field
        return text.encode("utf-8", "surrogatepass") if isinstance(steps, str) else json.dumps(steps).encode("ascii")


def _within_size(steps: Any) -> Any:
    """The steps, unless their JSON would be over MAX_SUBMISSION characters (counted roughly, without
    writing it): YAML aliases (`*a` nine times, nested nine deep) make a small file a list of
    hundreds of millions of items, and json.dumps would run until memory ran out."""
    size, todo = 0, [steps]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            todo.extend(value.keys())
            todo.extend(value.values())
        elif isinstance(value, (list, tuple)):
            todo.extend(value)
        size += len(value) + 2 if isinstance(value, str) else 8  # quotes; a number, a separator
        if size > MAX_SUBMISSION:
            raise InvalidRequest("steps_too_large", limit=MAX_SUBMISSION)
    return steps


def task_path(task_id: str) -> str:
    if str(task_id) == "":  # "/" is the list of tasks; no task has an empty id
        raise NotFound("task '' does not exist")
    return "/" + quote(str(task_id), safe="")


def step_path(task_id: str, step: str | int) -> str:
    return task_path(task_id) + "/" + quote(str(step), safe="")


def _checked_url(url: str) -> str:
    """The URL, or InvalidValue naming it (httpx raised its own InvalidURL, a traceback in a terminal)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidValue(f"server URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidValue(f"server URL {url!r}: expected http://HOST[:PORT] or https://HOST[:PORT]")
    return url


def _log_offset(text: str, limit: int) -> int:
    """An event id read as a byte offset; -1 unless ASCII digits no longer than `limit`'s (int()
    refuses over 4,300 digits: a ValueError out of logs())."""
    return int(text) if ASCII_DIGITS.fullmatch(text) and len(text) <= len(str(limit)) else -1


def _check_submitted(data: dict[str, Any]) -> None:
    """What callers of a submit read: data.id, a string, and data.count, a number."""
    if not isinstance(data["id"], str) or not isinstance(data["count"], int):
        raise TypeError("data.id and data.count are not a string and a number")


def _dropped(exc: httpx.HTTPError) -> bool:
    """A connection refused or cut (a server restarting), not one that timed out or failed TLS
    (an untrusted certificate, a client certificate refused: asking again changes nothing)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return False
        cause = cause.__cause__ or cause.__context__
    return isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError))


def _reason(exc: httpx.HTTPError) -> str:
    kind = type(exc).__name__
    text = str(exc)
    return f"{kind}: {text}" if text else kind
