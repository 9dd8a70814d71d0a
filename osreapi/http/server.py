"""The cheroot WSGI server, created directly so it can be stopped and its port read."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cheroot import wsgi

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


class HttpServer:
    def __init__(self, app: Callable, host: str, port: int, threads: int = DEFAULT_THREADS) -> None:
        self._server = wsgi.Server(
            (host, port),
            app,
            numthreads=threads,
            server_name="osreapi",
            timeout=10,
            accepted_queue_size=threads * 4,
            shutdown_timeout=5,
        )
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
        return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"

    def stop(self) -> None:
        closing = getattr(self._server.wsgi_app, "closing", None)
        if closing is not None:
            closing.set()  # streams end first, so stop() never waits on an open one
        self._server.stop()
        if self._thread is not None:
            self._thread.join(10)
