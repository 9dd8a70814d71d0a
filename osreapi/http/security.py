"""Who may call: protected mode (loopback only without a token), bearer tokens, the audit log."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import InvalidValue
from ..vocabulary import message
from .answers import language_of, refuse

audit_log = logging.getLogger("osreapi.audit")
OPEN_PATHS = frozenset({"/healthz"})  # answered without a token
PAGE_PREFIX = "/ui"  # the dashboard's static files: no data in them, and the page must load to ask for the token


def is_page(environ: dict) -> bool:
    path = environ.get("PATH_INFO", "")
    return environ.get("REQUEST_METHOD") in ("GET", "HEAD") and (path == PAGE_PREFIX or path.startswith(PAGE_PREFIX + "/"))


def load_token(token: str | None, token_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The configured token: --token, else --token_file (not world-readable), else OSREAPI_TOKEN."""
    environ = os.environ if environ is None else environ
    if token is not None:
        if not token.strip():
            raise InvalidValue("--token: empty token")
        return token.strip()
    if token_file:
        path = Path(token_file)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidValue(f"--token_file: cannot read {path}: {exc.strerror}") from None
        if mode & stat.S_IROTH:
            raise InvalidValue(f"--token_file: {path} is world-readable; chmod o-r {path}")
        if not text:
            raise InvalidValue(f"--token_file: {path} is empty")
        return text
    from_env = environ.get("OSREAPI_TOKEN", "").strip()
    return from_env or None


@functools.lru_cache(maxsize=1024)  # asked on every request; clients are few
def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def token_hint(token: str) -> str:
    """An identity for logs that does not reveal the token."""
    return "token#" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


class Guard:
    """WSGI middleware: protected mode without a token; with one, Bearer auth on every route but /healthz.
    The client address is the socket peer (REMOTE_ADDR), never a header such as X-Forwarded-For."""

    def __init__(self, app: Callable, token: str | None, default_lang: str) -> None:
        self.app = app
        self._token = token.encode("utf-8") if token else None
        self._identity = token_hint(token) if token else "loopback"
        self._default_lang = default_lang

    def __getattr__(self, name: str):  # expose the inner app's attributes (e.g. `hub`)
        return getattr(self.app, name)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in OPEN_PATHS:
            return self.app(environ, start_response)
        if self._token is None:
            if not is_loopback(environ.get("REMOTE_ADDR")):
                return self._refuse(environ, start_response, "403 Forbidden", 403, "forbidden")
        elif not is_page(environ):
            header = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, presented = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode("utf-8"), self._token):
                headers = {"WWW-Authenticate": 'Bearer realm="osreapi"'}
                return self._refuse(environ, start_response, "401 Unauthorized", 401, "unauthorized", headers)
        environ["osreapi.identity"] = self._identity
        return self.app(environ, start_response)

    def _refuse(self, environ, start_response, status: str, code: int, key: str, headers=None) -> list[bytes]:
        if environ.get("REQUEST_METHOD") in ("POST", "PUT", "DELETE", "PATCH"):
            audit(environ, route=environ.get("PATH_INFO", ""), task_id=None, steps=None, status=code)
        text = message(key, language_of(environ, self._default_lang))
        return refuse(start_response, status, code, text, headers)


def audit(environ: dict, *, route: str, task_id: str | None, steps: int | None, status: int) -> None:
    """One structured line per mutating request; never the token itself."""
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "client": environ.get("REMOTE_ADDR"),
        "identity": environ.get("osreapi.identity", "anonymous"),
        "method": environ.get("REQUEST_METHOD"),
        "route": route,
        "path": environ.get("PATH_INFO"),
        "task_id": task_id,
        "steps": steps,
        "status": status,
    }
    audit_log.info(json.dumps(record, ensure_ascii=False))
