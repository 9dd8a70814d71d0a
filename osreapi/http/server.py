"""The cheroot WSGI server, created directly so it can be stopped and its port read."""

from __future__ import annotations

import email.utils
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cheroot import wsgi
from cheroot.makefile import MakeFile, StreamReader
from cheroot.server import HeaderReader, HTTPConnection, HTTPRequest

from ..errors import InvalidValue
from ..vocabulary import DEFAULT_LANGUAGE, Phrase
from .answers import head_language, raw_refusal
from .intake import (
    CHUNK_LINE,
    CHUNKED_READ_FACTOR,
    LENGTH_DIGITS,
    RETRY_AFTER,
    RequestIntake,
    default_in_budget,
    refuse,
)
from .outbox import BUDGET, Outbox, OutBudget, waiting
from .sockerrors import client_went_away

log = logging.getLogger(__name__)
DEFAULT_THREADS = 32
SHOWN_TARGET = 200  # characters of a refused request target shown in its answer


def parse_addr(addr: str) -> tuple[str, int]:
    """':2376' -> ('0.0.0.0', 2376); '127.0.0.1:0'; '[::1]:8080' -> ('::1', 8080)."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise InvalidValue(f"invalid address {addr!r} (expected host:port, e.g. ':2376' or '127.0.0.1:0')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise InvalidValue(f"invalid port {port!r} in address {addr!r}") from None
    if not 0 <= number <= 65535:
        raise InvalidValue(f"port {number} out of range in address {addr!r}")
    return host or "0.0.0.0", number


@dataclass(frozen=True)
class TlsSettings:
    cert: str
    key: str
    client_ca: str | None = None  # require client certificates signed by this CA (mTLS)


def tls_adapter(tls: TlsSettings):
    """cheroot's TLS adapter, imported only when TLS is on (OpenSSL costs ~4 MB of memory)."""
    import ssl

    from cheroot.ssl.builtin import BuiltinSSLAdapter

    adapter = BuiltinSSLAdapter(tls.cert, tls.key)
    # cheroot's SNI callback only copies the name into the environ (unused here); with a callback
    # set, Python prints a traceback for every hello whose server name is not valid text.
    adapter.context.sni_callback = None
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.client_ca:
        adapter.context.load_verify_locations(cafile=tls.client_ca)
        adapter.context.verify_mode = ssl.CERT_REQUIRED
    return adapter


class _LengthCounting(HeaderReader):
    """cheroot's header reader, counting the Content-Length and Host lines (cheroot keeps the last
    of each, so a repeated one is seen nowhere else), and refusing what would make cheroot read
    another head than the request intake did (RFC 9112 5.1, 5.2): whitespace before a colon
    (`Content-Length : 9`) and folded lines (`Content-Length: 0` then ` 9`), both of which cheroot
    took for a length the intake did not see."""

    def __init__(self) -> None:
        self.lengths = 0
        self.hosts = 0
        self._named = False  # the line in hand started with a name (not a continuation)

    def _transform_key(self, key_name: bytes) -> bytes:
        if key_name != key_name.rstrip():
            raise ValueError(Phrase("http_header_space"))  # answered 400
        self._named = True
        return super()._transform_key(key_name)

    def _allow_header(self, key_name: bytes) -> bool:
        if not self._named:
            raise ValueError(Phrase("http_header_fold"))
        self._named = False
        if key_name == b"Content-Length":  # cheroot title-cases the name before asking
            self.lengths += 1
        elif key_name == b"Host":
            self.hosts += 1
        return True


class _FieldLines:
    """The head's lines as cheroot's header reader reads them, refusing a NUL or a CR that does not
    end the line (RFC 9110 5.5: reject or replace): cheroot keeps both in the value, where a proxy
    in front may have ended the line at the CR and read what follows as a header of its own."""

    def __init__(self, rfile) -> None:
        self._rfile = rfile

    def readline(self, *args) -> bytes:
        line = self._rfile.readline(*args)
        if b"\x00" in line or b"\r" in line[:-2]:
            raise ValueError(Phrase("http_header_control"))  # answered 400
        return line


