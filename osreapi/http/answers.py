"""What the WSGI layers below Bottle (auth, request limit) share: the request's language and a
plain envelope answer."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

from ..vocabulary import Phrase, normalize_language
from .render import envelope

JSON_TYPE = "application/json; charset=utf-8"


def language_of(environ: dict, default: str) -> str:
    """?lang= first, then Accept-Language, then the server's default."""
    query_string = environ.get("QUERY_STRING", "")
    query = parse_qs(query_string) if "lang=" in query_string else {}
    return (
        normalize_language(query.get("lang", [""])[0])
        or normalize_language(environ.get("HTTP_ACCEPT_LANGUAGE"))
        or default
    )


def head_language(head: bytes, default: str) -> str:
    """The language a request asks for, read from its head's bytes as received: for the answers given
    before its head is parsed, or instead (a malformed or cut request line, a read timeout), where
    neither its query nor its headers were seen. The target is the request line's second word
    however many blanks part them, its query what follows '?' before any '#'."""
    head = head.lstrip(b"\r\n").partition(b"\r\n\r\n")[0]
    line, _, fields = head.partition(b"\n")
    words = line.split()
    query = words[1].partition(b"#")[0].partition(b"?")[2] if len(words) > 1 else b""
    accepted = [value.strip() for name, _, value in (field.partition(b":") for field in fields.split(b"\n"))
                if name.strip().lower() == b"accept-language"]
    asked = {"QUERY_STRING": query.decode("latin-1"), "HTTP_ACCEPT_LANGUAGE": b", ".join(accepted).decode("latin-1")}
    return language_of(asked, default)


def refuse(start_response: Callable, status: str, code: int, text: str, headers: dict[str, str] | None = None) -> list[bytes]:
    """Answer with the envelope before the application runs."""
    body = envelope(code, text).encode("utf-8")
    start_response(status, [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body))), *(headers or {}).items()])
    return [body]


def raw_refusal(status: str, key: str, lang: str, /, retry_after: int | None = None, **values: object) -> bytes:
    """A whole HTTP/1.1 response with the envelope, for answers given below the WSGI application
    (the server's parser, the request intake); the connection closes after it."""
    body = envelope(int(status[:3]), Phrase(key, values).render(lang)).encode("utf-8")
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {JSON_TYPE}", f"Content-Length: {len(body)}", "Connection: close"]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
