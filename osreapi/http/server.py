"""The cheroot WSGI server, created directly so it can be stopped and its port read."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from ..errors import InvalidValue

DEFAULT_THREADS = 32


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


def tls_adapter(tls: TlsSettings) -> BuiltinSSLAdapter:
    adapter = BuiltinSSLAdapter(tls.cert, tls.key)
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.client_ca:
        adapter.context.load_verify_locations(cafile=tls.client_ca)
        adapter.context.verify_mode = ssl.CERT_REQUIRED
    return adapter


class HttpServer:
    def __init__(
        self,
        app: Callable,
        host: str,
        port: int,
        threads: int = DEFAULT_THREADS,
        tls: TlsSettings | None = None,
        max_header: int = 64 * 1024,
        client_timeout: float = 10.0,  # a client silent this long mid-request is dropped
    ) -> None:
        self._scheme = "https" if tls else "http"
        self._server = wsgi.Server(
            (host, port),
            app,
            numthreads=threads,
            server_name="osreapi",
            timeout=client_timeout,
            accepted_queue_size=threads * 4,
            shutdown_timeout=5,
        )
        self._server.max_request_header_size = max_header
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
        host, port = self._server.bind_addr[:2]
        shown = "127.0.0.1" if host == "0.0.0.0" else host
        netloc = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
        return f"{self._scheme}://{netloc}"

    @property
    def loopback_only(self) -> bool:
        host = self._server.bind_addr[0]
        return host in ("localhost",) or host.startswith("127.") or host == "::1"

    def stop(self) -> None:
        closing = getattr(self._server.wsgi_app, "closing", None)
        if closing is not None:
            closing.set()  # streams end first, so stop() never waits on an open one
        self._server.stop()
        if self._thread is not None:
            self._thread.join(10)