class _Request(HTTPRequest):
    """cheroot's request: its own answers (bad head, timeouts, overload) in the JSON envelope, and a
    Content-Length that is not plain digits, or not the only word on the body's length, refused
    before any body is read."""

    _head_at: tuple[bytes, int] = (b"", 0)  # set by read_request_line for each request
    ambiguous_length = False  # set by header_reader for each request
    host_lines = 1  # set by header_reader for each request

    def header_reader(self, rfile, headers: dict) -> dict:
        """cheroot's header reader (called as `self.header_reader(rfile, inheaders)`), noting a
        body length that is ambiguous, less an `Expect: 100-continue` on a body that will be
        refused unread (cheroot invites any body, and the client would upload it all first), that
        the intake has invited already (a second 100 Continue would follow the body), or from an
        HTTP/1.0 client."""
        reader = _LengthCounting()
        try:
            headers = reader(_FieldLines(rfile), headers)
        except NameError:  # cheroot's reader on a fold before any header: a 500, not the client's 400
            raise ValueError(Phrase("http_header_fold")) from None
        # Two lengths, or a length and chunks: a proxy may read another body than we do, and the
        # rest would run as a request of its own (request smuggling).
        self.ambiguous_length = reader.lengths > 1 or (reader.lengths == 1 and b"Transfer-Encoding" in headers)
        self.host_lines = reader.hosts
        invited = getattr(self.conn, "osreapi_continued", False)  # by the intake, which then took the body
        http10 = self.response_protocol == "HTTP/1.0"  # an HTTP/1.0 client knows no 100 Continue
        if self.ambiguous_length or self._too_large(headers.get(b"Content-Length")) or invited or http10:
            headers.pop(b"Expect", None)
        return headers

    def send_headers(self) -> None:
        """A HEAD answer without a length (a stream's: its GET is chunked) keeps its connection.
        cheroot closes it, as if a body followed that only the close could end; but a HEAD answer
        has no body whatever its head says, and a request pipelined behind it would be lost."""
        if not any(name.lower() == b"date" for name, _ in self.outheaders):  # else cheroot formats one per answer
            self.outheaders.append((b"Date", http_date()))
        if self.method != b"HEAD":
            super().send_headers()
            return
        self.method = b"GET"  # cheroot's head for a body of unknown length: chunked, kept alive
        try:
            super().send_headers()
        finally:
            self.method = b"HEAD"
            self.chunked_write = False  # no body: no last chunk either

    def write(self, chunk: bytes) -> None:
        """The answer's body, never after a HEAD's head (RFC 9110 9.3.2). Bottle drops a HEAD's body,
        but cheroot writes whatever the application returns, and the layers around Bottle (the token
        guard's 401, the request limit's 429) return theirs: the client, which reads no body after a
        HEAD, took it for the start of its next answer on the connection kept alive."""
        if self.method != b"HEAD":
            super().write(chunk)

    def read_request_line(self) -> bool:
        """cheroot's, noting where the request starts in the connection's buffer (the intake hands
        a worker each request there, or the start of a line too long to end): the head's bytes, for
        the language of an answer to a head cheroot refused unparsed. A reference, not a copy.
        A target whose bracketed host does not parse (`http://[::1/`) is the client's 400: cheroot
        catches only urlsplit's UnicodeError, and its ValueError was a 500."""
        rfile = self.conn.rfile
        self._head_at = (getattr(rfile, "_read_buf", b""), getattr(rfile, "_read_pos", 0))
        try:
            return super().read_request_line()
        except ValueError:
            if self._unparsed_target() is None:  # not the target's parse
                raise
            self.simple_response("400 Bad Request", "Malformed Request-URI")
            return False

    def _unparsed_target(self) -> bytes | None:
        """The request target once the request line split into three words, while cheroot has
        not parsed it (None before, or once parsed): what a refusal of the target is about."""
        uri = getattr(self, "uri", None)
        return None if uri is None or hasattr(self, "path") else uri

    def read_request_headers(self) -> bool:
        if not super().read_request_headers():
            return False
        if self.ambiguous_length:
            self._refuse("400 Bad Request", "ambiguous_length")
            return False
        host_problem = self._host_problem()
        if host_problem is not None:
            self._refuse("400 Bad Request", host_problem)
            return False
        if self.chunked_read:
            # cheroot leaves what a route did not read of a chunked body, and its trailer, in the
            # buffer, where it would be parsed as the next request: the connection ends with the answer.
            self.close_connection = True
        length = self.inheaders.get(b"Content-Length")
        if length is None:
            return True
        if not LENGTH_DIGITS.fullmatch(length.strip()):  # '-1' would read to EOF
            self._refuse("400 Bad Request", "content_length", value=length.decode("latin-1"))
            return False
        if self._too_large(length):
            self.close_connection = True  # never drain a body this large to keep the connection
        return True

    def _host_problem(self) -> str | None:
        """The message key for a request that names its host otherwise than once (RFC 9112 3.2: an
        HTTP/1.1 request without Host, or with two Host lines, is 400). Two lines may name two hosts,
        and a proxy in front may have routed on the first while the security checks here (loopback
        names only without a token) read the last. HTTP/1.0 has no Host: none is fine there."""
        if self.host_lines > 1:
            return "host_repeated"
        if self.host_lines == 0 and self.response_protocol != "HTTP/1.0":
            return "host_missing"
        return None

    def _too_large(self, length: bytes | None) -> bool:
        """A Content-Length (plain digits) over --max_body: the body is refused unread."""
        length = (length or b"").strip()
        return LENGTH_DIGITS.fullmatch(length) is not None and int(length) > self.server.osreapi_max_body

    def simple_response(self, status, msg: str = "") -> None:
        status = str(status)
        code = int(status[:3])
        server = self.server
        if code == 413:  # cheroot says 413 for a header block over max_request_header_size
            self._refuse("431 Request Header Fields Too Large", "header_too_large", limit=server.max_request_header_size)
        elif code == 414:
            self._refuse(status, "uri_too_long", limit=server.max_request_header_size)
        elif code == 400 and (target := self._absolute_target()) is not None:
            self._refuse(status, "target_absolute", target=target[:SHOWN_TARGET])
        elif code == 405:  # cheroot's refusal of CONNECT
            self._refuse(status, "method")
        elif code == 408:
            self._refuse(status, "read_timeout", seconds=f"{server.osreapi_read_timeout:g}")
        elif code == 501:  # a transfer coding the client chose: its error, never a 5xx
            self._refuse("400 Bad Request", "not_implemented")
        elif code == 505:  # the client's HTTP version, not our failure
            self._refuse("400 Bad Request", "http_version")
        elif code == 503:
            self._refuse(status, "overloaded", retry_after=RETRY_AFTER)
        elif code >= 500:
            self._refuse(status, "internal")
        else:
            self._refuse(status, "bad_http", detail=parser_refusal(msg or status[4:]))

    def _absolute_target(self) -> str | None:
        """The request target cheroot refused for its absolute form (`http://host/path`), as sent.
        Refused, not served (RFC 9112 3.2.2 would have the host taken from it, Host ignored): a proxy
        in front that forwarded it may have routed on Host, and the loopback-name check here would
        read another host than the one asked for, as with two Host lines."""
        uri = self._unparsed_target()
        if uri is None:  # not reached, or parsed: not cheroot's refusal of its form
            return None
        try:
            parts = urlsplit(uri)
        except ValueError:
            return None
        return uri.decode("latin-1") if parts.scheme or parts.netloc else None

    def _refuse(self, status: str, key: str, /, retry_after: int | None = None, **values: object) -> None:
        self.close_connection = True
        buffered, start = self._head_at
        head = bytes(buffered[start : start + self.server.max_request_header_size])
        lang = head_language(head, self.server.osreapi_lang)
        try:
            self.conn.wfile.write(raw_refusal(status, key, lang, retry_after=retry_after, **values))
        except OSError:
            pass  # the client has gone


