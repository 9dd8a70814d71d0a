"""Fixtures that start real things: an Executor on a temp LMDB, a cheroot server on 127.0.0.1:0,
the installed console script; every one is torn down."""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pykka
import pytest

from osreapi import Executor
from osreapi.http.app import HttpSettings, make_app
from osreapi.http.server import HttpServer


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class Client:
    """A tiny HTTP client for 127.0.0.1 (one connection per request)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80

    def request(self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None) -> Response:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            if isinstance(body, str):
                body = body.encode("utf-8")
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, steps: Any, **kw: Any) -> Response:
        body = steps if isinstance(steps, (str, bytes)) else json.dumps(steps)
        return self.request("POST", path, body=body, **kw)

    def submit(self, steps: Any, query: str = "") -> str:
        resp = self.post("/" + query, steps)
        assert resp.status == 200, resp.body
        return resp.json["data"]["id"]

    def wait(self, task_id: str, timeout: float = 20.0) -> Response:
        """Poll GET /<id> until it is no longer running (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            resp = self.get(f"/{task_id}")
            if resp.json["code"] != 1001:
                return resp
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still running after {timeout}s: {resp.body[:500]!r}")
            time.sleep(0.01)


@pytest.fixture(autouse=True)
def _no_actor_leaks() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=10)


@pytest.fixture
def make_executor(tmp_path: Path) -> Iterator[Callable[..., Executor]]:
    made: list[Executor] = []

    def make(data_dir: Path | None = None, **kwargs: Any) -> Executor:
        kwargs.setdefault("kill_grace", 0.5)
        ex = Executor(data_dir or tmp_path / "data", **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.close()


@pytest.fixture
def executor(make_executor: Callable[..., Executor]) -> Executor:
    return make_executor()


@pytest.fixture
def make_server(make_executor: Callable[..., Executor]) -> Iterator[Callable[..., Client]]:
    servers: list[HttpServer] = []

    def make(
        executor: Executor | None = None,
        settings: HttpSettings | None = None,
        client_timeout: float = 10.0,
        read_timeout: float = 10.0,
        server_options: dict[str, Any] | None = None,  # more of HttpServer's (threads, tls, out_budget)
        **kwargs: Any,
    ) -> Client:
        ex = executor or make_executor(**kwargs)
        app = make_app(ex, settings or HttpSettings())
        server = HttpServer(app, "127.0.0.1", 0, client_timeout=client_timeout, read_timeout=read_timeout,
                            **(server_options or {}))
        server.start()
        servers.append(server)
        client = Client(server.url)
        client.executor = ex  # type: ignore[attr-defined]
        client.hub = app.hub  # type: ignore[attr-defined]  # the stream hub: how many streams it serves
        client.server = server  # type: ignore[attr-defined]
        return client

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def client(make_server: Callable[..., Client]) -> Client:
    return make_server()


def console_script(name: str = "osreapi") -> str:
    if os.path.isabs(name):
        return name
    path = shutil.which(name, path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert path, f"console script {name} is not installed (pip install -e '.[test]')"
    return path


class ServerProcess:
    """The installed console script running `run` on 127.0.0.1:0."""

    def __init__(self, data_dir: Path, *args: str, script: str = "osreapi", fd_limit: int | None = None,
                 limits: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.log = data_dir.parent / f"server-{time.monotonic_ns()}.log"
        self._log_handle = open(self.log, "wb")
        limits = (*limits, f"--nofile={fd_limit}:{fd_limit}") if fd_limit else limits  # prlimit's
        limit = ["prlimit", *limits, "--"] if limits else []  # util-linux
        self.proc = subprocess.Popen(
            [*limit, console_script(script), "run", "--addr", "127.0.0.1:0", "--data_dir", str(data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=self._log_handle,
            stdin=subprocess.DEVNULL,
        )
        line = self.proc.stdout.readline().decode()
        match = re.search(r"listening on (https?://\S+)", line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line!r} {self.log.read_text()}")
        self.url = match.group(1)
        self.client = Client(self.url)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.proc.stdout.close()
        self._log_handle.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, script: str = "osreapi", fd_limit: int | None = None,
              limits: tuple[str, ...] = ()) -> ServerProcess:
        server = ServerProcess(data_dir or tmp_path / "data", *args, script=script, fd_limit=fd_limit, limits=limits)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 20 MiB tmpfs (mounting needs root: skipped otherwise), for full-disk tests."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@contextmanager
def no_descriptor_free():
    """Every descriptor this process may open is taken (on /dev/null) until the block ends: the
    soft limit is lowered to just above the ones open, and the rest filled."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 32, hard))
    held = []
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def sh(content: str, **kw) -> dict:
    """A sh step."""
    return {"command_type": "sh", "command_content": content, **kw}


def hold_request(client: Client, attempts: int = 5) -> socket.socket:
    """Put one request in flight on a server with --max-requests 1 and return its socket once a
    probe is refused with 429: a 32 MB log asked for by a client that does not read it (the server's
    worker waits to write). A probe may win the slot first: try again, a bounded number of times."""
    task_id = client.submit([sh("head -c 32000000 /dev/zero | tr '\\0' x")])
    client.wait(task_id)
    for _ in range(attempts):
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        held.settimeout(10)
        held.connect((client.host, client.port))
        held.sendall(f"GET /{task_id}/0/log HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if wait_until(lambda: client.get("/").status == 429, timeout=2):
            return held
        held.close()
    raise AssertionError("no request could be held in flight")


def read_pid(path: Path, timeout: float = 10.0) -> int:
    """The pid a step wrote to `path`, once the file holds one (bounded wait)."""
    assert wait_until(lambda: path.exists() and path.read_text().strip() != "", timeout=timeout), path
    return int(path.read_text())


def gone(pid: int) -> bool:
    """True when the process no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def signal_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int, timeout: float = 30) -> int:
    """Once ready() holds, send sig to proc and return its exit status; never leave it running."""
    try:
        assert wait_until(ready, timeout=timeout)
        proc.send_signal(sig)
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def start_step(client: Client, script: str, printed: bytes | None = None) -> str:
    """Submit one sh step; return the task id once the step runs (or, with `printed`, once its log
    holds exactly that)."""
    task_id = client.submit([sh(script)])
    if printed is None:
        assert wait_until(lambda: client.get(f"/{task_id}?lang=en").json["data"][0]["state"] == "running")
    else:
        assert wait_until(lambda: client.get(f"/{task_id}/0/log").body == printed)
    return task_id


def step_pid(executor: Executor, task_id: str, index: int = 0, timeout: float = 10.0) -> int:
    """The pid of a step's process once it is recorded (a step is running from the moment its start
    is written; its pid follows as soon as the process exists)."""
    assert wait_until(lambda: executor.get(task_id).steps[index].pid is not None, timeout=timeout)
    return executor.get(task_id).steps[index].pid
