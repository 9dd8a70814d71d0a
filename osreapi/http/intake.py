"""Requests are read whole by the selector thread before a worker sees them (plain HTTP).

cheroot hands a connection to one of its worker threads as soon as its first byte arrives, and
the worker then blocks until the head and the body are in: a client that drips a byte every few
seconds holds a worker, and a few dozen of them hold the server. Here the selector thread keeps
each connection until its head (and a Content-Length or chunked body up to --max_body) is
buffered, within a total deadline: --read_timeout for the head, plus the body at a minimum rate.
A client past its deadline gets 408 and is closed; beyond `max_connections` held at once, a new
connection gets 503 with Retry-After at once. Workers only ever see whole requests.

TLS connections get the same treatment: the selector thread also drives their handshake without
blocking (cheroot shakes hands in this thread with a blocking socket, so one silent client stopped
every new connection for the socket timeout), within --read_timeout, and reads their requests
whole as above; decrypted bytes the TLS layer already holds are read at once (select cannot see
them).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cheroot.connections import ConnectionManager, prevent_socket_inheritance

from ..errors import DESCRIPTOR_TURN, out_of_descriptors
from .answers import head_language, raw_refusal
from .outbox import waiting
from .sockerrors import client_went_away, wants_write, would_block

if TYPE_CHECKING:
    import ssl  # at run time only with TLS: a plain server never loads OpenSSL (~4 MB)

log = logging.getLogger(__name__)
MIN_BODY_RATE = 32 * 1024  # bytes per second a body must at least arrive at (beyond --read_timeout)
RETRY_AFTER = 1  # seconds, in a 503 for an overloaded server
MAX_HANDSHAKES = 1024  # TLS handshakes under way at once (~45 KB each); more connections are closed
ACCEPT_PAUSE = 0.1  # seconds the listener is left alone when no descriptor can be freed to refuse with
SPELL_END = 5.0  # seconds without a refusal for want of descriptors that end a spell of them
# Requests being read are held in memory until whole: each is bounded (head, --max_body), all of them
# together too, or 300 clients sending 1 MiB bodies slowly held 300 MB (10,000 could: 10 GB). The
# first FREE_PER_REQUEST bytes of each are not counted: a control action or a read always gets in.
IN_BUDGET = 64 * 1024 * 1024
FREE_PER_REQUEST = 16 * 1024
_RECV = 64 * 1024
_CONTENT_LENGTH = re.compile(rb"^content-length:(.*?)\r?$", re.IGNORECASE | re.MULTILINE)
_CHUNKED = re.compile(rb"^transfer-encoding:.*chunked", re.IGNORECASE | re.MULTILINE)
LENGTH_DIGITS = re.compile(rb"[0-9]{1,18}")  # a Content-Length we accept: ASCII digits, bounded
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")
CHUNK_LINE = 1024  # bytes a chunk-size line (with its extensions) may take: it is short
CHUNKED_READ_FACTOR = 8  # a chunked body's bytes with its framing (1-byte chunks take 6 each), per --max_body
_EXPECT = re.compile(rb"^expect:[ \t]*100-continue", re.IGNORECASE | re.MULTILINE)
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass
class ChunkWalk:
    """How far a chunked body has been checked, so that each new read resumes there (a body of
    many tiny chunks is walked once, not once per read)."""

    pos: int = 0  # where the next chunk-size line starts (0: at the body's start)
    total: int = 0  # body bytes in the chunks checked so far


def default_in_budget(max_body: int) -> int:
    return max(IN_BUDGET, 4 * max_body)


@dataclass
class _Pending:
    """What the selector has read of a connection's next request."""

    data: bytearray = field(default_factory=bytearray)
    started: float | None = None  # when its first byte arrived
    body: int = 0  # body bytes the head announced (for the deadline)
    continued: bool = False  # "100 Continue" sent for this request
    walk: ChunkWalk = field(default_factory=ChunkWalk)


@dataclass
class _Handshake:
    """A TLS connection whose handshake the selector thread is still driving."""

    sock: ssl.SSLSocket
    addr: tuple
    started: float
    on_end: Callable[[], None]  # called once, when the handshake is over (done, failed or closed)
    events: int = selectors.EVENT_READ  # what the selector waits for on its behalf
    over: bool = False

    def end(self) -> None:
        if not self.over:
            self.over = True
            self.on_end()

    def close(self) -> None:  # also called by cheroot's clean-ups of its selector
        self.end()
        self.sock.close()


