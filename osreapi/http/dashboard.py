"""Routes of the live view: GET /events (the feed) and the dashboard pages under /ui/."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import bottle

from ..errors import InvalidRequest
from ..events import EventBus
from ..spec import TASK_ID_PATTERN
from ..vocabulary import LANGUAGES, State
from . import urltext
from .answers import JSON_TYPE
from .feed import EventFrames, FeedSource
from .streams import StreamHub

UI_DIR = Path(__file__).parent / "ui"
_SEQUENCE = re.compile(r"[0-9]{1,19}")
# Only the server's own origin: no inline script or style, no framing, no other host.
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
FEED_HEADERS = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]


def last_event_id(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    if not _SEQUENCE.fullmatch(value.strip()):
        raise InvalidRequest("bad_event_id", value=value[:40])
    return int(value)


def task_filter(value: str | None) -> str | None:
    if value is None:
        return None
    if not TASK_ID_PATTERN.fullmatch(value):
        raise InvalidRequest("bad_task_filter", value=value[:70])
    return value


def add_routes(
    app: bottle.Bottle,
    api: Callable,
    lang: Callable[[], str],
    hub: StreamHub,
    bus: EventBus,
) -> None:
    """Add /events and /ui/ to `app`; call before the catch-all /<task_id> routes."""

    frames = EventFrames()  # shared by every subscriber
    # The state words of both languages, from the one table, so the page can colour and filter by state.
    vocabulary_body = json.dumps({"states": {s.value: [s.word(language) for language in LANGUAGES] for s in State}}, ensure_ascii=False)

    @app.get("/events")
    @api
    def events() -> bottle.HTTPResponse:
        environ = bottle.request.environ
        after = last_event_id(urltext.header(environ, "HTTP_LAST_EVENT_ID"))
        task_id = task_filter(bottle.request.query.get("task"))
        source = FeedSource(bus, frames, after, task_id, lang())
        return hub.serve(environ, "200 OK", FEED_HEADERS, source)

    @app.get("/ui")
    def ui_redirect() -> bottle.HTTPResponse:
        # A relative Location (RFC 9110 10.2.2): Bottle's redirect() builds an absolute one from the
        # request's Host or X-Forwarded-Host, so any client could make this cacheable 301 point elsewhere.
        return bottle.HTTPResponse(status=301, headers={"Location": "/ui/"})

    # Through `api` as every route: a file that cannot be opened for want of a descriptor is 503.
    @app.get("/ui/")
    @app.get("/ui/tasks/<task_id>")
    @api
    def ui_page(task_id: str | None = None) -> bottle.HTTPResponse:
        return ui_file("index.html")

    @app.get("/ui/vocabulary.json")
    def ui_vocabulary() -> bottle.HTTPResponse:
        return bottle.HTTPResponse(body=vocabulary_body, headers={"Content-Type": JSON_TYPE, **UI_HEADERS})

    @app.get("/ui/<name:re:[a-z0-9_-]+[.](?:js|css|svg)>")
    @api
    def ui_asset(name: str) -> bottle.HTTPResponse:
        return ui_file(name)


def ui_file(name: str) -> bottle.HTTPResponse:
    """A dashboard file, always whole: the files are small and a server may ignore Range (RFC 9110
    14.2). Bottle's own answer to a Range it cannot serve is an HTML page in English."""
    bottle.request.environ.pop("HTTP_RANGE", None)
    response = bottle.static_file(name, root=str(UI_DIR), headers=dict(UI_HEADERS))
    response.headers.pop("Accept-Ranges", None)  # no client should ask for a part
    return response
