"""The request's path and query read as UTF-8, and a query parameter given twice with different
values refused. WSGI hands both over as Latin-1 text (one character
per byte); Bottle recodes the path but drops the bytes that are not UTF-8 (`/vic%FFtim` would reach
task `victim`), and leaves the query as it is (`?action=暂停` would be echoed as mojibake)."""

from __future__ import annotations

import re
from collections.abc import Callable

import bottle

from ..vocabulary import message
from .answers import JSON_TYPE
from .render import envelope

_ENCODED_HIGH_BYTE = re.compile(r"%[89a-fA-F]")  # a percent-escape of a byte beyond ASCII


def add_hook(app: bottle.Bottle, lang: Callable[[], str]) -> None:
    """Before any route reads the request: refuse a path that is not UTF-8 (400 naming the byte),
    give the routes the query's names and values as UTF-8 text (bad bytes replaced), and refuse a
    parameter given twice with different values."""

    @app.hook("before_request")
    def read_as_utf8() -> None:
        environ = bottle.request.environ
        _check_path(environ["bottle.raw_path"], lang)
        query_string = environ.get("QUERY_STRING", "")
        if not query_string:
            return
        if not query_string.isascii() or _ENCODED_HIGH_BYTE.search(query_string):
            environ["bottle.request.query"] = _recoded(bottle.request.query)
        _check_repeats(bottle.request.query, lang)


def _check_path(raw: str, lang: Callable[[], str]) -> None:
    if raw.isascii():
        return
    try:
        raw.encode("latin-1").decode("utf-8")
    except UnicodeError as exc:
        _refuse(message("path_not_utf8", lang(), at=exc.start))


def _refuse(text: str) -> None:
    raise bottle.HTTPResponse(envelope(400, text), status=400, headers={"Content-Type": JSON_TYPE})


def _check_repeats(query: bottle.FormsDict, lang: Callable[[], str]) -> None:
    """A parameter given twice with different values (`?action=kill&action=pause`): which one the
    client meant is unknown (Bottle would take the last)."""
    for name in query:
        if len(set(query.getall(name))) > 1:
            _refuse(message("query_repeated", lang(), name=name))


def _recoded(query: bottle.FormsDict) -> bottle.FormsDict:
    fixed = bottle.FormsDict()
    for name, value in query.allitems():
        fixed[_utf8(name)] = _utf8(value)
    return fixed


def header(environ: dict, key: str) -> str | None:
    """A request header's value (by its WSGI key) as UTF-8 text, bad bytes replaced: echoed in a
    message, WSGI's Latin-1 text of `１２` read 'ï¼\\x91ï¼\\x92'. Bottle's own headers raise instead."""
    value = environ.get(key)
    return None if value is None else _utf8(value)


def _utf8(latin1: str) -> str:
    return latin1.encode("latin-1", "replace").decode("utf-8", "replace")
