"""A deadline per request that every socket read and write of it honours. httpx bounds each read,
not the whole answer: a server sending its head (or body) a byte at a time held a caller for ever.
The deadline is the calling thread's (a context variable), so one pool serves many threads."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

WRITE_PIECE = 64 * 1024  # bytes sent per socket timeout, so that a slow reader cannot stretch one write


class AnswerTooSlow(Exception):
    """The deadline passed after the answer had begun: it was not complete in time."""


@dataclass
class _Bound:
    at: float  # time.monotonic()
    received: int = 0  # bytes of the answer so far: none means no answer at all (a plain timeout)

    def left(self, timeout: float | None, timed_out: type[Exception]) -> tuple[float, bool]:
        """(seconds this operation may take, whether the deadline is what cut it short)."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.passed(timed_out)
        return (left, True) if timeout is None or left < timeout else (timeout, False)

    def passed(self, timed_out: type[Exception]) -> Exception:
        return AnswerTooSlow() if self.received else timed_out("timed out")


_BOUND: ContextVar[_Bound | None] = ContextVar("osreapi_client_deadline", default=None)


@contextmanager
def until(at: float) -> Iterator[None]:
    """Requests of this thread inside end by `at` (time.monotonic()), their answers included:
    AnswerTooSlow once an answer has begun, httpx's timeout before."""
    token = _BOUND.set(_Bound(at))
    try:
        yield
    finally:
        _BOUND.reset(token)


class _BoundStream(httpcore.NetworkStream):
    """A connection whose reads and writes end by the current request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        bound = _BOUND.get()
        if bound is None:
            return self._inner.read(max_bytes, timeout)
        seconds, cut = bound.left(timeout, httpcore.ReadTimeout)
        try:
            data = self._inner.read(max_bytes, seconds)
        except httpcore.ReadTimeout:
            if cut:
                raise bound.passed(httpcore.ReadTimeout) from None
            raise
        bound.received += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        bound = _BOUND.get()
        if bound is None:
            return self._inner.write(buffer, timeout)
        for start in range(0, len(buffer), WRITE_PIECE):
            self._inner.write(buffer[start : start + WRITE_PIECE], bound.left(timeout, httpcore.WriteTimeout)[0])
        return None

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _BoundStream(self._inner.start_tls(ssl_context, server_hostname, _connect_timeout(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _BoundBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, each wrapped in a _BoundStream."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, _connect_timeout(timeout), local_address, socket_options)
        return _BoundStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _BoundStream(self._inner.connect_unix_socket(path, _connect_timeout(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _connect_timeout(timeout: float | None) -> float | None:
    bound = _BOUND.get()
    return timeout if bound is None else bound.left(timeout, httpcore.ConnectTimeout)[0]


class DeadlineTransport(httpx.BaseTransport):
    """A custom httpx transport (httpx's documented transport API) over httpcore's connection pool
    with the bounded backend (httpcore's public network-backend API): httpx's own HTTPTransport
    takes no backend, and replacing its private pool was the only other way. httpx's default limits
    (100 connections, 20 kept alive for 5 s); httpcore's errors raised as httpx's, as HTTPTransport
    raises them."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0,
            network_backend=_BoundBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        asked = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions,
        )
        with _as_httpx_errors():
            answer = self._pool.handle_request(asked)
        return httpx.Response(answer.status, headers=answer.headers, stream=_Body(answer.stream),
                              extensions=answer.extensions)

    def close(self) -> None:
        self._pool.close()


class _Body(httpx.SyncByteStream):
    """An answer's body as httpx reads it, httpcore's errors raised as httpx's."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        with _as_httpx_errors():
            getattr(self._stream, "close", lambda: None)()


_HTTPCORE_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError,
                    httpcore.UnsupportedProtocol)  # the roots of httpcore's errors


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """httpcore's exception as httpx's of the same name (ReadTimeout as httpx.ReadTimeout, ...), the
    most specific first; any other (AnswerTooSlow) as it is."""
    try:
        yield
    except _HTTPCORE_ERRORS as exc:
        raise _httpx_error(exc) from exc


def _httpx_error(exc: Exception) -> httpx.HTTPError:
    for kind in type(exc).__mro__:  # httpx names its transport errors as httpcore does
        ours = getattr(httpx, kind.__name__, None)
        if isinstance(ours, type) and issubclass(ours, httpx.TransportError):
            return ours(str(exc))
    return httpx.TransportError(str(exc))
