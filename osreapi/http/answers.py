"""What the WSGI layers below Bottle (auth, request limit) share: the request's language and a
plain envelope answer."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

from ..vocabulary import message, normalize_language
from .render import envelope

JSON_TYPE = "application/json; charset=utf-8"


def language_of(environ: dict, default: str) -> str:
    """?lang= first, then Accept-Language, then the server's default."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    return (
        normalize_language(query.get("lang", [""])[0])
        or normalize_language(environ.get("HTTP_ACCEPT_LANGUAGE"))
        or default
    )


def refuse(start_response: Callable, status: str, code: int, text: str, headers: dict[str, str] | None = None) -> list[bytes]:
    """Answer with the envelope before the application runs."""
    body = envelope(code, text).encode("utf-8")
    start_response(status, [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body))), *(headers or {}).items()])
    return [body]


def raw_refusal(status: str, key: str, lang: str, retry_after: int | None = None, **values: object) -> bytes:
    """A whole HTTP/1.1 response with the envelope, for answers given below the WSGI application
    (the server's parser, the request intake); the connection closes after it."""
    body = envelope(int(status[:3]), message(key, lang, **values)).encode("utf-8")
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {JSON_TYPE}", f"Content-Length: {len(body)}", "Connection: close"]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