# cheroot's sentences for a request its parser refuses (English only), by how they begin: ours
# say the same in the request's language. One it may add later is shown as it is.
PARSER_REFUSALS = (
    ("HTTP requires CRLF terminators", "http_crlf"),
    ("Malformed Request-Line", "http_request_line"),  # a bad protocol or version too (or two blanks)
    ("Malformed method name", "http_method_case"),
    ("Malformed Request-URI", "http_target"),
    ("Invalid path in Request-URI: request-target must match authority-form", "http_target_authority"),
    ("Invalid path in Request-URI: request-target must contain origin-form", "http_target_slash"),
    ("Invalid path in Request-URI", "http_target"),
    ("Illegal #fragment", "http_fragment"),
    ("Illegal header line", "http_header_line"),
    ("Illegal end of headers", "http_header_end"),
    ("Malformed Content-Length", "http_content_length"),
)


def parser_refusal(said: str | Phrase) -> Phrase | str:
    """Our words for what cheroot's parser said of a request it refused (ours already: a Phrase
    our header reader raised)."""
    if isinstance(said, Phrase):
        return said
    return next((Phrase(key) for start, key in PARSER_REFUSALS if said.startswith(start)), said)


class _Connection(HTTPConnection):
    """cheroot's connection, its answers written by an Outbox: a worker never waits on a client."""

    RequestHandlerClass = _Request

    def __init__(self, server, sock, makefile=MakeFile) -> None:
        def files(sock, mode: str, bufsize: int):  # the writer is ours, and the reader: cheroot's are never built
            return Outbox(sock, server.osreapi_outbox) if "w" in mode else _Reader(sock, mode, bufsize)

        super().__init__(server, sock, files)

    def close(self) -> None:
        """With part of an answer still waiting for the client, the intake sends it, then closes."""
        if waiting(self) and not self.linger:
            self.server.osreapi_intake.drain_then_close(self)
            return
        if isinstance(self.wfile, Outbox):  # cheroot swaps in its own writer for a plain request on TLS
            self.wfile.discard()
        super().close()