@dataclass
class _Draining:
    """A connection whose last answer the client has not taken whole yet: the selector sends the
    rest as the socket takes it, then closes it or reads its next request."""

    conn: object
    close_after: bool

    def close(self) -> None:  # also called by cheroot's clean-ups of its selector
        self.conn.wfile.discard()
        with suppress(OSError):
            self.conn.close()


def request_ready(
    data: bytes | bytearray, max_header: int, max_body: int, walk: ChunkWalk | None = None
) -> tuple[bool, int]:
    """(whether a worker can take the request now, the body size its head announces).
    Ready means: head and body are complete, or the request is too large or malformed, so that the
    worker's parser answers it at once (413/431/400) without waiting on the client."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:  # a line ended by a bare LF: a head that never ends in CRLF CRLF, refused now
        return len(data) > max_header or _BARE_LF.search(data) is not None, 0
    head = bytes(data[:head_end])
    body_start = head_end + 4
    if _CHUNKED.search(head):  # its size is unknown: it may take as long as the largest body
        # With a length too, refused unread (ambiguous): what follows the head, read here as chunks
        # until the deadline, may be the next request of a proxy's other client.
        if _CONTENT_LENGTH.search(head):
            return True, 0
        return _chunked_ready(data, body_start, max_body, walk or ChunkWalk()), max_body
    lengths = [value.strip() for value in _CONTENT_LENGTH.findall(head)]  # as cheroot's header reader strips
    if len(lengths) != 1 or not LENGTH_DIGITS.fullmatch(lengths[0]):
        return True, 0  # none, or refused by the request parser (malformed, repeated)
    length = int(lengths[0])
    if length > max_body:
        return True, 0  # refused as too large, unread
    return len(data) - body_start >= length, length


def _expects_continue(data: bytes | bytearray) -> bool:
    """An HTTP/1.1 request that waits for `100 Continue` (HTTP/1.0 has none: RFC 9110 10.1.1)."""
    head = bytes(data[: data.find(b"\r\n\r\n")])
    return head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.1") and _EXPECT.search(head) is not None


def _chunked_ready(data: bytes | bytearray, body_start: int, max_body: int, walk: ChunkWalk) -> bool:
    """Walk the chunks buffered since the last walk: ready at the last chunk's trailer end, or when
    malformed or over max_body (the worker answers those), its framing included: 1-byte chunks
    with 1 KB extensions took a thousand times max_body in memory here."""
    if len(data) - body_start > CHUNKED_READ_FACTOR * max_body:
        return True
    pos = walk.pos or body_start
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return len(data) - pos > CHUNK_LINE
        size_text = bytes(data[pos:line_end]).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            return True
        size = int(size_text, 16)
        if size == 0:
            return data.find(b"\r\n\r\n", line_end) >= 0
        if walk.total + size > max_body:
            return True
        end = line_end + 2 + size + 2
        if end > len(data):
            return False
        pos = walk.pos = end
        walk.total += size


class RequestIntake(ConnectionManager):
    """cheroot's ConnectionManager, reading each request whole before handing it to a worker."""

    def __init__(self, server, read_timeout: float, max_body: int, max_connections: int) -> None:
        super().__init__(server)
        self._read_timeout = read_timeout
        self._max_body = max_body
        self._max_connections = max_connections
        self._tls = server.ssl_adapter is not None
        self._handshakes = 0  # under way (intake thread only)
        self._whole: deque = deque()  # whole requests waiting for a worker's queue to have room
        self._whole_lock = threading.Lock()
        self._closed = False  # set by close(): a connection handed over later is closed at once
        self._closing = threading.Lock()
        self._reserve = _spare_descriptor()  # closed to refuse a connection when none is left
        self._listening_again_at = 0.0  # the listener is out of the selector until then (if > 0)
        self._shed = 0  # connections refused for want of descriptors in this spell
        self._in_budget = server.osreapi_in_budget
        self._held = 0  # bytes of requests being read past their free part: recounted, plus reads since
        self._last_shed = 0.0

    # -- connections coming back from a worker (keep-alive) -------------------------------

    def put(self, conn) -> None:
        """(A worker's thread.) A keep-alive connection back from its answer: read its next request."""
        if waiting(conn):  # its next request is read once the client has taken this answer
            self._drain_later(conn, close_after=False)
            return
        conn.last_used = time.time()
        pending = _pending(conn)
        rfile = conn.rfile
        leftover = rfile._read_buf[rfile._read_pos :]  # a pipelined next request, already read
        rfile._read_buf, rfile._read_pos = b"", 0
        if self._tls:
            try:
                conn.socket.setblocking(False)
                leftover += _decrypted(conn.socket)  # read here: no other thread has the socket yet
            except OSError:
                with suppress(OSError):
                    conn.close()
                return
        if leftover:
            pending.data += leftover
            pending.started = conn.last_used
            if self._take_if_ready(conn, pending):
                return
        if not self._registered(conn.socket.fileno(), selectors.EVENT_READ, conn):
            with suppress(OSError):
                conn.close()

    def drain_then_close(self, conn) -> None:
        self._drain_later(conn, close_after=True)

    def _drain_later(self, conn, close_after: bool) -> None:
        """(A worker's thread.)"""
        draining = _Draining(conn, close_after)
        if not self._registered(conn.socket.fileno(), selectors.EVENT_WRITE, draining):
            draining.close()

    def _registered(self, sock_fd: int, events: int, data) -> bool:
        """(A worker's thread.) Registered before close() looks at the selector, or False (the caller
        closes it): one registered after close() had looked, before the selector closed, was never
        closed, and its answer never left the budget."""
        with self._closing:
            if not self._closed:
                with suppress(OSError, ValueError, KeyError, RuntimeError):  # the selector is closed (stopping)
                    self._selector.register(sock_fd, events, data=data)
                    return True
        return False

    def _drain(self, sock_fd: int, draining: _Draining) -> None:
        try:
            done = draining.conn.wfile.drain()
        except OSError:  # the client has gone
            done = None
        if done is False:
            return
        self._selector.unregister(sock_fd)
        if done is None:
            draining.close()
        elif draining.close_after:
            with suppress(OSError):
                draining.conn.close()
        else:
            self.put(draining.conn)

    # -- the selector loop -----------------------------------------------------------------

    def _run(self, expiration_interval: float) -> None:
        try:
            self._serve_until_stopped(expiration_interval)
        finally:  # the reserve is this thread's own: closed where it is used, however the loop ends
            if self._reserve is not None:
                os.close(self._reserve)
                self._reserve = None

    def _serve_until_stopped(self, expiration_interval: float) -> None:
        last_check = time.time()
        while not self._stop_requested:
            self._dispatch_waiting()
            wait = 0.01 if self._whole else min(expiration_interval, 0.25)
            try:
                active = list(self._selector.select(timeout=wait))
            except OSError:
                self._remove_invalid_sockets()
                continue
            for sock_fd, conn in active:
                if conn is self.server:
                    self._accept()
                elif isinstance(conn, _Handshake):
                    self._shake(sock_fd, conn)
                elif isinstance(conn, _Draining):
                    self._drain(sock_fd, conn)
                else:
                    self._readable(sock_fd, conn)
            now = time.time()
            if now - last_check > 0.2:
                self._expire_overdue(now)
                last_check = now
                self._end_shedding_spell()
            self._listen_again_when_rested()

    def _accept(self) -> None:
        if self._tls:
            self._accept_tls()
            return
        try:
            conn = self._from_server_socket(self.server.socket)
        except OSError as exc:  # without a descriptor, the connection stays in the backlog and the
            if not out_of_descriptors(exc):  # listener readable: the loop spun, a traceback each turn
                raise
            self._shed_one()
            return
        if conn is None:
            return
        if self._full():
            refuse(conn, "503 Service Unavailable", "overloaded", self.server, retry_after=RETRY_AFTER)
            return
        conn.last_used = time.time()
        self._selector.register(conn.socket.fileno(), selectors.EVENT_READ, data=conn)

    def _full(self) -> bool:
        """As many connections as the server holds (being read, or whole and waiting for a worker)."""
        return self._num_connections + len(self._whole) >= self._max_connections

    def _shed_one(self) -> None:
        """No descriptor for the next connection: refuse it at once (503, Retry-After) with the one
        kept in reserve, then take that back; the rest of the backlog follows turn by turn, and
        clients are told rather than left waiting. With no reserve, the listener rests a moment."""
        if self._shed == 0:
            log.warning("out of file descriptors: new connections are refused (503) until some close")
        self._shed += 1
        self._last_shed = time.monotonic()
        if self._reserve is not None:
            raw = self._spend_reserve()
            if raw is not None:
                self._refuse_raw(raw)
                self._reserve = raw.detach()  # its descriptor is the next reserve, with no gap to fill
        if self._reserve is None:
            with suppress(KeyError, ValueError, OSError):
                self._selector.unregister(self.server.socket.fileno())
            self._listening_again_at = time.monotonic() + ACCEPT_PAUSE

    def _spend_reserve(self) -> socket.socket | None:
        """The next connection, accepted into the slot the reserve frees (None if the backlog is empty)."""
        listener = self.server.socket
        waits = listener.gettimeout()  # cheroot's 1 s: an emptied backlog would hold every log open that long
        with DESCRIPTOR_TURN:  # no log open takes the slot in between
            os.close(self._reserve)
            self._reserve = None
            listener.settimeout(0)
            try:
                return listener.accept()[0]
            except OSError:
                self._reserve = _spare_descriptor()
                return None
            finally:
                listener.settimeout(waits)

    def _refuse_raw(self, raw: socket.socket) -> None:
        with suppress(OSError):
            if not self._tls:  # no TLS session to answer in: closed
                raw.setblocking(False)
                raw.send(raw_refusal("503 Service Unavailable", "overloaded", self.server.osreapi_lang,
                                     retry_after=RETRY_AFTER))
        with suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)  # the client sees the end now, not when the reserve is next used

    def _end_shedding_spell(self) -> None:
        """One line when a spell of refusals is over (none for SPELL_END seconds), with its count."""
        if self._shed and time.monotonic() - self._last_shed > SPELL_END:
            log.warning("%d connections were refused for want of file descriptors", self._shed)
            self._shed = 0

    def _listen_again_when_rested(self) -> None:
        if self._listening_again_at and time.monotonic() >= self._listening_again_at:
            self._listening_again_at = 0.0
            if self._reserve is None:
                self._reserve = _spare_descriptor()
            with suppress(KeyError, ValueError, OSError):
                self._selector.register(self.server.socket.fileno(), selectors.EVENT_READ, data=self.server)

    # -- TLS: the handshake, driven by the selector ---------------------------------------

    def _accept_tls(self) -> None:
        try:
            raw, addr = self.server.socket.accept()
        except OSError as exc:  # nothing to accept after all, or the socket is closing, or no descriptor
            if out_of_descriptors(exc):
                self._shed_one()
            return
        if self._full() or self._handshakes >= MAX_HANDSHAKES:
            raw.close()  # no TLS session yet to answer 503 in
            return
        prevent_socket_inheritance(raw)
        try:
            sock = self.server.ssl_adapter.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            sock.setblocking(False)
        except OSError:
            raw.close()
            return
        self._handshakes += 1
        self._selector.register(sock.fileno(), selectors.EVENT_READ, data=_Handshake(sock, addr, time.time(), self._handshake_over))

    def _shake(self, sock_fd: int, shake: _Handshake) -> None:
        """One more step of a handshake; once done, the connection waits for its request."""
        try:
            shake.sock.do_handshake()
        except OSError as exc:
            if would_block(exc):
                self._wait_for(sock_fd, shake, selectors.EVENT_WRITE if wants_write(exc) else selectors.EVENT_READ)
                return
            # A failed handshake: a plain HTTP client, no client certificate, a TCP health check.
            level = logging.DEBUG if client_went_away(exc) else logging.INFO
            log.log(level, "TLS handshake with %s failed: %s", shake.addr[0], exc)
            self._selector.unregister(sock_fd)
            if getattr(exc, "reason", None) == "HTTP_REQUEST":
                self._answer_plain_http(shake)
            shake.close()
            return
        self._selector.unregister(sock_fd)
        shake.end()
        server = self.server
        conn = server.ConnectionClass(server, shake.sock, server.ssl_adapter.makefile)
        conn.remote_addr, conn.remote_port = shake.addr[:2]
        conn.ssl_env = server.ssl_adapter.get_environ(shake.sock)
        self.put(conn)

    def _handshake_over(self) -> None:
        self._handshakes -= 1

    def _wait_for(self, sock_fd: int, shake: _Handshake, events: int) -> None:
        """Wait for what the handshake needs next (still waiting for writable after a write went
        through would wake this thread at once, again and again)."""
        if shake.events != events:
            shake.events = events
            self._selector.unregister(sock_fd)
            self._selector.register(sock_fd, events, data=shake)

    def _answer_plain_http(self, shake: _Handshake) -> None:
        """A plain HTTP request on the TLS port: say so in plain text, under the TLS layer. The rest
        of the request is read first: closing on unread bytes would reset the connection and lose
        the answer. The TLS layer took the request's first 5 bytes (a record header's worth: the
        method and the target's start): a stand-in word before the rest keeps its query the second.
        """
        fd, head = shake.sock.fileno(), b""
        with suppress(OSError):
            head = os.read(fd, _RECV)
        with suppress(OSError):
            os.write(fd, raw_refusal("400 Bad Request", "tls_only", head_language(b"- " + head, self.server.osreapi_lang)))
            shake.sock.shutdown(socket.SHUT_WR)  # the answer is sent before the close

    # -- reading requests --------------------------------------------------------------------

    def _readable(self, sock_fd: int, conn) -> None:
        try:
            chunk = conn.socket.recv(_RECV)
            if self._tls:
                chunk += _decrypted(conn.socket)
        except OSError as exc:
            if would_block(exc):  # part of a TLS record: the rest is still on its way
                return
            chunk = b""  # a reset: drop it
        if not chunk:  # the client closed (or reset) the connection
            self._selector.unregister(sock_fd)
            _drop_pending(conn)
            with suppress(OSError):
                conn.close()
            return
        pending = _pending(conn)
        now = time.time()
        if pending.started is None:
            pending.started = now
        pending.data += chunk
        conn.last_used = now
        if not self._within_budget(pending, len(chunk)):
            self._selector.unregister(sock_fd)
            refuse(conn, "503 Service Unavailable", "overloaded", self.server, retry_after=RETRY_AFTER)
            return
        self._take_if_ready(conn, pending, sock_fd)

    def _within_budget(self, pending: _Pending, read: int) -> bool:
        """Count what was read past the request's free part; False (not counted) if the requests
        being read would hold more than the budget with it."""
        counted = min(read, max(0, len(pending.data) - FREE_PER_REQUEST))
        if counted and self._held + counted > self._in_budget:
            self._held -= len(pending.data) - FREE_PER_REQUEST - counted  # it goes: what it held goes too
            return False
        self._held += counted
        return True

    def _take_if_ready(self, conn, pending: _Pending, sock_fd: int | None = None) -> bool:
        ready, pending.body = request_ready(pending.data, self.server.max_request_header_size, self._max_body, pending.walk)
        if not ready:
            if pending.body and not pending.continued and _expects_continue(pending.data):
                pending.continued = True  # the client waits for this before it sends the body
                with suppress(OSError):
                    conn.socket.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return False
        if sock_fd is not None:
            self._selector.unregister(sock_fd)
        if self._tls:
            conn.socket.settimeout(self.server.timeout)  # the worker's reads and writes wait, as cheroot's do
        rfile = conn.rfile
        rfile._read_buf, rfile._read_pos = bytes(pending.data) + rfile._read_buf[rfile._read_pos :], 0
        conn.osreapi_continued = pending.continued  # the worker's parser must not invite it again
        conn.osreapi_pending = _Pending()  # the next request starts afresh
        with self._whole_lock:  # a worker's put() gets here too, while the recount walks the queue
            closed = self._closed  # close() sets it before it empties the queue under this lock
            if not closed:
                self._whole.append(conn)
        if closed:  # a pipelined request handed back while the server stops: never served, closed here
            with suppress(OSError):
                conn.close()
            return True
        self._dispatch_waiting()
        return True

    def close(self) -> None:
        with self._closing:
            self._closed = True
        with self._whole_lock:
            waiting, self._whole = list(self._whole), deque()
        for conn in waiting:
            with suppress(OSError):
                conn.close()
        super().close()

    def _dispatch_waiting(self) -> None:
        """Give whole requests to the workers' queue, oldest first, while it has room (a burst of
        requests waits here, bounded by max_connections, rather than being refused)."""
        with self._whole_lock:  # workers returning keep-alive connections dispatch too
            while self._whole:
                try:
                    self.server.requests.put(self._whole[0])
                except queue.Full:
                    return
                self._whole.popleft()

    def _expire_overdue(self, now: float) -> None:
        """408 to a request not whole within its deadline; idle keep-alive connections closed quietly.
        The bytes held by requests being read are counted again on the way (reads add to the count;
        what is handed over or closed leaves it here)."""
        idle_limit = now - self.server.timeout
        held = 0
        for sock_fd, conn in list(self._selector.connections):
            if conn is self.server:
                continue
            if isinstance(conn, _Handshake):
                if now > conn.started + self._read_timeout:
                    self._selector.unregister(sock_fd)
                    conn.close()
                continue
            if isinstance(conn, _Draining):  # a client that takes nothing of its answer (or a trickle)
                if conn.conn.wfile.overdue(self.server.timeout):
                    self._selector.unregister(sock_fd)
                    conn.close()
                continue
            pending = _pending(conn)
            if pending.started is None:
                if conn.last_used < idle_limit:
                    self._selector.unregister(sock_fd)
                    with suppress(OSError):
                        conn.close()
                continue
            deadline = pending.started + self._read_timeout + pending.body / MIN_BODY_RATE
            if now > deadline:
                self._selector.unregister(sock_fd)
                refuse(conn, "408 Request Timeout", "read_timeout", self.server, seconds=f"{self._read_timeout:g}")
            else:
                held += max(0, len(pending.data) - FREE_PER_REQUEST)
        with self._whole_lock:  # whole, waiting for a worker: still held
            held += sum(_whole_bytes(conn) for conn in self._whole)
        held += sum(_whole_bytes(conn) for conn in _queued(self.server.requests))
        self._held = held


