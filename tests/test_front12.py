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
import sys
from collections.abc import Iterator
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
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], check=False, capture_output=True, timeout=30)
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

    sticky = _dir_of(tmp_path / "tmp", UNMAPPED, 0o1777)  # a container's /tmp: the host root's
    status, said = _in_user_namespace(sticky / "data")  # made by the server: others cannot move it
    assert status is None, said

    for name, mode, said_first in (("shared", 0o775, "every user of its group"), ("open", 0o777, "every local user")):
        loose = _dir_of(tmp_path / name, UNMAPPED, mode)
        (loose / "data").mkdir(mode=0o700)
        status, said = _in_user_namespace(loose / "data")
        assert status not in (None, 0) and f"{said_first} may write in {loose} (mode {mode:04o}" in said, said

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


# -- task ids equal under case folding -----------------------------------------------------------


@pytest.fixture
def case_folding_dir(tmp_path) -> Iterator[Path]:
    """An empty workspace root (`<data_dir>/workspace`) that folds case, the data dir 0700."""
    yield from _case_folding_root(tmp_path)


@pytest.fixture
def cramped_case_folding_dir(tmp_path) -> Iterator[Path]:
    """The same on a file system of 24 inodes: room for a few workspaces only."""
    yield from _case_folding_root(tmp_path, inodes=24)