class _Reader(StreamReader):
    """cheroot's socket reader (Python's pure-Python io), with lines taken from its buffer at C
    speed: the intake hands a worker each request whole in that buffer, and _pyio's readline reads
    a line by peeks and reads in Python (a tenth of a GET's CPU went there)."""

    def readline(self, size: int | None = -1) -> bytes:
        with self._read_lock:
            buf, pos = self._read_buf, self._read_pos
            limit = len(buf) if size is None or size < 0 else min(len(buf), pos + size)
            end = buf.find(b"\n", pos, limit)
            if end >= 0:
                limit = end + 1
            elif limit - pos != size:  # no whole line buffered: read on from the socket
                limit = None
            if limit is not None:
                self._read_pos = limit
                self.bytes_read += limit - pos
                return buf[pos:limit]
        return super().readline(size)


_date = (0, b"")  # (second, the Date header's value for it): formatted once a second, not per answer


def http_date() -> bytes:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True).encode("ascii"))
    return _date[1]


class _ChunkLines:
    """The connection's reader as cheroot's chunked body reader uses it, a line (a chunk's size,
    the trailer) at most CHUNK_LINE bytes long: cheroot read a line whole however long, and a size
    line that never ended held a worker and took memory as fast as the client sent it."""

    def __init__(self, rfile) -> None:
        self._rfile = rfile

    def readline(self, *args) -> bytes:
        line = self._rfile.readline(CHUNK_LINE + 1)
        if len(line) > CHUNK_LINE:
            raise ValueError(f"a chunk-size line longer than {CHUNK_LINE} bytes")  # answered 400
        return line

    def read(self, *args) -> bytes:
        return self._rfile.read(*args)


class _Gateway(wsgi.Gateway_10):
    """WSGI 1.0, plus the cheroot request in the environ, for the stream hub's hand-off."""

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ["osreapi.request"] = self.req
        if self.req.chunked_read:
            # cheroot reads each chunk whole, as large as its size line says (`10000000000`: a
            # 1 TiB allocation, MemoryError, a 500): a chunked body and its framing are bounded.
            chunks = self.req.rfile
            chunks.maxlen = CHUNKED_READ_FACTOR * self.req.server.osreapi_max_body
            chunks.rfile = _ChunkLines(chunks.rfile)
        return environ