def _whole_bytes(conn) -> int:
    """Bytes a whole request not yet served holds past its free part."""
    rfile = getattr(conn, "rfile", None)  # the queue also carries the workers' shutdown requests
    return max(0, len(rfile._read_buf) - FREE_PER_REQUEST) if rfile is not None else 0


def _queued(pool) -> list:
    """What waits in cheroot's worker queue (threads × 4 whole requests): still held, and counted,
    or those requests were outside the budget (128 bodies of --max_body)."""
    waiting = pool._queue
    with waiting.mutex:
        return list(waiting.queue)


def _decrypted(sock: ssl.SSLSocket) -> bytes:
    """Bytes the TLS layer has already decrypted (select() sees only what the kernel holds)."""
    data = b""
    while (waiting := sock.pending()) > 0:
        data += sock.recv(waiting)
    return data


def _drop_pending(conn) -> None:
    """Let what was read of a request go now: a closed connection sits in reference cycles that only
    the cyclic collector frees, which the server runs rarely (refused 1 MiB uploads stayed held)."""
    conn.osreapi_pending = None


def _pending(conn) -> _Pending:
    pending = getattr(conn, "osreapi_pending", None)
    if pending is None:
        pending = conn.osreapi_pending = _Pending()
    return pending


def refuse(conn, status: str, key: str, server, /, retry_after: int | None = None, **values: object) -> None:
    """Answer with the envelope without blocking (it fits the socket buffer, or is dropped) and close,
    in the language of what was read of the request."""
    read = getattr(conn, "osreapi_pending", None)
    lang = head_language(bytes(read.data[: server.max_request_header_size]) if read else b"", server.osreapi_lang)
    _drop_pending(conn)
    payload = raw_refusal(status, key, lang, retry_after=retry_after, **values)
    with suppress(OSError):
        conn.socket.setblocking(False)  # a socket with a timeout would wait for room to write
        conn.socket.send(payload)
    with suppress(OSError):
        conn.close()


def _spare_descriptor() -> int | None:
    """A descriptor held in reserve (of /dev/null); None when none is free."""
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
