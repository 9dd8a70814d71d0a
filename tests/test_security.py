"""Secure by default: protected mode, tokens, TLS, no CORS, limits, audit log, malformed HTTP."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import subprocess

import pytest
import webtest

from osreapi import InvalidRequest
from osreapi.http.app import HttpSettings, make_app
from osreapi.spec import Limits

from .certs import make_pki
from .conftest import Client, console_script, hold_request, sh, wait_until

STEP = [{"command_type": "sh", "command_content": "echo hi"}]



# -- protected mode ------------------------------------------------------------------------


def test_protected_mode_refuses_non_loopback_clients(executor, tmp_path):
    app = webtest.TestApp(make_app(executor, HttpSettings()), extra_environ={"REMOTE_ADDR": "10.1.2.3"})
    mark = tmp_path / "ran"
    resp = app.post("/", json.dumps([sh(f"touch {mark}")]), status=403)
    assert resp.json["code"] == 403 and "--token" in resp.json["message"]
    assert app.get("/", status=403).json["code"] == 403
    assert "OSREAPI_TOKEN" in app.get("/?lang=en", status=403).json["message"]
    # A forwarded-for header does not make a remote client local: the socket peer decides.
    app.get("/", headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}, status=403)
    assert app.get("/healthz").json["code"] == 0  # health stays open for probes
    assert not mark.exists() and executor.list() == []


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_protected_mode_serves_loopback(executor, address):
    app = webtest.TestApp(make_app(executor, HttpSettings()), extra_environ={"REMOTE_ADDR": address})
    assert app.get("/").json["code"] == 0


def test_real_server_sees_the_socket_peer(client: Client):
    resp = client.get("/", headers={"X-Forwarded-For": "127.0.0.1"})
    assert resp.status == 403  # the header makes no client local, and it says a proxy passed the request on
    assert client.get("/").status == 200  # the peer is 127.0.0.1


# -- tokens ----------------------------------------------------------------------------------


def test_token_is_required_everywhere_but_healthz(make_server):
    client = make_server(settings=HttpSettings(token="s3cret-token"))
    for method, path in [("GET", "/"), ("GET", "/x"), ("POST", "/"), ("PUT", "/x?action=kill"), ("GET", "/x/0/log"),
                         ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/version")]:
        resp = client.request(method, path, body=json.dumps(STEP) if method == "POST" else None)
        assert resp.status == 401, (method, path)
        assert resp.header("WWW-Authenticate").startswith("Bearer")
        assert resp.json["code"] == 401
    wrong = client.get("/", headers={"Authorization": "Bearer s3cret-tokeN"})
    assert wrong.status == 401
    assert client.get("/", headers={"Authorization": "Basic s3cret-token"}).status == 401
    assert client.get("/healthz").status == 200
    auth = {"Authorization": "Bearer s3cret-token"}
    resp = client.post("/", STEP, headers=auth)
    assert resp.status == 200
    task_id = resp.json["data"]["id"]
    assert wait_until(lambda: client.get(f"/{task_id}", headers=auth).json["code"] == 0)
    assert b"s3cret-token" not in client.get(f"/{task_id}", headers=auth).body


def test_token_applies_to_remote_clients_too(executor):
    app = webtest.TestApp(make_app(executor, HttpSettings(token="tok")), extra_environ={"REMOTE_ADDR": "10.1.2.3"})
    app.get("/", status=401)
    assert app.get("/", headers={"Authorization": "Bearer tok"}).json["code"] == 0


@pytest.mark.timeout(60)
def test_console_server_token_sources_and_no_token_in_logs(start_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-123\n")
    token_file.chmod(0o644)
    refused = subprocess.run([console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(tmp_path / "d"),
                              "--token_file", str(token_file)], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "world-readable" in refused.stderr
    token_file.chmod(0o600)
    server = start_server("--token_file", str(token_file), "--debug", data_dir=tmp_path / "d")
    client = server.client
    assert client.get("/").status == 401
    assert client.get("/", headers={"Authorization": "Bearer file-token-123"}).status == 200
    assert client.post("/", STEP, headers={"Authorization": "Bearer file-token-123"}).status == 200
    assert client.post("/", STEP, headers={"Authorization": "Bearer guess"}).status == 401
    assert server.terminate() == 0
    assert "file-token-123" not in server.log.read_text()

    env_server = subprocess.Popen(
        [console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(tmp_path / "e")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "OSREAPI_TOKEN": "env-token"},
    )
    try:
        url = env_server.stdout.readline().decode().split("listening on ")[1].split()[0]
        env_client = Client(url)
        assert env_client.get("/").status == 401
        assert env_client.get("/", headers={"Authorization": "Bearer env-token"}).status == 200
    finally:
        env_server.terminate()
        env_server.wait(30)
        env_server.stdout.close()


# -- TLS -------------------------------------------------------------------------------------


def https_get(url: str, context: ssl.SSLContext, path: str = "/") -> int:
    host, port = url.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_tls_and_mutual_tls(start_server, tmp_path):
    pki = make_pki(tmp_path)
    server = start_server("--tls_cert", str(pki["server"].cert), "--tls_key", str(pki["server"].key), data_dir=tmp_path / "a")
    assert server.url.startswith("https://")
    trusting = ssl.create_default_context(cafile=str(pki["ca"].cert))
    assert https_get(server.url, trusting) == 200
    old = ssl.create_default_context(cafile=str(pki["ca"].cert))
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(server.url, old)
    assert https_get(server.url, trusting, "/healthz") == 200  # still serving after a refused handshake
    assert server.terminate() == 0

    mutual = start_server("--tls_cert", str(pki["server"].cert), "--tls_key", str(pki["server"].key),
                          "--tls_client_ca", str(pki["ca"].cert), data_dir=tmp_path / "b")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(mutual.url, trusting)
    with_cert = ssl.create_default_context(cafile=str(pki["ca"].cert))
    with_cert.load_cert_chain(str(pki["client"].cert), str(pki["client"].key))
    assert https_get(mutual.url, with_cert) == 200
    assert mutual.terminate() == 0


def mapped_libraries(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {os.path.basename(line.split()[5]) for line in maps if len(line.split()) > 5}


@pytest.mark.timeout(60)
def test_without_tls_the_server_never_loads_openssl(start_server, tmp_path):
    """OpenSSL is ~4 MB of an idle server: left out without TLS. The token check (hmac, sha256),
    a task and the metrics page work without it."""
    token = tmp_path / "token"
    token.write_text("s3cret-token-for-the-test")
    token.chmod(0o600)
    server = start_server("--token_file", str(token))
    auth = {"Authorization": "Bearer s3cret-token-for-the-test"}
    assert server.client.get("/", headers={"Authorization": "Bearer wrong"}).status == 401
    resp = server.client.request("POST", "/", json.dumps([sh("echo hi")]), headers=auth)
    task_id = resp.json["data"]["id"]
    wait_until(lambda: server.client.get(f"/{task_id}", headers=auth).json["code"] == 0, 20)
    assert server.client.get("/metrics", headers=auth).status == 200
    openssl = ("libssl", "libcrypto", "_ssl", "_hashlib")
    assert not [name for name in mapped_libraries(server.proc.pid) if name.startswith(openssl)]


def test_tls_flags_must_come_together(tmp_path):
    out = subprocess.run([console_script(), "run", "--tls_cert", "x.pem", "--data_dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "--tls_key" in out.stderr


def test_a_tls_file_that_is_missing_or_wrong_is_named_with_its_flag(tmp_path):
    """The server said only "cannot serve on 127.0.0.1:0: [Errno 2] No such file or directory" or
    "[SSL] PEM lib": which flag, which file?"""
    pki = make_pki(tmp_path)
    cert, key, missing = str(pki["server"].cert), str(pki["server"].key), str(tmp_path / "missing.pem")
    cases = [
        (["--tls_cert", missing, "--tls_key", key], f"--tls_cert: cannot read {missing}"),
        (["--tls_cert", cert, "--tls_key", missing], f"--tls_key: cannot read {missing}"),
        (["--tls_cert", key, "--tls_key", cert], f"--tls_cert / --tls_key: {key} and {cert} are not"),
        (["--tls_cert", cert, "--tls_key", key, "--tls_client_ca", key], f"--tls_client_ca: {key} holds no PEM certificate"),
    ]
    for flags, says in cases:
        out = subprocess.run([console_script(), "run", "--addr", "127.0.0.1:0", *flags, "--data_dir", str(tmp_path / "data")],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"osreapi: error: {says}") and len(out.stderr.splitlines()) == 1


# -- CORS, limits, paths ---------------------------------------------------------------------


def test_no_cors_headers_anywhere(client: Client):
    origin = {"Origin": "https://evil.example"}
    task_id = client.submit(STEP)
    for method, path in [("GET", "/"), ("GET", f"/{task_id}"), ("OPTIONS", "/"), ("GET", f"/{task_id}/0/log"), ("GET", "/metrics")]:
        resp = client.request(method, path, headers=origin)
        assert not any(k.lower().startswith("access-control-") for k in resp.headers), (method, path)
    assert client.request("OPTIONS", "/", headers={**origin, "Access-Control-Request-Method": "POST"}).status == 405


def test_limits_answer_400_and_run_nothing(make_server, tmp_path):
    client = make_server(limits=Limits(max_steps=3, max_script_bytes=100, max_env_vars=2, max_env_bytes=50))
    mark = tmp_path / "m"
    cases = [
        ([sh(f"touch {mark}")] * 4, "too many steps (4), the limit is 3"),
        ([sh(f"touch {mark}; " + "#" * 100)], "command_content is larger than 100 bytes"),
        ([sh(f"touch {mark}", env_vars=["A=1", "B=2", "C=3"])], "env_vars has 3 entries"),
        ([sh(f"touch {mark}", env_vars=["A=" + "x" * 60])], "env_vars are larger than 50 bytes"),
        ([sh(f"touch {mark}", name="n" * 129)], "name must be"),
        ([sh(f"touch {mark}", env_vars=["A=\ud800"])], "not valid Unicode"),
        ([sh(f"touch {mark}\ud800")], "not valid Unicode"),
    ]
    for steps, expected in cases:
        resp = client.post("/?lang=en", json.dumps(steps))
        assert resp.status == 400 and expected in resp.json["message"], (expected, resp.json)
    assert not mark.exists() and client.get("/").json["data"]["total"] == 0


def test_paths_from_ids_never_leave_the_data_dir(executor):
    for bad in ["../x", "..", "/etc", "a/../../b", "a\x00b", "%2e%2e", "ok\n"]:
        with pytest.raises(InvalidRequest):
            executor.submit(STEP, task_id=bad)
        with pytest.raises(ValueError):
            executor.config.workspace(bad)
    assert executor.config.workspace("ok-1").parent == executor.config.workspace_root.resolve()


# -- audit log ---------------------------------------------------------------------------------


def test_audit_log_one_line_per_mutating_request(make_server, caplog):
    client = make_server(settings=HttpSettings(token="audit-secret"))
    auth = {"Authorization": "Bearer audit-secret"}
    caplog.set_level(logging.INFO, logger="osreapi.audit")
    task_id = client.post("/", [sh("sleep 5"), sh("true")], headers=auth).json["data"]["id"]
    client.request("PUT", f"/{task_id}?action=kill", headers=auth)
    client.post("/", STEP)  # refused
    client.get("/", headers=auth)  # not mutating: not audited
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "osreapi.audit"]
    assert len(records) == 3
    submit, kill, refused = records
    assert submit["route"] == "/" and submit["method"] == "POST" and submit["task_id"] == task_id
    assert submit["steps"] == 2 and submit["status"] == 200 and submit["client"] == "127.0.0.1"
    assert submit["identity"].startswith("token#")
    assert kill["task_id"] == task_id and kill["status"] == 200 and kill["route"] == "/<task_id>"
    assert refused["status"] == 401 and refused["identity"] == "anonymous"
    assert "audit-secret" not in caplog.text


# -- malformed HTTP ------------------------------------------------------------------------------


def raw(client: Client, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        try:
            sock.sendall(data)
            if not read:
                return b""
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server may answer and close before we finish sending
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.timeout(60)
def test_server_survives_malformed_http(client: Client):
    answers = [
        raw(client, b"GARBAGE\r\n\r\n"),
        raw(client, b"GET / HTTP/9.9\r\n\r\n"),
        raw(client, b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        raw(client, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200000 + b"\r\n\r\n"),
        raw(client, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{\"comm", read=True),
        raw(client, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n[]"),
        raw(client, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        raw(client, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(100)),  # a TLS hello on plain HTTP
    ]
    for answer in answers:
        assert answer == b"" or answer.startswith(b"HTTP/1.")
        assert not answer.startswith(b"HTTP/1.1 200")
    for _ in range(5):
        raw(client, os.urandom(512), read=False)
    assert client.get("/").status == 200
    assert client.post("/", STEP).status == 200
    assert client.get("/").json["data"]["total"] == 1


@pytest.mark.timeout(60)
def test_start_up_log_warns_when_listening_beyond_loopback_without_token(start_server, tmp_path):
    # Bound to every interface for a moment; the test itself only talks to 127.0.0.1.
    open_server = subprocess.Popen(
        [console_script(), "run", "--addr", "0.0.0.0:0", "--data_dir", str(tmp_path / "w")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        assert "listening on" in open_server.stdout.readline().decode()
    finally:
        open_server.terminate()
        _, err = open_server.communicate(timeout=30)
    assert "without a token" in err.decode() and "loopback" in err.decode()
    local = start_server(data_dir=tmp_path / "l")
    assert local.terminate() == 0
    assert "without a token" not in local.log.read_text()


@pytest.mark.timeout(30)
def test_a_slow_client_is_dropped_and_does_not_hold_a_worker(make_server):
    client = make_server(settings=HttpSettings(max_requests=1), client_timeout=1.0, read_timeout=1.0)
    slow = socket.create_connection((client.host, client.port), timeout=10)
    try:
        slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[")
        assert client.get("/").status == 200  # the half-sent request holds no slot and no worker...
        answer = b""
        while chunk := slow.recv(4096):  # ...and is answered 408 once its time is up, then closed
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":408' in answer
    finally:
        slow.close()
    reader = hold_request(client)  # a client that does not read its answer holds the slot...
    try:
        assert wait_until(lambda: client.get("/").status == 200, timeout=5)  # ...until the server gives up on it
        received = 0
        while chunk := reader.recv(1 << 20):
            received += len(chunk)
        assert received < 32_000_000  # cut short: the connection was dropped
    finally:
        reader.close()


def test_a_token_on_the_command_line_is_warned_about(start_server, tmp_path):
    """--token shows in every local user's `ps`: the start says so (the token itself never)."""
    server = start_server("--token", "cli-token-1", data_dir=tmp_path / "d")
    assert server.terminate() == 0
    log = server.log.read_text()
    assert "--token is visible to every local user in the process list" in log and "cli-token-1" not in log
    quiet = start_server(data_dir=tmp_path / "q")
    assert quiet.terminate() == 0
    assert "process list" not in quiet.log.read_text()
