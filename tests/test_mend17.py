"""mend17: leftovers of the HTTP front and the client: answers given before a request's head is
parsed in the language it asked for; an absolute-form request target refused in our envelope; an
audit key others may read refused; the client's logs() in one request, its transport on public APIs."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time

import httpx
import pytest

from osreapi.client import Client as RemoteClient
from osreapi.client.client import tls_context
from osreapi.client.deadline import AnswerTooSlow, DeadlineTransport, until
from osreapi.errors import InvalidRequest, InvalidValue, NotFound
from osreapi.http.app import HttpSettings, make_app
from osreapi.http.security import audit_key
from osreapi.http.server import HttpServer, TlsSettings

from .certs import make_pki
from .conftest import Client, console_script, sh

WORDS = {"en": "request line too long", "zh": "请求行过长"}


def _other(lang: str) -> str:
    return "en" if lang == "zh" else "zh"


def _exchange(client: Client, raw: bytes) -> tuple[bytes, dict]:
    """Send raw bytes, read to the end of the connection (each recv waits 10 s at most)."""
    sock = socket.create_connection((client.host, client.port), timeout=10)
    sock.sendall(raw)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, json.loads(body)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_request_line_too_long_with_a_double_space_is_answered_in_its_language(make_server, lang):
    """The cut line's target was taken as its second space-separated word: with two spaces after
    the method that word was empty, its ?lang= unseen, and the 414 came in the server's language."""
    client = make_server(settings=HttpSettings(lang=_other(lang)))
    raw = b"GET  /?lang=%s&pad=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (lang.encode(), b"a" * (70 * 1024))
    head, body = _exchange(client, raw)
    assert head.startswith(b"HTTP/1.1 414"), head
    assert body["code"] == 414 and body["message"].startswith(WORDS[lang]), body


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("asked", [b"/healthz?lang={lang}", b"/healthz\r\nAccept-Language: {lang}"])
def test_a_malformed_request_line_is_answered_in_the_language_its_request_asked(make_server, lang, asked):
    """cheroot refuses a request line it cannot split (two spaces) before its query and headers are
    parsed: the 400 came in the server's default language whatever the request asked."""
    client = make_server(settings=HttpSettings(lang=_other(lang)))
    path, _, header = asked.replace(b"{lang}", lang.encode()).partition(b"\r\n")
    raw = b"GET  %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, header + b"\r\n" if header else b"")
    head, body = _exchange(client, raw)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert body["message"].startswith({"en": "malformed HTTP request", "zh": "HTTP 请求格式错误"}[lang]), body


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_request_timed_out_unread_is_answered_in_its_language(make_server, lang):
    """The intake's 408 (a head that never ends) came in the server's language: what was read of the
    request tells its language, as for the worker's answers."""
    client = make_server(settings=HttpSettings(lang=_other(lang)), read_timeout=0.5)
    head, body = _exchange(client, b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept-Language: %s\r\n" % lang.encode())
    assert head.startswith(b"HTTP/1.1 408"), head
    assert body["message"].startswith({"en": "the request did not arrive whole", "zh": "请求未在"}[lang]), body


def test_plain_http_on_the_tls_port_is_answered_in_its_language(make_executor, tmp_path):
    pki = make_pki(tmp_path)
    app = make_app(make_executor(), HttpSettings(lang="zh"))
    server = HttpServer(app, "127.0.0.1", 0, tls=TlsSettings(str(pki["server"].cert), str(pki["server"].key)))
    host, port = server.start()
    try:
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(b"GET /healthz?lang=en HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["message"] == "this port speaks HTTPS only: use https://"


@pytest.mark.parametrize("lang, asked", [("en", b"?lang=en"), ("zh", b"?lang=zh"), ("en", b"\r\nAccept-Language: en")])
def test_an_absolute_form_target_is_refused_in_the_envelope_naming_it(make_server, lang, asked):
    """cheroot's 400 for `GET http://host/path` carried its own English sentence inside our message
    whatever the language. It is refused (not served: docs/api.md says why), naming the target and
    what to send instead, in the request's language."""
    client = make_server(settings=HttpSettings(lang=_other(lang)))
    query, _, header = asked.partition(b"\r\n")
    target = b"http://127.0.0.1:%d/healthz%s" % (client.port, query)
    raw = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (target, header + b"\r\n" if header else b"")
    head, body = _exchange(client, raw)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert body["code"] == 400 and repr(target.decode()) in body["message"], body
    expected = {"en": "is in absolute form (a proxy's): send the path alone", "zh": "是绝对形式 (给代理的)"}[lang]
    assert expected in body["message"], body
    assert "Absolute URI" not in body["message"]


def test_a_relative_target_keeps_its_own_refusal(make_server):
    """Only the absolute form gets its message: a target without a leading '/' is another fault."""
    client = make_server(settings=HttpSettings(lang="en"))
    head, body = _exchange(client, b"GET healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert "absolute form" not in body["message"] and body["message"].startswith("malformed HTTP request"), body


# -- the audit key's file ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_an_audit_key_others_may_read_or_change_is_refused_and_left_as_it_is(tmp_path, mode):
    """An existing key was read whatever its mode: one others had read let them try tokens against
    the log's fingerprints. It is refused, naming the file and its mode, and neither changed nor
    replaced (whether anyone read it is the owner's to judge)."""
    path = tmp_path / "audit.key"
    path.write_bytes(b"k" * 32)
    path.chmod(mode)
    with pytest.raises(InvalidValue) as refused:
        audit_key(tmp_path)
    assert str(path) in str(refused.value) and f"mode {mode:04o}" in str(refused.value)
    assert path.read_bytes() == b"k" * 32 and path.stat().st_mode & 0o777 == mode


def test_an_audit_key_of_this_user_alone_is_read_and_a_link_is_not_followed(tmp_path):
    path = tmp_path / "audit.key"
    path.write_bytes(b"k" * 32)
    path.chmod(0o600)
    assert audit_key(tmp_path) == b"k" * 32
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    os.symlink(path, elsewhere / "audit.key")  # another file's mode is no proof about the key's
    with pytest.raises(InvalidValue, match="cannot read the audit key"):
        audit_key(elsewhere)


def test_the_server_does_not_start_on_a_world_readable_audit_key(tmp_path):
    """The installed console script: exit 1 with one line naming the key, no traceback."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "audit.key").write_bytes(b"k" * 32)
    (data_dir / "audit.key").chmod(0o644)
    out = subprocess.run([console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(data_dir)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and f"{data_dir / 'audit.key'}: other users may read" in out.stderr, out.stderr


# -- the Python client's logs() ------------------------------------------------------------------


class _CountingLogs:
    """The real application, counting the requests for a step's log (PATH_INFO ending in /log)."""

    def __init__(self, app) -> None:
        self._app = app
        self.settings = app.settings
        self.hub = app.hub
        self.asked: list[str] = []

    def __call__(self, environ: dict, start_response):
        if environ["PATH_INFO"].endswith("/log"):
            self.asked.append(f"{environ['PATH_INFO']}?{environ['QUERY_STRING']}")
        return self._app(environ, start_response)


@pytest.fixture
def counted(make_executor):
    app = _CountingLogs(make_app(make_executor(), HttpSettings()))
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    client = RemoteClient(server.url, timeout=10)
    yield client, app
    client.close()
    server.stop()


def test_logs_asks_the_server_once_per_call(counted, tmp_path):
    """logs() asked a plain GET of the log first, for its errors at once, and then the stream: two
    requests (and the plain one's answer, the whole log, cut unread). One stream request now, its
    errors still raised by the call itself, its chunks the same."""
    client, app = counted
    task_id = client.submit([sh("printf 'one\\ntwo\\n'")])
    assert client.wait(task_id, timeout=20).steps[0].succeeded
    assert "".join(client.logs(task_id, 0)) == "one\ntwo\n"
    assert len(app.asked) == 1, app.asked
    assert "".join(client.logs(task_id, 0, offset=4)) == "two\n"
    assert len(app.asked) == 2, app.asked
    gate = tmp_path / "gate"
    running = client.submit([sh(f"echo first; while [ ! -e {gate} ]; do sleep 0.01; done; echo last")])
    followed = client.logs(running, 0, follow=True)
    assert len(app.asked) == 3, app.asked  # asked by the call, before any chunk is read
    assert next(followed) == "first\n"
    gate.touch()
    assert "".join(followed) == "last\n"
    assert len(app.asked) == 3, app.asked


def test_logs_raises_its_errors_at_the_call_with_one_request(counted):
    client, app = counted
    task_id = client.submit([sh("echo hi")])
    client.wait(task_id, timeout=20)
    with pytest.raises(NotFound):
        client.logs(task_id, 5)
    with pytest.raises(InvalidRequest):
        client.logs(task_id, 0, offset=100)
    assert len(app.asked) == 2, app.asked


# -- the client's transport ----------------------------------------------------------------------


def test_the_deadline_transport_raises_httpx_errors_and_bounds_the_whole_answer():
    """DeadlineTransport is a custom httpx transport over httpcore's pool (no private httpx attribute
    replaced): httpcore's errors still reach the caller as httpx's, and the deadline still bounds
    an answer that a server drips a byte at a time, each byte well within the read timeout."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:  # the head at once, then the body a byte every 50 ms for 30 s at most
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 600\r\n\r\n")
            for _ in range(600):
                if stop.wait(0.05):
                    return
                with contextlib.suppress(OSError):
                    conn.sendall(b"x")

    server = threading.Thread(target=drip, daemon=True)
    server.start()
    try:
        with httpx.Client(transport=DeadlineTransport(tls_context(True, None)), timeout=5) as http:
            with pytest.raises(httpx.ConnectError):
                http.get(f"http://127.0.0.1:{closed_port}/")
            with pytest.raises(AnswerTooSlow), until(time.monotonic() + 0.5):
                http.get(f"http://127.0.0.1:{port}/").read()
    finally:
        stop.set()
        server.join(10)
        listener.close()
    assert not server.is_alive()


@pytest.mark.parametrize("seconds, given", [(0.0, "0"), (25 * 3600.0, "25h")])
def test_the_cli_refuses_a_request_timeout_as_the_client_does(seconds, given):
    """The CLI checked the request timeout's bounds itself, in its own words, beside Client's own
    check: one check now, Client's, its words in both."""
    with pytest.raises(InvalidValue) as refused:
        RemoteClient(timeout=seconds)
    done = subprocess.run([console_script(), "ls", "--url", "http://127.0.0.1:9", "--request_timeout", given],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{refused.value} ({given!r})" in done.stderr, done.stderr


# The server's parser's own refusals, each with what cheroot says of it, in both languages: the
# sentence was cheroot's English inside our message, whatever language the request asked for.
PARSER_REFUSALS = [  # {q} is where the request's ?lang= goes
    (b"GET /x{q} HTTP/1.1\nHost: x\n\n", "CRLF"),
    (b"GET /x{q} FTP/1.1\r\nHost: x\r\n\r\n", "HTTP"),
    (b"get /x{q} HTTP/1.1\r\nHost: x\r\n\r\n", "GET"),
    (b"GET x{q} HTTP/1.1\r\nHost: x\r\n\r\n", "/"),
    (b"GET /x{q}#frag HTTP/1.1\r\nHost: x\r\n\r\n", "#"),
    (b"GET /x{q} HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", ":"),
]


@pytest.mark.parametrize("raw,named", PARSER_REFUSALS)
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_parsers_own_refusals_are_told_in_the_requests_language(make_server, raw, named, lang):
    client = make_server(settings=HttpSettings(lang=_other(lang)))
    head, body = _exchange(client, raw.replace(b"{q}", b"?lang=" + lang.encode()))
    assert head.startswith(b"HTTP/1.1 400"), head
    text = body["message"]
    assert named in text, text
    if lang == "zh":  # nothing of cheroot's English left in it
        assert not any(word in text for word in ("Malformed", "Illegal", "Invalid", "requires", "must")), text
    else:
        assert text.startswith("malformed HTTP request: ") and text[len("malformed HTTP request: ")].islower(), text
