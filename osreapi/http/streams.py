"""The stream hub: long responses (log follows, SSE feeds) served by one thread, not a worker each.

A route answers a stream with `hub.serve(environ, status, headers, source)`. Under our cheroot
server (plain HTTP or TLS) the worker writes nothing: once the application has returned, `Handoff`
gives the connection's socket to the hub and tells cheroot the response is done, so the worker is
free at once. The hub thread ticks (~50 ms, or at once on `wake()`), asks each source
for new bytes, writes them without blocking (a slow reader only grows its own buffer, up to a
bound), sends the source's heartbeat after ~15 s of silence, and notices a client that went away
by its socket turning readable at EOF. A stream that ends (a wait's answer, a long log as it
stands, a follow at its step's end) gives a plain HTTP/1.1 connection back to the server, with
any request the client pipelined meanwhile: the client's next request needs no new connection.
A HEAD request gets the head alone; under any other WSGI server the same source is driven by a
generator on the worker thread.
"""

from __future__ import annotations

import email.utils
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import bottle
from cheroot.makefile import MakeFile

from ..vocabulary import message
from .answers import JSON_TYPE, language_of
from .render import envelope
from .sockerrors import is_tls, would_block
from .uptake import Uptake, send_now

log = logging.getLogger(__name__)
TICK = 0.05
HEARTBEAT = 15.0
MAX_STREAMS = 10_000
HIGH_WATER = 128 * 1024  # bytes queued for a slow reader before its source is no longer read
STALL_LIMIT = 60.0  # a reader that takes nothing of what is queued for this long is dropped
MAX_RECEIVED = 64 * 1024  # bytes a client may send during its stream and still keep its connection
_ENVIRON_REQUEST = "osreapi.request"  # cheroot's HTTPRequest, put there by our Gateway
_ENVIRON_STREAM = "osreapi.stream"  # a stream the application asks to hand off
ENVIRON_SLOT = "osreapi.slot"  # the request's --max-requests slot (a RequestSlot), when limited


class StreamSource(Protocol):
    def read(self) -> tuple[bytes, bool]:
        """New bytes (maybe b"") and whether the stream is finished. Called often: never block."""

    def heartbeat(self) -> bytes:
        """Sent after ~15 s of silence (b": keep-alive\\n\\n" for SSE, b"" for none)."""

    def close(self) -> None:
        """Called once, when the stream ends or the client left.

        A source may also have `final() -> bytes`: its last bytes when the server stops first; and
        `cut_short() -> bool`: True when a stop now leaves its body unfinished (a followed step
        still writing), which then ends without the last chunk, so that the client can tell; and
        `watches: str | None`: the one task whose committed changes it waits for (None, or no
        such attribute: every task's), so that other tasks' changes do not wake the hub for it;
        and `news(at)`: called before a read that a committed change of that task (made by `at`,
        monotonic) brought: a source that looks at its records less often than it is read looks
        at them now."""


def watched_task(source: StreamSource) -> str | None:
    return getattr(source, "watches", None)


class RequestSlot:
    """A --max-requests slot, released once: when the request returns, or, for an answer the hub
    took over, once the hub has sent it (or the client left)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self.kept_by_hub = False
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()


class _SlotHeld:
    """A source whose close also frees the request's slot."""

    def __init__(self, source: StreamSource, slot: RequestSlot) -> None:
        self._source = source
        self._slot = slot
        self.read = source.read
        self.heartbeat = source.heartbeat
        self.watches = watched_task(source)
        if hasattr(source, "final"):
            self.final = source.final

    def close(self) -> None:
        try:
            self._source.close()
        finally:
            self._slot.release()


