"""Rough edges of the HTTP front and the data dir (issue 9, from hunt10 and review11): the Host
header, the audit log's token hint, task ids equal under case folding, a data dir under parents
owned by a user a user namespace does not map."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from osreapi.http.security import audit_key
from osreapi.storage.lock import unmapped_owner

from .conftest import Client, console_script, sh, wait_until


def _exchange(client: Client, data: bytes) -> tuple[bytes, dict]:
    """Send bytes as they are on one connection; the head and the JSON body of everything the server
    answers before it closes (bounded by the socket timeout)."""
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, json.loads(body) if body else {}


@pytest.mark.parametrize(
    ("lines", "lang", "said"),
    [
        (b"", "en", "missing Host header"),
        (b"", "zh", "缺少 Host 头"),
        (b"Host: 127.0.0.1\r\nHost: evil.example\r\n", "en", "Host header repeated"),
        (b"Host: 127.0.0.1\r\nHost: 127.0.0.1\r\n", "zh", "Host 头重复"),
    ],
)
def test_an_http11_request_without_one_host_is_refused(client: Client, lines: bytes, lang: str, said: str):
    """RFC 9112 3.2: an HTTP/1.1 request without Host, or with two Host lines, is 400. Two were taken
    (cheroot keeps the last): a proxy in front may route on the first while the checks here read the
    last. Refused whatever the route, /healthz too, before any body is read; nothing is run."""
    for path in (b"/version", b"/healthz"):
        head, body = _exchange(client, b"GET %s?lang=%s HTTP/1.1\r\n%sConnection: close\r\n\r\n" % (path, lang.encode(), lines))
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert body["code"] == 400 and said in body["message"], body
    post = b'POST /?lang=%s HTTP/1.1\r\n%sContent-Length: 2\r\nConnection: close\r\n\r\n[]' % (lang.encode(), lines)
    head, body = _exchange(client, post + b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and said in body["message"], (head, body)
    assert client.get("/").json["data"]["total"] == 0


def test_an_http10_request_needs_no_host(client: Client):
    head, body = _exchange(client, b"GET /version HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body["code"] == 0, (head, body)
    head, body = _exchange(client, b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body["code"] == 0, (head, body)


# -- the audit log's token hint ------------------------------------------------------------------


def _hint_logged(server, token: str) -> str:
    """Submit one task with the token; the identity of its audit line in the server's log."""
    resp = server.client.post("/", [sh("true")], headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, resp.body
    assert wait_until(lambda: bool(_audit_lines(server.log)), timeout=10), server.log.read_text()
    return _audit_lines(server.log)[-1]["identity"]


def _audit_lines(log: Path) -> list[dict]:
    return [json.loads(line[line.index("{"):]) for line in log.read_text().splitlines() if "osreapi.audit" in line and "{" in line]


def test_the_token_hint_is_keyed_by_the_data_dir_and_stable_across_restarts(start_server, tmp_path):
    """`token#` + 8 hex of SHA-256 let anyone who reads the audit log try every likely token offline.
    Keyed with a secret of the data dir's (0600), the hint still names one token across restarts."""
    token = "weak-password"
    first = start_server("--token", token)
    hint = _hint_logged(first, token)
    assert first.terminate() == 0
    key = tmp_path / "data" / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert hint != "token#" + hashlib.sha256(token.encode()).hexdigest()[:8]
    assert hint == "token#" + hmac.new(key.read_bytes(), token.encode(), hashlib.sha256).hexdigest()[:8]
    again = start_server("--token", token)
    assert _hint_logged(again, token) == hint
    other = start_server("--token", token, data_dir=tmp_path / "other")
    assert _hint_logged(other, token) != hint
    assert token not in first.log.read_text() + again.log.read_text() + other.log.read_text()


def test_racing_makers_of_the_audit_key_agree(tmp_path):
    """The key is written whole under another name and linked into place: whoever loses the race
    reads the winner's key, and no spare file is left behind."""
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: audit_key(tmp_path), range(32)))
    assert len(keys) == 1 and len(next(iter(keys))) == 32
    assert sorted(path.name for path in tmp_path.iterdir()) == ["audit.key"]


# -- a data dir under parents of users outside a user namespace ---------------------------------

UNMAPPED = 123456  # a uid no `unshare --map-root-user` namespace maps: shown there as the overflow uid


def _in_user_namespace(data_dir: Path, timeout: float = 30) -> tuple[int | None, str]:
    """Start the installed server in a new user namespace (this user as its root, every other uid
    unmapped) on data_dir: (None, its first line) once it listens, then stopped; else (its exit
    status, what it said)."""
    command = ["unshare", "--user", "--map-root-user", console_script(), "run", "--addr", "127.0.0.1:0",
               "--data_dir", str(data_dir)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        if "listening on" in line:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
            return None, line
        return proc.wait(timeout), line + proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout)
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture
def user_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to an unmapped uid takes root")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"unshare --user refused here: {probe.stderr.decode().strip()}")


def _dir_of(path: Path, uid: int, mode: int) -> Path:
    path.mkdir(mode=mode)
    path.chmod(mode)  # whatever the umask
    os.chown(path, uid, -1)
    return path


def test_a_parent_of_a_user_outside_the_namespace_is_trusted_as_root_is(tmp_path, user_namespace):
    """In a rootless container `/` and `/home` belong to users the namespace does not map, shown as
    uid 65534: the server refused every data dir there. Such a parent is trusted as root's is, unless
    its group or everyone may write in it; the data dir itself must still be the user's own."""
    outside = _dir_of(tmp_path / "outside", UNMAPPED, 0o755)
    data = outside / "data"
    data.mkdir(mode=0o700)  # the namespace's root cannot write in `outside`: made by its owner's side
    status, said = _in_user_namespace(data)
    assert status is None, said
    assert (data / "lock").exists() and (data / "audit.key").exists()

    group_writable = _dir_of(tmp_path / "shared", UNMAPPED, 0o775)
    (group_writable / "data").mkdir(mode=0o700)
    status, said = _in_user_namespace(group_writable / "data")
    assert status not in (None, 0) and f"every user of its group may write in {group_writable} (mode 0775" in said, said

    theirs = _dir_of(tmp_path / "theirs", UNMAPPED, 0o700)
    status, said = _in_user_namespace(theirs)
    assert status not in (None, 0) and f"{theirs} belongs to another user (uid 65534)" in said, said


def test_an_unmapped_owner_is_known_only_inside_a_namespace_that_lacks_it(tmp_path):
    """uid 65534 is trusted only where it cannot be a user of the namespace's own (nobody, in the
    initial namespace, is a real user whom the check must refuse)."""
    proc = tmp_path / "proc"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "self").mkdir()
    (proc / "sys/kernel/overflowuid").write_text("65534\n")
    (proc / "self/uid_map").write_text("         0          0 4294967295\n")
    assert unmapped_owner(proc) is None
    (proc / "self/uid_map").write_text("         0       1000          1\n         1     100000      65536\n")
    assert unmapped_owner(proc) is None  # 65534 is mapped (to 165533)
    (proc / "self/uid_map").write_text("         0       1000          1\n")
    assert unmapped_owner(proc) == 65534