class _Server(wsgi.Server):
    ConnectionClass = _Connection

    def __init__(self, *args, read_timeout: float, max_body: int, max_connections: int, lang: str,
                 out_budget: int, in_budget: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = _Gateway
        self.osreapi_outbox = OutBudget(out_budget)
        self.osreapi_read_timeout = read_timeout
        self.osreapi_lang = lang
        self.osreapi_max_body = max_body
        self.osreapi_in_budget = in_budget
        self._max_connections = max_connections
        # cheroot keeps only 10 idle keep-alive connections and closes the rest after each answer;
        # here an idle one costs a selector entry: keep them up to what the server holds at all.
        self.keep_alive_conn_limit = max_connections

    def prepare(self) -> None:
        super().prepare()
        plain = self._connections
        self._connections = RequestIntake(self, self.osreapi_read_timeout, self.osreapi_max_body, self._max_connections)
        self.osreapi_intake = self._connections
        plain._selector.close()  # its only entry was the listening socket, registered again above

    def process_conn(self, conn) -> None:
        """Never wait for a free worker: when every worker is busy and the queue is full, 503 now."""
        try:
            self.requests.put(conn)
        except queue.Full:
            refuse(conn, "503 Service Unavailable", "overloaded", self, retry_after=RETRY_AFTER)

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        if traceback and client_went_away(sys.exc_info()[1]):  # not the server's fault: one line
            level, traceback = logging.DEBUG, False
        log.log(level, "%s", msg, exc_info=traceback)


def default_max_connections() -> int:
    """Connections the intake may hold while their requests arrive: what file descriptors allow."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return 1000
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(64, min(10_000, soft // 2))


def raise_fd_limit() -> None:
    """Let the process use as many descriptors as it may (thousands of followers each hold one)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


class HttpServer:
    def __init__(
        self,
        app: Callable,
        host: str,
        port: int,
        threads: int = DEFAULT_THREADS,
        tls: TlsSettings | None = None,
        max_header: int = 64 * 1024,
        client_timeout: float = 10.0,  # a keep-alive connection idle this long is closed
        read_timeout: float = 10.0,  # a request's head must arrive whole within this (body: at a minimum rate)
        max_connections: int | None = None,
        out_budget: int = BUDGET,  # bytes of answers kept for clients that read slowly, all together
        in_budget: int | None = None,  # bytes of requests being read, all together (default: see intake)
    ) -> None:
        self._scheme = "https" if tls else "http"
        self._app = app
        settings = getattr(app, "settings", None)  # the app's body limit and language, when it has them
        max_body = settings.max_body if settings else 1 << 20
        lang = settings.lang if settings else DEFAULT_LANGUAGE
        self._server = _Server(
            (host, port),
            app,
            numthreads=threads,
            server_name="osreapi",
            timeout=client_timeout,
            request_queue_size=1024,  # the listen backlog: bursts of connections are accepted, not dropped
            accepted_queue_size=threads * 4,
            accepted_queue_timeout=0,
            shutdown_timeout=5,
            read_timeout=read_timeout,
            max_body=max_body,
            max_connections=max_connections or default_max_connections(),
            lang=lang,
            out_budget=out_budget,
            in_budget=in_budget or default_in_budget(max_body),
        )
        self._server.max_request_header_size = max_header
        self._metrics = getattr(app, "metrics", None)  # the engine's, when the app is ours: scraped with /metrics
        if self._metrics is not None:
            self._metrics.add_gauge_source(self._gauges)
        if tls is not None:
            self._server.ssl_adapter = tls_adapter(tls)
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind (port 0 picks a free port), serve in a thread, return the bound (host, port)."""
        self._server.prepare()
        self._thread = threading.Thread(target=self._server.serve, name="osreapi-http", daemon=True)
        self._thread.start()
        host, port = self._server.bind_addr[:2]
        return host, port

    @property
    def url(self) -> str:
        """The address the socket is bound to (0.0.0.0 or [::] when it listens on every interface)."""
        host, port = self._server.bind_addr[:2]
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{self._scheme}://{netloc}"

    @property
    def answers_waiting(self) -> int:
        """Bytes of answers kept in memory for clients that have not read them whole yet."""
        return self._server.osreapi_outbox.used

    def _gauges(self) -> dict[str, float]:
        budget, hub = self._server.osreapi_outbox, getattr(self._app, "hub", None)
        values = {"http_answer_bytes_kept": budget.used, "http_answer_bytes_limit": budget.limit,
                  "http_answers_dropped": budget.dropped_total}
        if hub is not None:
            values["http_streams"] = hub.count
        return values

    @property
    def loopback_only(self) -> bool:
        host = self._server.bind_addr[0]
        return host in ("localhost",) or host.startswith("127.") or host == "::1"

    def stop(self) -> None:
        hub = getattr(self._app, "hub", None)
        if hub is not None:
            hub.stop()  # streams end first, so stop() never waits on an open one
        self._server.stop()
        if self._thread is not None:
            self._thread.join(10)
        if self._metrics is not None:  # the engine may be served again by another server
            self._metrics.remove_gauge_source(self._gauges)