@dataclass
class _GiveBack:
    """How a plain keep-alive connection goes back to the server once its stream has ended: as a
    new cheroot connection on the same socket, with what the client sent meanwhile (its next
    request, pipelined) as already read."""

    server: object  # cheroot's server: its connection class and request intake
    remote: tuple  # (address, port)
    received: bytearray  # what the client sent after the streamed request's head and body

    def keep(self, data: bytes) -> bool:
        """Keep what the client sent meanwhile; False once it is more than a request's head."""
        self.received += data
        return len(self.received) <= MAX_RECEIVED

    def room(self) -> bool:
        """The server may hold one more idle connection: cheroot's rule for the connections its
        workers keep (under the keep-alive limit, the server not stopping). Past it, streams that
        end together would fill the intake, and new clients get 503 until the idle ones time out."""
        return self.server.can_add_keepalive_connection

    def give(self, sock: socket.socket) -> None:
        sock.settimeout(self.server.timeout)  # as cheroot's accepted sockets
        conn = self.server.ConnectionClass(self.server, sock, MakeFile)
        conn.remote_addr, conn.remote_port = self.remote
        conn.ssl_env = {}
        conn.rfile._read_buf, conn.rfile._read_pos = bytes(self.received), 0
        self.server.osreapi_intake.put(conn)


@dataclass
class _Stream:
    sock: object
    source: StreamSource
    chunked: bool
    out: bytearray
    last_sent: float
    stall_limit: float  # the reader may take nothing of what is queued for this long
    uptake: Uptake  # when the reader last took bytes (or had nothing waiting)
    give_back: _GiveBack | None = None  # None: the connection closes with the stream
    ending: bool = False
    more: bool = False  # the last pull stopped at the high-water mark, not at the source's end
    events: int = field(default=selectors.EVENT_READ)
    watches: str | None = None  # the source's task (None: every task's): see wake()


