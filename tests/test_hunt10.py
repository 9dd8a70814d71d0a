"""Faults found by attacking the security surface with hostile input (fault hunt 10): each test
reproduces one against a real server (cheroot on 127.0.0.1, or the installed console script) and
fails without its fix."""

from __future__ import annotations

import gc
import http.server
import json
import logging
import os
import socket
import stat
import subprocess
import threading
import tracemalloc

import pytest

from osreapi import Executor
from osreapi.errors import DataDirUnsafe
from osreapi.http.app import HttpSettings

from .browser import launch
from .conftest import Client, console_script, sh, wait_until
from .test_http_front_input import envelope_of, raw_request

EN = {"Accept-Language": "en"}


def answered_while_open(client: Client, data: bytes) -> bytes:
    """Send bytes and keep the connection open, as a client waiting for its answer does (no
    shutdown, which the server would read as the end); read until the server closes, for 5 s at most."""
    with socket.create_connection((client.host, client.port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


# -- the submission body ---------------------------------------------------------------------


def test_a_number_too_long_for_python_is_refused_not_an_internal_error(client: Client, tmp_path):
    """json.loads raises a plain ValueError on an integer of more than 4300 digits: it was a 500."""
    mark = tmp_path / "ran"
    body = f'[{{"command_type":"sh","command_content":"touch {mark}","timeout":{"9" * 5000}}}]'
    resp = client.post("/", body, headers=EN)
    assert resp.status == 400, resp.body
    assert resp.json == {"code": 400, "message": "body: a number is too long (the limit is 4300 digits)"}
    assert client.executor.list() == [] and not mark.exists()


def test_a_key_given_twice_in_a_step_is_refused(client: Client, tmp_path):
    """json keeps the last of two equal keys: a proxy or a review that read the first
    `command_content` saw another command than the one that ran."""
    checked, hidden = tmp_path / "checked", tmp_path / "hidden"
    body = f'[{{"command_type":"sh","command_content":"touch {checked}","command_content":"touch {hidden}"}}]'
    resp = client.post("/", body, headers=EN)
    assert resp.status == 400, resp.body
    assert resp.json == {"code": 400, "message": "body: key 'command_content' appears twice in one object"}
    env_twice = '[{"command_type":"sh","command_content":"echo","env_vars":{"A":"1","A":"2"}}]'
    assert client.post("/", env_twice, headers=EN).json["message"] == "body: key 'A' appears twice in one object"
    assert client.executor.list() == [] and not checked.exists() and not hidden.exists()


@pytest.mark.parametrize("size", [b"ffffffffffffffffffff", b"10000000000"])
def test_a_chunk_size_beyond_memory_is_413_not_an_internal_error(client: Client, size: bytes):
    """cheroot reads a chunk whole, as large as its size line says: past 2**63 an OverflowError, at
    1 TiB a MemoryError; both were a 500 (and any size short of that an allocation that large)."""
    answer = raw_request(client, b"POST / HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + size + b"\r\nabc")
    status, body = envelope_of(answer)
    assert status == 413, answer
    assert body == {"code": 413, "message": "request body too large, the limit is 1048576 bytes"}
    assert client.executor.list() == []


def test_a_chunk_size_line_that_never_ends_is_refused_at_its_bound(client: Client):
    """cheroot read a chunk-size line whole, however long: one that never ended held a worker and
    took the server's memory as fast as the client sent digits (300 MB in half a second). Past
    1 KiB it is refused, before more is read."""
    answer = raw_request(client, b"POST / HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"1" * 2048)
    assert envelope_of(answer) == (400, {"code": 400, "message": "body: could not be read (ValueError)"})
    assert client.executor.list() == []


def test_a_chunked_body_of_framing_is_bounded_as_it_arrives(make_server):
    """The request intake counted a chunked body's data against --max_body, not its framing:
    1-byte chunks with 1 KB extensions made it keep a thousand times --max_body (300 MB from one
    client in two seconds). Past 8 x --max_body on the wire it is refused as too large."""
    client = make_server(settings=HttpSettings(max_body=4096))
    chunks = (b"1;" + b"x" * 1000 + b"\r\nA\r\n") * 40  # 40 data bytes in 40 KB
    answer = raw_request(client, b"POST / HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + chunks)
    assert envelope_of(answer) == (413, {"code": 413, "message": "request body too large, the limit is 4096 bytes"})
    assert client.executor.list() == []


def test_a_chunked_body_in_small_chunks_is_still_read_whole(client: Client):
    """The bound on a chunked body counts its framing: a body well under --max_body sent in
    one-byte chunks is not refused for it."""
    body = json.dumps([sh("echo " + "x" * 2000)]).encode()
    chunks = b"".join(b"1\r\n" + body[i : i + 1] + b"\r\n" for i in range(len(body)))
    answer = raw_request(client, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                      + chunks + b"0\r\n\r\n")
    status, reply = envelope_of(answer)
    assert status == 200, answer
    assert client.wait(reply["data"]["id"]).json["data"][0]["message"] == "x" * 2000 + "\n"


# -- the head --------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [(b"Content-Length: %d", b"Transfer-Encoding: chunked"),
                                   (b"Transfer-Encoding: chunked", b"Content-Length: %d")])
def test_a_length_and_chunks_together_are_refused_at_once(client: Client, order: tuple[bytes, bytes]):
    """The request intake read what followed such a head as chunks, until its deadline (a 408 ten
    seconds later): behind a proxy that went by the length, those bytes are the next request, maybe
    another client's. The head alone says the framing is ambiguous: 400 now, nothing read."""
    body = json.dumps([sh("echo hi")]).encode()
    head = b"POST / HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\n" + b"\r\n".join(order) % len(body) + b"\r\n\r\n"
    status, reply = envelope_of(answered_while_open(client, head + body))
    assert status == 400 and "Content-Length" in reply["message"] and "Transfer-Encoding" in reply["message"], reply
    assert client.executor.list() == []


@pytest.mark.parametrize("head", [b"GET /version HTTP/1.1\nHost: x\n\n", b"GET /version HTTP/1.1\r\nHost: x\n\n"])
def test_a_head_of_bare_line_feeds_is_refused_at_once(client: Client, head: bytes):
    """The request intake waited for a CRLF CRLF that such a head never has: a 408 ten seconds
    later, for a request cheroot refuses as soon as it reads it."""
    assert envelope_of(answered_while_open(client, head)) == (400, {"code": 400, "message": "HTTP 请求格式错误: 每行须以 CRLF (\\r\\n) 结尾"})


@pytest.mark.parametrize("line", [b"X-Note: a\x00b", b"X-\x00Note: ab", b"X-Note: a\rContent-Length: 5"])
def test_a_nul_or_bare_cr_in_a_header_is_refused(client: Client, line: bytes, tmp_path):
    """RFC 9110 5.5: reject or replace. cheroot kept them in the value; a proxy in front may end a
    line at the bare CR and read what follows as a header of its own (here a length)."""
    mark = tmp_path / "ran"
    body = json.dumps([sh(f"touch {mark}")]).encode()
    answer = raw_request(client, b"POST / HTTP/1.1\r\nHost: x\r\nAccept-Language: en\r\n" + line
                      + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    status, reply = envelope_of(answer)
    assert status == 400, answer
    assert reply == {"code": 400, "message": "malformed HTTP request: a NUL or a bare CR in a header line"}
    assert client.executor.list() == [] and not mark.exists()


def test_the_dashboard_redirect_does_not_follow_the_host_header(make_server):
    """Bottle's redirect() built an absolute Location from Host (or X-Forwarded-Host): any client,
    without the token, got a cacheable 301 to a host of its choosing."""
    client = make_server(settings=HttpSettings(token="redirect-secret"))
    for forged in (b"Host: evil.example", b"Host: 127.0.0.1\r\nX-Forwarded-Host: evil.example"):
        answer = raw_request(client, b"GET /ui HTTP/1.1\r\n" + forged + b"\r\nConnection: close\r\n\r\n")
        head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
        assert head.startswith("HTTP/1.1 301 ") and "\r\nLocation: /ui/\r\n" in head, head


# -- what the server writes --------------------------------------------------------------------


def test_the_audit_log_keeps_one_entry_per_line_whatever_the_path(client: Client, caplog):
    """A path's NEL (%C2%85) or LINE SEPARATOR (%E2%80%A8) went into the entry raw: Python's
    splitlines() (and other readers) broke the entry there."""
    caplog.set_level(logging.INFO, logger="osreapi.audit")
    client.request("PUT", "/x%C2%85y/z%E2%80%A8w?action=kill")
    lines = [line for r in caplog.records if r.name == "osreapi.audit" for line in r.getMessage().splitlines()]
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert (entry["method"], entry["status"]) == ("PUT", 404)
    assert (entry["path"], entry["task_id"]) == ("/x\x85y/z\u2028w", "x\x85y")


def test_the_token_from_the_environment_is_not_handed_to_the_steps(start_server, monkeypatch):
    """Every step inherits the server's environment: `env` in a script printed OSREAPI_TOKEN into
    the step's answer and its log file."""
    monkeypatch.setenv("OSREAPI_TOKEN", "env-secret-4711")
    server = start_server()
    auth = {"Authorization": "Bearer env-secret-4711"}
    resp = server.client.post("/?id=envdump", [sh("env; echo done")], headers=auth)
    assert resp.status == 200, resp.body
    assert wait_until(lambda: server.client.get("/envdump", headers=auth).json["code"] != 1001)
    output = server.client.get("/envdump", headers=auth).json["data"][0]["message"]
    assert "OSREAPI_TASK_ID=envdump" in output and output.endswith("done\n")  # env did print
    assert "env-secret-4711" not in output
    logs = list((server.data_dir / "workspace" / "envdump").rglob("*.log"))
    assert logs and all(b"env-secret-4711" not in log.read_bytes() for log in logs)


def test_a_data_dir_the_server_creates_is_private_to_its_user(start_server, tmp_path):
    """It holds every step's script, env values and output: created 0755 (umask 022), any local
    user could read them."""
    data_dir = tmp_path / "fresh"
    old = os.umask(0o022)
    try:
        server = start_server(data_dir=data_dir)
    finally:
        os.umask(old)
    assert server.client.get("/healthz").status == 200
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert server.terminate() == 0
    assert "open to every local user" not in server.log.read_text()


def test_a_data_dir_open_to_every_user_is_said_at_start(start_server, tmp_path):
    """An existing data dir keeps its mode (one made before this release is 0755): the server says
    so, with the command that closes it."""
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    server = start_server(data_dir=data_dir)
    assert server.terminate() == 0
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755  # not changed behind the user's back
    assert f"data dir {data_dir} is open to every local user (mode 0755)" in server.log.read_text()
    assert f"chmod o-rwx {data_dir}" in server.log.read_text()


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "reason"), [
    ("file", "printable ASCII only"), ("flag", "printable ASCII only"),
    ("env", "printable ASCII only"), ("latin-1 file", "not UTF-8 text")])
def test_a_token_no_client_can_send_stops_the_start_with_a_message(tmp_path, monkeypatch, source: str, reason: str):
    """A token beyond printable ASCII was taken, and never matched: a header carries bytes, and
    `pässwort` sent in UTF-8 arrived as other characters (401 for ever); a token file that is not
    UTF-8 stopped the start with a traceback."""
    token_file = tmp_path / "token"
    token_file.write_bytes("pässwort\n".encode("latin-1" if source == "latin-1 file" else "utf-8"))
    token_file.chmod(0o600)
    args = {"flag": ["--token", "pässwort"], "env": []}.get(source, ["--token_file", str(token_file)])
    if source == "env":
        monkeypatch.setenv("OSREAPI_TOKEN", "pässwort")
    run = subprocess.run([console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(tmp_path / "d"), *args],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 2, run.stderr
    assert reason in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_long_accept_language_values_are_read_not_kept(make_server):
    """The language of each answer was cached by the Accept-Language value, however long, and
    asked before any token is checked: 256 clients without the token each sending a 50 KB value
    made the server keep 12 MB; a longer value is now read each time instead."""
    client = make_server(settings=HttpSettings(token="t0k"))
    tracemalloc.start()  # what Python objects hold
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for number in range(256):
            resp = client.get("/version", headers={"Accept-Language": f"x{number}-{'y' * 50_000},en"})
            assert resp.status == 401 and resp.json["message"].startswith("missing or wrong token"), resp.body[:200]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 * 2**20, f"{held / 2**20:.1f} MiB more held after 256 long Accept-Language values"


# -- metrics -----------------------------------------------------------------------------------


def test_made_up_methods_do_not_grow_the_metrics(client: Client):
    """Each method name became a series of its own on /metrics, kept for the server's life: a
    client sending made-up methods grew the server's memory and every scrape without bound."""
    for number in range(40):
        answer = raw_request(client, b"X%05dLONGMETHODNAME /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % number)
        assert answer.startswith(b"HTTP/1.1 405 "), answer
    series = [line for line in client.get("/metrics").body.decode().splitlines()
              if line.startswith("osreapi_http_requests_total{") and 'status="405"' in line]
    assert series == ['osreapi_http_requests_total{method="OTHER",route="unmatched",status="405"} 40.0'], series


# -- browsers: another site's page, DNS rebinding ------------------------------------------------


class AttackerSite:
    """A web site of its own origin (another port on loopback) whose page posts steps to the API."""

    def __init__(self, page: bytes) -> None:
        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Page)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_a_page_of_another_site_cannot_run_commands_through_the_browser(client: Client, tmp_path):
    """Without a token, loopback clients are served, and the host's browser is one: any page it
    opened could POST steps to the API (a "simple" request goes without asking; CORS only hides
    the answer) and they ran. The page's own dashboard still submits (the same origin)."""
    mark = tmp_path / "ran"
    steps = json.dumps([sh(f"touch {mark}")])
    target, body = json.dumps(client.url + "/?lang=en"), json.dumps(steps)
    site = AttackerSite((f"<!doctype html><script>fetch({target}, {{method: 'POST', mode: 'no-cors', body: {body}}})"
                         ".then(() => document.title = 'sent', e => document.title = 'failed ' + e);</script>").encode())
    driver = launch()
    try:
        driver.get(site.url)
        assert wait_until(lambda: driver.title in ("sent",) or driver.title.startswith("failed"), timeout=15)
        assert driver.title == "sent"  # the browser sent it: the server is what refuses
        driver.get(client.url + "/ui/")  # the dashboard's own form, same origin
        form_steps = json.dumps([sh("echo from-the-page")])
        answer = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/', {method: 'POST', body: arguments[0]}).then(r => r.json()).then(done, e => done(String(e)));",
            form_steps)
    finally:
        driver.quit()
        site.close()
    assert answer["code"] == 0, answer
    assert [task.id for task in client.executor.list()] == [answer["data"]["id"]] and not mark.exists()


@pytest.mark.parametrize(("headers", "refused"), [
    (b"", False),  # curl, scripts: no browser headers
    (b"Sec-Fetch-Site: same-origin\r\n", False),  # the dashboard
    (b"Sec-Fetch-Site: none\r\n", False),  # typed by the user
    (b"Origin: http://127.0.0.1:{port}\r\n", False),  # an older browser, the same origin
    (b"Sec-Fetch-Site: cross-site\r\nOrigin: https://evil.example\r\n", True),
    (b"Sec-Fetch-Site: same-site\r\nOrigin: http://localhost:1\r\n", True),  # another server on this host
    (b"Origin: https://evil.example\r\n", True),  # an older browser
    (b"Origin: null\r\n", True),  # a sandboxed frame, a file:// page
])
def test_a_change_sent_by_another_sites_page_is_refused(make_server, tmp_path, headers: bytes, refused: bool):
    for settings in (HttpSettings(), HttpSettings(token="t0k")):  # with a token too: one guard for both
        client = make_server(settings=settings, data_dir=tmp_path / str(settings.token))
        body = json.dumps([sh("echo hi")]).encode()
        answer = raw_request(client, b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept-Language: en\r\nAuthorization: Bearer t0k\r\n"
                          b"Connection: close\r\n%sContent-Length: %d\r\n\r\n%s"
                          % (client.port, headers.replace(b"{port}", b"%d" % client.port), len(body), body))
        status, reply = envelope_of(answer)
        if refused:
            assert status == 403, answer
            assert reply["message"].startswith("cross-origin request refused: a page from another site cannot drive this API")
            assert client.executor.list() == []
        else:
            assert status == 200, answer
    assert client.get("/", headers={"Origin": "https://evil.example", "Authorization": "Bearer t0k"}).status == 200  # reads stay


@pytest.mark.parametrize(("host", "refused"), [
    ("evil.example", True), ("evil.example:2376", True), ("1.2.3.4.nip.io", True),
    ("127.0.0.1:2376", False), ("[::1]:2376", False), ("localhost:2376", False), ("app.localhost", False),
    ("myhost", False),  # the host's own name, from /etc/hosts
    ("x" * 300, True),  # longer than any DNS name: refused, and not cached
])
def test_a_host_name_dns_could_rebind_is_refused_without_a_token(make_server, tmp_path, host: str, refused: bool):
    """A page of evil.example whose name is made to resolve to 127.0.0.1 talks to the server as its
    own origin, from a loopback client: without a token it read every answer and ran commands."""
    client = make_server()
    answer = raw_request(client, b"GET /version HTTP/1.1\r\nHost: %s\r\nAccept-Language: en\r\nConnection: close\r\n\r\n" % host.encode())
    status, reply = envelope_of(answer)
    if refused:
        assert status == 403, answer
        assert reply["message"].startswith(f"Host {host[:100]!r} does not name this host"), reply
    else:
        assert status == 200, answer
    with_token = make_server(settings=HttpSettings(token="t0k"), data_dir=tmp_path / "token")  # what rebinding cannot have
    answer = raw_request(with_token, b"GET /version HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer t0k\r\nConnection: close\r\n\r\n" % host.encode())
    assert answer.startswith(b"HTTP/1.1 200 "), answer


@pytest.mark.parametrize("header", [b"X-Forwarded-For: 203.0.113.9", b"Forwarded: for=203.0.113.9;proto=https",
                                    b"X-Real-IP: 203.0.113.9", b"Via: 1.1 caddy"])
def test_a_request_a_proxy_passed_on_needs_a_token(make_server, tmp_path, header: bytes):
    """A reverse proxy on this host (a TLS front) connects from loopback whoever its client is:
    without a token, every client it served was taken for a local one and could run commands."""
    mark = tmp_path / "ran"
    body = json.dumps([sh(f"touch {mark}")]).encode()
    request = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Language: en\r\nAuthorization: Bearer t0k\r\n%s\r\n"
               b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (header, len(body), body))
    client = make_server(data_dir=tmp_path / "open")
    status, reply = envelope_of(raw_request(client, request))
    assert status == 403, reply
    name = header.split(b":")[0].decode()
    assert reply["message"] == (f"this request came through a proxy ({name}): without a token only clients on this host "
                                "are served; set a token to serve through a proxy")
    assert client.executor.list() == [] and not mark.exists()
    with_token = make_server(settings=HttpSettings(token="t0k"), data_dir=tmp_path / "token")
    status, reply = envelope_of(raw_request(with_token, request))
    assert status == 200, reply


@pytest.mark.slow
def test_names_outputs_and_env_values_with_markup_show_as_text_in_the_dashboard(client: Client):
    """Steps named, printing and carrying markup: the list, the task view, its DAG and the log
    show the characters, and nothing of them runs."""
    img = '<img src=x onerror="window.pwned=1">'
    steps = [sh("echo '<script>window.pwned=2</script>'; echo \"$V\"", name="a" + img, env_vars={"V": img}),
             sh("echo b", name="b\"'><svg onload=window.pwned=3>", depends_on=["a" + img])]
    resp = client.post("/?id=markup", steps)
    assert resp.status == 200, resp.body
    client.wait("markup")
    driver = launch()
    try:
        driver.get(client.url + "/ui/")
        assert wait_until(lambda: "markup" in driver.execute_script("return document.body.innerText"), timeout=15)
        driver.get(client.url + "/ui/tasks/markup")
        shown = lambda: driver.execute_script("return document.querySelector('#log')?.textContent ?? ''")
        assert wait_until(lambda: img in shown(), timeout=15), shown()
        log_text, page = shown(), driver.execute_script("return document.body.innerText")
        dag = driver.execute_script("return document.querySelector('#dag')?.textContent ?? ''")
        counted = driver.execute_script("return document.querySelectorAll('img, script:not([src]), svg svg').length")
        pwned = driver.execute_script("return window.pwned ?? null")
    finally:
        driver.quit()
    assert "<script>window.pwned=2</script>\n" + img + "\n" in log_text
    assert "a" + img in page and "b\"'><svg onload=window.pwned=3>" in page
    assert "a<img src=x onerror" in dag  # the DAG's labels, cut to fit, as text
    assert counted == 0 and pwned is None


def start_refused(data_dir) -> str:
    """`osreapi run` on data_dir: it must stop at once (status 1) with one message; that message."""
    run = subprocess.run([console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(data_dir)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    return run.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user takes root")
def test_a_data_dir_of_another_user_stops_the_start(tmp_path):
    """Someone else who made the data dir first (`--data_dir /tmp/x`) owns it: a link they put for
    `workspace` sent the server's scripts and outputs where they chose, written as the server's
    user (root here)."""
    data_dir, elsewhere = tmp_path / "taken", tmp_path / "elsewhere"
    data_dir.mkdir(mode=0o755)
    elsewhere.mkdir()
    (data_dir / "workspace").symlink_to(elsewhere)
    os.chown(data_dir, 65534, 65534)  # nobody
    assert f"{data_dir} belongs to another user (uid 65534)" in start_refused(data_dir)
    assert list(elsewhere.iterdir()) == []  # nothing written there


def test_a_data_dir_every_user_may_write_in_stops_the_start(tmp_path):
    """Anyone may put the same link in a data dir every user may write in."""
    data_dir = tmp_path / "open"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    message = start_refused(data_dir)
    assert f"every local user may write in {data_dir} (mode 0777)" in message and f"chmod o-w {data_dir}" in message
    assert list(data_dir.iterdir()) == []


def test_workspaces_scripts_and_logs_are_private_whatever_the_umask(make_executor, tmp_path):
    """Under umask 000 the workspace folders were 0777 and the scripts 0666: any local user could
    rewrite a script before it ran (as the engine's user). Their modes no longer depend on the umask."""
    old = os.umask(0)
    try:
        ex = make_executor(tmp_path / "data")
        task_id = ex.submit([sh("echo hi")])
        assert ex.wait(task_id, timeout=10).steps[0].output == "hi\n"
    finally:
        os.umask(old)
    workspace = tmp_path / "data" / "workspace" / task_id
    modes = {path.name: stat.S_IMODE(path.stat().st_mode)
             for path in (tmp_path / "data", tmp_path / "data" / "workspace", workspace, *workspace.rglob("*"))}
    assert modes == {"data": 0o700, "workspace": 0o700, task_id: 0o700, ".osreapi": 0o700,
                     "step-0.sh": 0o600, "step-0.log": 0o600}, modes


def test_an_embedded_engine_refuses_a_data_dir_another_user_controls(tmp_path):
    """The server refused such a data dir, but an embedded Executor took it: the check is the
    engine's own now, as the lock is."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(DataDirUnsafe, match=r"every local user may write in .* \(mode 0777\)"):
        Executor(open_dir)
    assert list(open_dir.iterdir()) == []
    if os.geteuid() == 0:
        taken = tmp_path / "taken"
        taken.mkdir()
        os.chown(taken, 65534, 65534)
        with pytest.raises(DataDirUnsafe, match="belongs to another user"):
            Executor(taken)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user takes root")
def test_a_data_dir_inside_a_directory_another_user_controls_stops_the_start(tmp_path):
    """The data dir was checked, not the directories above it: under one of another user's (or one
    every user may write in, not sticky), the data dir was made the server's own and accepted, and
    that user then renamed it and put a link to a directory of theirs in its place: the server
    wrote its next workspaces, scripts and logs there (seen with a running server: the owner of
    /tmp/x moved /tmp/x/data away for a link to /tmp/x/evil, and the next step's script was in
    evil/workspace). Refused now, before anything is made in it."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)  # nobody
    assert f"{theirs} belongs to another user (uid 65534, a directory above the data dir)" in start_refused(theirs / "data")
    assert list(theirs.iterdir()) == []  # nothing made in it
    (theirs / "data").mkdir(mode=0o700)  # the server's own, made there before
    with pytest.raises(DataDirUnsafe, match="a directory above the data dir"):
        Executor(theirs / "data")
    open_to_all, sticky = tmp_path / "open", tmp_path / "sticky"
    for path, mode in ((open_to_all, 0o777), (sticky, 0o1777)):
        path.mkdir()
        path.chmod(mode)
    with pytest.raises(DataDirUnsafe, match=r"every local user may write in .*open \(mode 0777, a directory above"):
        Executor(open_to_all / "data")
    with Executor(sticky / "data") as ex:  # as /tmp: nobody else may rename what is the server's
        assert ex.wait(ex.submit([sh("echo hi")]), timeout=10).steps[0].output == "hi\n"