def _case_folding_root(tmp_path: Path, inodes: int | None = None) -> Iterator[Path]:
    """On a tmpfs mounted with casefold (ext4's and tmpfs' casefold is an attribute of each
    directory, `chattr +F`, set while it is empty); where the kernel has no casefold (built without
    CONFIG_UNICODE), the root is a FUSE mount that looks names up regardless of case
    (tests/casefs.py). Unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system takes root")
    limit = f",nr_inodes={inodes}" if inodes else ""
    mount = tmp_path / "casefold"
    mount.mkdir(mode=0o700)
    mounted = _mount_tmpfs(mount, f"casefold,mode=0700{limit}")
    if mounted.returncode == 0:
        try:
            folding = mount / "workspace"
            folding.mkdir(mode=0o700)
            subprocess.run(["chattr", "+F", str(folding)], check=True, capture_output=True, timeout=30)
            yield folding
        finally:
            subprocess.run(["umount", "--lazy", str(mount)], check=True, timeout=30)
        return
    backing = tmp_path / "backing"
    backing.mkdir(mode=0o700)
    if inodes and _mount_tmpfs(backing, f"mode=0700{limit}").returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield from _fuse_case_folding(tmp_path / "data", backing, reason=mounted.stderr.strip())
    finally:
        if inodes:
            subprocess.run(["umount", "--lazy", str(backing)], check=True, timeout=30)


def _mount_tmpfs(where: Path, options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          check=False, capture_output=True, text=True, timeout=30)


def _fuse_case_folding(data: Path, backing: Path, reason: str) -> Iterator[Path]:
    try:
        import fuse  # noqa: F401 - fusepy: raises OSError without libfuse.so.2
    except (ImportError, OSError) as exc:
        pytest.skip(f"no casefold tmpfs ({reason}) and no FUSE library for a FUSE one ({exc})")
    if not os.path.exists("/dev/fuse"):
        pytest.skip(f"no casefold tmpfs ({reason}) and no /dev/fuse")
    folding = data / "workspace"
    folding.mkdir(parents=True, mode=0o700)
    data.chmod(0o700)
    yield from serve_case_folding(backing, folding, f"no casefold tmpfs ({reason}) and ")


def serve_case_folding(backing: Path, mount: Path, why: str = "") -> Iterator[Path]:
    """backing served at mount by tests/casefs.py (names looked up without regard to case) until
    the generator is closed; skipped, saying why, if FUSE refuses."""
    served = subprocess.Popen([sys.executable, "-m", "tests.casefs", str(backing), str(mount)],
                              cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE)
    try:
        if not wait_until(lambda: os.path.ismount(mount) or served.poll() is not None, timeout=10) or served.poll() is not None:
            pytest.skip(f"{why}FUSE refused: {served.stderr.read().decode().strip()}")
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False, capture_output=True, timeout=30)
        served.wait(30)
        served.stderr.close()


def test_ids_equal_under_case_folding_never_share_a_workspace(start_server, case_folding_dir):
    """On a workspace root that folds case, `Build-1` and `BUILD-1` were two tasks in one directory:
    the second ran in the first's workspace and its expiry deleted it. The second is refused with
    409 naming the first, nothing run, nothing stored; the first posted again is still the first."""
    server = start_server("--pool_size", "1", data_dir=case_folding_dir.parent)
    client = server.client
    first = [sh("echo one > made-by-first")]
    assert client.post("/?id=Build-1", first).json["data"]["id"] == "Build-1"
    assert client.wait("Build-1").json["code"] == 0
    for body in (first, [sh("echo two > made-by-second")]):
        for lang, said in (("en", "differs from task Build-1 only in case"), ("zh", "与已有任务 Build-1 只有大小写不同")):
            resp = client.post(f"/?id=BUILD-1&lang={lang}", body)
            assert resp.status == 409 and resp.json["code"] == 409 and said in resp.json["message"], resp.body
    assert client.get("/BUILD-1").status == 404 and client.get("/").json["data"]["total"] == 1
    assert sorted(path.name for path in (case_folding_dir / "Build-1").iterdir()) == [".osreapi", "made-by-first"]
    again = client.post("/?id=Build-1", first)
    assert again.status == 200 and again.json["data"]["id"] == "Build-1"
    # A task still waiting in the queue holds its name too (pool of 1: the sleep runs, q-a waits).
    client.submit([sh("sleep 30")], "?id=runner")
    assert client.post("/?id=q-a", [sh("true")]).status == 200
    resp = client.post("/?id=Q-A&lang=en", [sh("true")])
    assert resp.status == 409 and "task q-a" in resp.json["message"], resp.body
    assert sorted(path.name for path in case_folding_dir.iterdir()) == ["Build-1", "q-a", "runner"]
    assert server.terminate() == 0  # the sleep ends with the server, not after the unmount


def test_racing_submissions_of_ids_equal_under_case_folding_leave_one_task(start_server, case_folding_dir):
    """The workspace is made at the submission, where one mkdir wins: of submissions racing with
    ids that differ in case only, those of one id are accepted (as one task) and the rest 409."""
    client = start_server(data_dir=case_folding_dir.parent).client
    ids = ["race", "RACE", "Race", "rAcE"] * 4
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda task_id: (task_id, client.post(f"/?id={task_id}", [sh("true")])), ids))
    accepted = {task_id for task_id, resp in answers if resp.status == 200}
    assert len(accepted) == 1, [(task_id, resp.status, resp.body) for task_id, resp in answers]
    assert all(resp.status == 409 for task_id, resp in answers if task_id not in accepted)
    assert [task["id"] for task in client.get("/").json["data"]["tasks"]] == list(accepted)
    assert [path.name for path in case_folding_dir.iterdir()] == list(accepted)


def test_a_workspace_that_cannot_be_claimed_for_want_of_space_is_507(start_server, cramped_case_folding_dir):
    """The workspace made at the submission may not fit: 507 as for a store that cannot write (not
    a 500), nothing stored; once a deletion makes room, the same id is taken."""
    client = start_server(data_dir=cramped_case_folding_dir.parent).client
    answers = []
    for number in range(40):  # 24 inodes: a finished task's workspace takes 4
        resp = client.post(f"/?id=t{number}&lang=en", [sh("true")])
        answers.append(resp.status)
        if resp.status != 200:
            break
        client.wait(f"t{number}")
    assert answers[-1] == 507 and set(answers[:-1]) == {200}, answers
    assert resp.json["code"] == 507, resp.body
    refused = f"t{len(answers) - 1}"
    assert client.get(f"/{refused}").status == 404 and client.get("/").json["data"]["total"] == len(answers) - 1
    assert client.request("DELETE", "/t0").status == 200
    assert client.post(f"/?id={refused}", [sh("true")]).status == 200


def test_the_audit_key_is_made_where_hard_links_are_refused_and_stale_spares_go(tmp_path, monkeypatch):
    """The key was linked into place, and a file system without hard links (vfat, some network or
    FUSE mounts) refused the link: the server could not start there. A spare left by a start killed
    before its link stayed for good. Now a rename puts the key in place there, and spares go."""
    import errno as errno_module
    import os as os_module

    stale = tmp_path / "audit.key.999999.deadbeef"
    stale.write_bytes(b"x" * 32)

    def no_links(*_args, **_kwargs):
        raise OSError(errno_module.EPERM, "Operation not permitted")

    monkeypatch.setattr(os_module, "link", no_links)
    key = audit_key(tmp_path)
    assert len(key) == 32 and audit_key(tmp_path) == key
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["audit.key"]
    assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600
