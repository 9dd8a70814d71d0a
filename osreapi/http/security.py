"""Who may call: protected mode (loopback only without a token), bearer tokens, the audit log."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import InvalidValue
from ..plaintext import header_safe
from ..vocabulary import message
from . import urltext
from .answers import language_of, refuse

audit_log = logging.getLogger("osreapi.audit")
OPEN_PATHS = frozenset({"/healthz"})  # answered without a token
PAGE_PREFIX = "/ui"  # the dashboard's static files: no data in them, and the page must load to ask for the token
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # change nothing: another site's page may send them
MAX_HOST = 253 + len(":65535") + 2  # a DNS name, a port, an IPv6 literal's brackets
AUDIT_KEY = "audit.key"  # in the data dir: the key of the audit log's token hints
AUDIT_KEY_BYTES = 32
SAME_SITE_FETCH = frozenset({"same-origin", "none"})  # Sec-Fetch-Site of the server's own pages, of a typed URL
# What a reverse proxy adds (Caddy, Apache, Traefik by default; nginx as usually configured).
PROXY_HEADERS = (("HTTP_FORWARDED", "Forwarded"), ("HTTP_X_FORWARDED_FOR", "X-Forwarded-For"),
                 ("HTTP_X_REAL_IP", "X-Real-IP"), ("HTTP_VIA", "Via"))


def is_page(environ: dict) -> bool:
    path = environ.get("PATH_INFO", "")
    return environ.get("REQUEST_METHOD") in ("GET", "HEAD") and (path == PAGE_PREFIX or path.startswith(PAGE_PREFIX + "/"))


def load_token(token: str | None, token_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The configured token: --token, else --token_file (not world-readable), else OSREAPI_TOKEN."""
    environ = os.environ if environ is None else environ
    if token is not None:
        if not token.strip():
            raise InvalidValue("--token: empty token")
        return header_safe(token.strip(), "--token")
    if token_file:
        path = Path(token_file)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidValue(f"--token_file: cannot read {path}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
        if mode & stat.S_IROTH:
            raise InvalidValue(f"--token_file: {path} is world-readable; chmod o-r {path}")
        if not text:
            raise InvalidValue(f"--token_file: {path} is empty")
        return header_safe(text, f"--token_file: {path}")
    from_env = environ.get("OSREAPI_TOKEN", "").strip()
    return header_safe(from_env, "OSREAPI_TOKEN") if from_env else None


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


def proxy_header(environ: dict) -> str | None:
    """The header that shows a request came through a proxy, if one does. A proxy on this host
    connects from loopback whoever its client is: without a token, everyone it serves (the whole
    internet, behind a TLS front) could run commands."""
    for key, name in PROXY_HEADERS:
        if key in environ:
            return name
    return None


def cross_site_origin(environ: dict) -> str | None:
    """The origin of a request that changes something, sent by a page of another site; None for
    any other request. A browser sends a page's POST to any address without asking (a "simple"
    request: CORS only hides the answer from the page), and a client on this host is served without
    a token: any web page the host's user opened could run commands. Sec-Fetch-Site says where a
    browser request comes from; without it (older browsers), Origin against Host; a client that is
    not a browser sends neither."""
    if environ.get("REQUEST_METHOD") in SAFE_METHODS:
        return None
    site, origin = environ.get("HTTP_SEC_FETCH_SITE"), environ.get("HTTP_ORIGIN")
    if site is not None:
        return None if site in SAME_SITE_FETCH else (origin or site)
    if origin is None or _netloc(origin) == environ.get("HTTP_HOST", "").lower():
        return None
    return origin


def _netloc(origin: str) -> str:
    try:
        return urlsplit(origin).netloc.lower()
    except ValueError:
        return ""


def rebindable(host: str | None) -> bool:
    """Whether a Host header names a DNS name an outside party may control (with a dot, not under
    .localhost). A page of evil.example whose name is made to resolve to 127.0.0.1 (DNS rebinding)
    talks to this server as its own origin, from a loopback client: served without a token, it
    could run commands and read every answer. An IP address, `localhost` or a name without dots
    (the host's own, from /etc/hosts) cannot be rebound from outside."""
    if not host:
        return False
    # A DNS name has at most 253 characters: a longer Host names nothing, and is not kept in the
    # cache (1,024 of them 64 KiB long would hold 64 MiB).
    return len(host) > MAX_HOST or _rebindable(host)


@functools.lru_cache(maxsize=1024)  # asked on every request in protected mode; hosts are few
def _rebindable(host: str) -> bool:
    try:
        name = (urlsplit("//" + host).hostname or "").rstrip(".")
    except ValueError:  # a port that is not a number
        return True
    try:
        ipaddress.ip_address(name)
        return False
    except ValueError:
        return "." in name and not name.endswith(".localhost")


def token_hint(token: str, key: bytes) -> str:
    """An identity for logs that does not reveal the token, even to a reader of the log who tries
    every likely token offline (a plain hash of a weak one is found in seconds): keyed with the data
    dir's audit key, which that reader does not have."""
    return "token#" + hmac.new(key, token.encode("utf-8"), hashlib.sha256).hexdigest()[:8]


def audit_key(data_dir: Path) -> bytes:
    """The data dir's key for token hints: made at the first start (readable by this user alone),
    the same at every later one so that a hint names one token across restarts. Written whole
    under another name and linked into place, which fails if it exists: of two makers racing,
    each reads the one key that won."""
    path = data_dir / AUDIT_KEY
    try:
        key = _made_or_read(data_dir, path)
    except OSError as exc:  # a data dir made read-only, a directory where the key goes
        other = exc.filename if isinstance(exc.filename, str) and exc.filename != str(path) else None
        raise InvalidValue(f"{path}: cannot make or read the audit key: {exc.strerror or exc}"
                           f"{f' ({other})' if other else ''}; the data dir must be writable by this user, "
                           "and the key a file") from None
    if len(key) != AUDIT_KEY_BYTES:
        raise InvalidValue(f"{path}: not an audit key ({len(key)} bytes, expected {AUDIT_KEY_BYTES}); remove it to make a new one")
    return key


def _made_or_read(data_dir: Path, path: Path) -> bytes:
    _remove_stale_spares(data_dir)
    if not path.exists():
        spare = data_dir / f"{AUDIT_KEY}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(AUDIT_KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            _put_in_place(spare, path)
        except FileExistsError:
            pass  # another maker was first: its key is the one
        finally:
            spare.unlink(missing_ok=True)
    return _read_private(path)


def _read_private(path: Path) -> bytes:
    """The key file's bytes, refused when another user may read or change it: a key others have read
    lets them try likely tokens against the log's hints, one they wrote is known to them. Refused,
    not chmodded: whether no one has read it yet is the owner's to judge. Not through a symbolic link,
    whose target's mode is another file's."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:  # ELOOP: a symbolic link
        raise InvalidValue(f"{path}: cannot read the audit key: {exc.strerror}; remove it to make a new one") from None
    with os.fdopen(descriptor, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidValue(f"{path}: other users may read or change it (mode {mode:04o}), and with it try tokens "
                               f"against the audit log's fingerprints; remove it to make a new one at the next start "
                               f"(or chmod 600 {path} if no one could have read it)")
        return handle.read()


def _put_in_place(spare: Path, path: Path) -> None:
    """Link spare as path (FileExistsError if it exists). A file system without hard links (vfat,
    some network or FUSE mounts) gets a rename: the data dir's lock keeps other servers out, and
    within this one the key is made before any request."""
    try:
        os.link(spare, path)
    except FileExistsError:
        raise
    except OSError:  # EPERM, EOPNOTSUPP, ENOSYS: no hard links here
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(spare, path)


def _remove_stale_spares(data_dir: Path) -> None:
    """Spares a start killed before it linked its key left behind (not this process's: under the
    data dir's lock, no other process makes one now)."""
    ours = f"{AUDIT_KEY}.{os.getpid()}."
    for spare in data_dir.glob(f"{AUDIT_KEY}.*.*"):
        if not spare.name.startswith(ours):
            spare.unlink(missing_ok=True)


class Guard:
    """WSGI middleware: protected mode without a token; with one, Bearer auth on every route but /healthz.
    The client address is the socket peer (REMOTE_ADDR), never a header such as X-Forwarded-For."""

    def __init__(self, app: Callable, token: str | None, default_lang: str, hint_key: bytes) -> None:
        self.app = app
        self._token = token.encode("utf-8") if token else None
        self._identity = token_hint(token, hint_key) if token else "loopback"
        self._default_lang = default_lang

    def __getattr__(self, name: str):  # expose the inner app's attributes (e.g. `hub`)
        return getattr(self.app, name)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in OPEN_PATHS:
            return self.app(environ, start_response)
        origin = cross_site_origin(environ)
        if origin is not None:
            return self._refuse(environ, start_response, "403 Forbidden", 403, "cross_origin",
                                origin=_shown(environ, "HTTP_ORIGIN" if "HTTP_ORIGIN" in environ else "HTTP_SEC_FETCH_SITE"))
        if self._token is None:
            if not is_loopback(environ.get("REMOTE_ADDR")):
                return self._refuse(environ, start_response, "403 Forbidden", 403, "forbidden")
            proxied = proxy_header(environ)
            if proxied is not None:
                return self._refuse(environ, start_response, "403 Forbidden", 403, "proxied", header=proxied)
            if rebindable(environ.get("HTTP_HOST")):
                return self._refuse(environ, start_response, "403 Forbidden", 403, "foreign_host",
                                    host=_shown(environ, "HTTP_HOST"))
        elif not is_page(environ):
            header = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, presented = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode("utf-8"), self._token):
                headers = {"WWW-Authenticate": 'Bearer realm="osreapi"'}
                return self._refuse(environ, start_response, "401 Unauthorized", 401, "unauthorized", headers)
        environ["osreapi.identity"] = self._identity
        return self.app(environ, start_response)

    def _refuse(self, environ, start_response, status: str, code: int, key: str, headers=None, **values) -> list[bytes]:
        if environ.get("REQUEST_METHOD") in ("POST", "PUT", "DELETE", "PATCH"):
            audit(environ, route=environ.get("PATH_INFO", ""), task_id=None, steps=None, status=code)
        text = message(key, language_of(environ, self._default_lang), **values)
        return refuse(start_response, status, code, text, headers)


def _shown(environ: dict, key: str) -> str:
    """A header's value in a message: as UTF-8 text, quoted, bounded."""
    return repr((urltext.header(environ, key) or "")[:100])


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
    # ASCII: a path's NEL (%85) or U+2028 is a line break to many readers (Python's splitlines),
    # and would split the entry there and let the rest read as an entry of its own.
    audit_log.info(json.dumps(record))