class StreamHub:
    def __init__(self, default_lang: str, tick: float = TICK, heartbeat: float = HEARTBEAT,
                 max_streams: int = MAX_STREAMS, stall_limit: float = STALL_LIMIT) -> None:
        self._lang = default_lang
        self._stall_limit = stall_limit
        self._tick = tick
        self._heartbeat = heartbeat
        self._max_streams = max_streams
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._incoming: list[_Stream] = []
        self._streams: dict[int, _Stream] = {}
        self._watched: Counter[str | None] = Counter()  # the streams' watched tasks (None: all)
        self._woken: set[str | None] = set()  # tasks with news since the hub thread last looked
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()  # a pipe would not select() on Windows
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Made now, with the server, not by the thread at the first stream: an epoll selector takes
        # a descriptor, and a first stream that came when none was free killed the thread at its
        # start; every stream after it waited for ever (followers, waits, the event feed).
        self._selector: selectors.BaseSelector | None = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

    # -- what routes call -----------------------------------------------------------------

    def serve(self, environ: dict, status: str, headers: list[tuple[str, str]], source: StreamSource,
              *, answer: bool = False) -> bottle.HTTPResponse:
        """Answer the request with a stream of the source's bytes. An `answer` is a finite body
        (a log as it stands) rather than a stream that follows: it is a request in flight until
        sent (it keeps its --max-requests slot), and a reader that takes nothing of it for the
        server's client timeout is dropped, as a blocked write would be."""
        if self._stopping.is_set() or self.count >= self._max_streams:
            return self._refuse(environ, source)
        if environ.get("REQUEST_METHOD") == "HEAD":  # the head only: nothing to follow, no thread held
            source.close()
            return bottle.HTTPResponse(_unmeasured(), status=status, headers=dict(headers))
        request = environ.get(_ENVIRON_REQUEST)
        if request is not None:
            slot = environ.get(ENVIRON_SLOT)
            if answer and slot is not None:
                slot.kept_by_hub = True
                source = _SlotHeld(source, slot)
            stall_limit = request.server.timeout if answer else self._stall_limit
            environ[_ENVIRON_STREAM] = (status, headers, source, stall_limit)
            return bottle.HTTPResponse(b"", status=status)  # Handoff writes the real head
        return bottle.HTTPResponse(self.drive(source), status=status, headers=dict(headers))

    def _refuse(self, environ: dict, source: StreamSource) -> bottle.HTTPResponse:
        """No room for one more stream (or the server stops): a source with a last word (a wait)
        answers with it now; any other stream gets 503 and Retry-After."""
        try:
            data = _last_word(source)
        finally:
            source.close()
        if data:
            return bottle.HTTPResponse(data, status=200, headers={"Content-Type": JSON_TYPE, "Cache-Control": "no-cache"})
        text = envelope(503, _overloaded(environ, self._lang))
        return bottle.HTTPResponse(text, status=503, headers={"Content-Type": JSON_TYPE, "Retry-After": "1"})

    def wake(self, task_id: str | None = None) -> None:
        """A source has new data (about task_id; None: any task): tick now rather than at the next
        tick. Every committed write calls this: nothing is sent unless a stream waits for news of
        that task, and the hub thread then reads only the streams that wait for it. Waking for
        every write, to read every stream, cost a thread switch per write while any stream was
        served (a client waiting for one long task made each step of every task wake the hub)."""
        with self._lock:
            if self._incoming or (self._streams and (task_id is None or self._watched[None] or self._watched[task_id])):
                if not self._woken:  # else a wake is on its way already
                    self._send_wake()
                self._woken.add(task_id)

    def _send_wake(self) -> None:
        """With the lock held."""
        with suppress(OSError):  # full (a wake is pending anyway) or closed (stopped)
            self._wake_w.send(b"\0")

    @property
    def count(self) -> int:
        """Streams served by the hub thread now."""
        with self._lock:
            return len(self._streams) + len(self._incoming)

    def stop(self) -> None:
        """End every stream (the hub thread sends what it can and closes) and stop the thread."""
        self._stopping.set()
        with self._lock:
            self._send_wake()
        if self._thread is not None:
            self._thread.join(10)
        for stream in self._take_incoming():  # handed over as the thread stopped: never served
            self._finish_on_stop(stream)
        with self._lock:
            if self._thread is None:  # never started: the selector is closed here, not by the thread
                self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    # -- hand-off (worker thread) ---------------------------------------------------------

    def adopt(self, request, status: str, headers: list[tuple[str, str]], source: StreamSource, stall_limit: float) -> None:
        """Take over the connection of a cheroot request whose application returned a stream."""
        chunked = request.response_protocol == "HTTP/1.1"
        give_back = _give_back(request) if chunked else None  # HTTP/1.0: the close ends the body
        lines = [f"{request.server.protocol} {status}", *(f"{k}: {v}" for k, v in headers),
                 f"Date: {email.utils.formatdate(usegmt=True)}"]
        if give_back is None:
            lines.append("Connection: close")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # The socket changes owner, and cheroot is told the response is done, with nothing more to
        # write and nothing to shut down or close (linger).
        sock = _take_socket(request.conn)
        request.sent_headers = True
        request.chunked_write = False
        request.close_connection = True
        request.conn.linger = True
        now = time.monotonic()
        stream = _Stream(sock, source, chunked, bytearray(head), now, stall_limit, Uptake(now), give_back,
                         watches=watched_task(source))
        with self._lock:
            stopping = self._stopping.is_set()
            if not stopping:
                self._incoming.append(stream)
                self._watched[stream.watches] += 1
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="osreapi-streams", daemon=True)
                    self._thread.start()
        if stopping:  # the server stops: the stream ends before it starts, with its last word
            self._finish_on_stop(stream)
            return
        self.wake(None)

    # -- the hub thread -------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = 0.0
        try:
            while not self._stopping.is_set():
                woken: set[str | None] = set()
                # No stream, no tick: an idle server's hub sleeps until a stream (or stop) wakes it.
                for key, mask in self._selector.select(timeout=self._tick if self._streams else None):
                    if key.data is None:
                        with suppress(OSError):
                            self._wake_r.recv(4096)
                        with self._lock:
                            woken, self._woken = self._woken, set()
                    else:
                        self._guarded(key.data, self._on_event, key.data, mask)
                for stream in self._take_incoming():
                    self._guarded(stream, self._take, stream)
                now = time.monotonic()
                ticking = now >= next_tick or None in woken  # else only the streams with news are read
                if ticking:
                    next_tick = now + self._tick
                for stream in list(self._streams.values()):
                    news = self._has_news(stream, woken)
                    if ticking or news:
                        self._guarded(stream, self._pull, stream, now, news=news)
        finally:
            for stream in list(self._streams.values()):
                self._finish_on_stop(stream)
            self._selector.close()

    def _guarded(self, stream: _Stream, work: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """One stream's work; a fault in it (a bug) ends that stream, never this thread, which
        serves every other stream."""
        try:
            work(*args, **kwargs)
        except Exception:
            log.exception("stream hub: serving a stream failed; ending it")
            with suppress(Exception):
                self._end(stream)

    def _take(self, stream: _Stream) -> None:
        self._streams[id(stream)] = stream
        self._selector.register(stream.sock, stream.events, stream)
        self._flush(stream)

    def _take_incoming(self) -> list[_Stream]:
        with self._lock:
            taken, self._incoming = self._incoming, []
        return taken

    def _on_event(self, stream: _Stream, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = stream.sock.recv(4096)
            except OSError as exc:
                data = None if would_block(exc) else b""
            if data == b"":  # EOF or reset: the client has gone
                self._end(stream)
                return
            if data and stream.give_back is not None and not stream.give_back.keep(data):  # its next request
                stream.give_back = None  # more than a request's head: the connection closes at the end
        if mask & selectors.EVENT_WRITE:
            self._flush(stream)
            if id(stream) in self._streams and len(stream.out) < HIGH_WATER // 2:
                self._pull(stream, time.monotonic())  # the reader keeps up: do not wait for the tick

    @staticmethod
    def _has_news(stream: _Stream, woken: set[str | None]) -> bool:
        """Whether the wake just taken says that the task the stream waits for has changed."""
        return bool(woken) and (None in woken or stream.watches is None or stream.watches in woken)

    def _pull(self, stream: _Stream, now: float, news: bool = False) -> None:
        """Take what the source has, up to the high-water mark, and send it. `news`: its task
        has changed since the last read (see StreamSource)."""
        if stream.out and stream.uptake.stalled(stream.sock, now, stream.stall_limit):
            self._end(stream)  # its buffer is all it may cost, and not for ever
            return
        if news and hasattr(stream.source, "news"):
            stream.source.news(now)
        pulled = False
        stream.more = False
        while not stream.ending:
            if len(stream.out) >= HIGH_WATER:
                stream.more = True  # the source may hold more: pull again as soon as the socket drains
                break
            data, done = self._read(stream, now, idle=not pulled)
            if data:
                stream.out += _frame(data) if stream.chunked else data
                stream.last_sent = now
                pulled = True
            if done:
                stream.ending = True
                if stream.chunked:
                    stream.out += b"0\r\n\r\n"
            if not data:
                break
        if pulled or stream.ending:
            self._flush(stream)

    def _read(self, stream: _Stream, now: float, idle: bool) -> tuple[bytes, bool]:
        try:
            data, done = stream.source.read()
            if not data and idle and now - stream.last_sent >= self._heartbeat:
                data = stream.source.heartbeat()
        except Exception:
            log.exception("stream source failed; ending the stream")
            data, done = b"", True
        return data, done

    def _flush(self, stream: _Stream) -> None:
        if id(stream) not in self._streams:
            return
        with memoryview(stream.out) as view:
            try:
                sent = send_now(stream.sock.send, view, stream.uptake, stream.sock)
            except OSError:
                sent = None
        if sent is None:
            self._end(stream)
            return
        del stream.out[:sent]
        if not stream.out and stream.ending:
            self._finish(stream)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if stream.out or stream.more else 0)
        if wanted != stream.events:
            stream.events = wanted
            self._selector.modify(stream.sock, wanted, stream)

    def _finish_on_stop(self, stream: _Stream) -> None:
        """On shutdown: the source's last word if it has one (a wait's answer as it stands), the end
        of the body if it fits the socket buffer now, then close."""
        if not stream.ending:
            data = _last_word(stream.source)
            stream.out += _frame(data) if stream.chunked and data else data
        if stream.chunked and (stream.ending or not _cut_short(stream.source)):
            stream.out += b"0\r\n\r\n"
        with suppress(OSError):
            stream.sock.send(stream.out)
        self._end(stream)

    def _finish(self, stream: _Stream) -> None:
        """The stream has said everything: its connection serves the client's next request (plain
        HTTP/1.1 keep-alive) if the server has room for it, else it closes."""
        give_back = stream.give_back
        if give_back is None or not give_back.room():
            self._end(stream)
            return
        self._forget(stream)
        self._close_source(stream)
        try:
            give_back.give(stream.sock)
        except Exception:  # the server is stopping, say: the connection just closes
            log.debug("a stream's connection could not be kept alive", exc_info=True)
            with suppress(OSError):
                stream.sock.close()

    def _end(self, stream: _Stream) -> None:
        self._forget(stream)
        with suppress(OSError):
            stream.sock.close()
        self._close_source(stream)

    def _forget(self, stream: _Stream) -> None:
        if self._streams.pop(id(stream), None) is None:
            return
        with self._lock:
            self._watched[stream.watches] -= 1
            if not self._watched[stream.watches]:
                del self._watched[stream.watches]
        if self._selector is not None:
            with suppress(KeyError, ValueError, OSError):
                self._selector.unregister(stream.sock)

    @staticmethod
    def _close_source(stream: _Stream) -> None:
        try:
            stream.source.close()
        except Exception:
            log.exception("stream source failed to close")

    # -- the worker-thread fallback -------------------------------------------------------

    def drive(self, source: StreamSource) -> Iterator[bytes]:
        """The same stream on the worker thread (other WSGI servers)."""
        try:
            last_sent = time.monotonic()
            while True:
                data, done = source.read()
                now = time.monotonic()
                if not data and now - last_sent >= self._heartbeat:
                    data = source.heartbeat()
                if data:
                    last_sent = now
                    yield data
                if done:
                    return
                if self._stopping.is_set():
                    data = _last_word(source)
                    if data:
                        yield data
                    return
                if not data:
                    self._stopping.wait(self._tick)
        finally:
            source.close()


class Handoff:
    """WSGI middleware around the Bottle app: after the app has answered with `hub.serve`, hand the
    connection to the hub and answer cheroot with an empty body (the worker is free at once)."""

    def __init__(self, app: Callable, hub: StreamHub) -> None:
        self.app = app
        self.hub = hub

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        result = self.app(environ, start_response)
        stream = environ.pop(_ENVIRON_STREAM, None)
        if stream is None:
            return result
        close = getattr(result, "close", None)
        if close is not None:
            close()
        self.hub.adopt(environ[_ENVIRON_REQUEST], *stream)
        return []


def _give_back(request) -> _GiveBack | None:
    """How the connection goes back to the server after the stream, if it may: plain sockets whose
    client did not ask to close (a TLS session stays with its socket object: those close). What the
    intake read past this request (its unread body skipped) is the client's next request, pipelined
    in the same packets: it goes back too, or it would be lost with the connection's old reader."""
    conn = request.conn
    if request.close_connection or is_tls(conn.socket) or not hasattr(request.server, "osreapi_intake"):
        return None
    give_back = _GiveBack(request.server, (getattr(conn, "remote_addr", None), getattr(conn, "remote_port", None)), bytearray())
    rfile, body_left = conn.rfile, getattr(request.rfile, "remaining", 0)
    buffered = rfile._read_buf[rfile._read_pos :]
    if len(buffered) < body_left or not give_back.keep(buffered[body_left:]):
        return None  # a body not all read (never, from the intake), or more than a request's head
    return give_back


def _take_socket(conn) -> socket.socket:
    """The connection's socket, non-blocking, for the hub. A plain one is detached (cheroot's object
    is left closed); a TLS one is taken whole (its session lives in the object: cheroot lingers and
    never closes it)."""
    raw = conn.socket
    sock = raw if is_tls(raw) else socket.socket(fileno=raw.detach())
    sock.setblocking(False)
    return sock


def _last_word(source: StreamSource) -> bytes:
    """What a source says when the server stops before it has finished: its optional `final()`
    (a wait's answer as it stands), else nothing."""
    final = getattr(source, "final", None)
    return final() if final is not None else b""


def _cut_short(source: StreamSource) -> bool:
    """Whether a stop now leaves the source's body unfinished (see StreamSource.close)."""
    cut_short = getattr(source, "cut_short", None)
    return cut_short() if cut_short is not None else False


def _unmeasured() -> Iterator[bytes]:
    """The body of a HEAD answer, never sent. An empty body would get `Content-Length: 0` from
    Bottle, saying the GET's body is empty (RFC 9110 8.6: a HEAD's length must be the GET's or
    absent); of a body that is not a string Bottle states no length."""
    yield b" "


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _overloaded(environ: dict, default_lang: str) -> str:
    return message("overloaded", language_of(environ, default_lang))
