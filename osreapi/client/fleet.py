"""Fleet: the same call on many hosts at once, a bounded number at a time; each host's failure
(down, slow, refused) is its own row, never the others' delay."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..embed import TaskResult
from ..errors import InvalidValue, NotFound, OsreapiError
from .client import DEFAULT_TIMEOUT, Client

T = TypeVar("T")
DEFAULT_PORT = 2376
DEFAULT_FANOUT = 32


@dataclass(frozen=True)
class HostResult(Generic[T]):
    """One host's answer: `value`, or the `error` that host met."""

    host: str
    value: T | None = None
    error: OsreapiError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def host_url(host: str, scheme: str = "http") -> str:
    """'web1' -> http://web1:2376; 'web1:8080'; '[::1]:2376'; a full URL is kept as it is."""
    host = host.strip()
    if "://" in host:
        return host.rstrip("/")
    if not host:
        raise InvalidValue("empty host name")
    bracketed = host.startswith("[")
    has_port = host.rsplit("]", 1)[-1].count(":") == 1 if bracketed else host.count(":") == 1
    if not bracketed and host.count(":") > 1:  # a bare IPv6 address
        host = f"[{host}]"
    return f"{scheme}://{host}" if has_port else f"{scheme}://{host}:{DEFAULT_PORT}"


def parse_hosts(text: str) -> list[str]:
    """Hosts separated by commas, whitespace or lines; '#' starts a comment; duplicates dropped."""
    names: list[str] = []
    for line in text.splitlines():
        for name in line.split("#", 1)[0].replace(",", " ").split():
            if name not in names:
                names.append(name)
    return names


def read_hosts_file(path: str | Path) -> list[str]:
    try:
        return parse_hosts(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidValue(f"--hosts_file: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise InvalidValue(f"--hosts_file: cannot read {path}: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})") from None


class Fleet:
    """Many servers driven as one. Each call runs on every host, at most `fanout` at a time, and
    returns one HostResult per host, in the order the hosts were given."""

    def __init__(
        self,
        hosts: Sequence[str],
        token: str | None = None,
        fanout: int = DEFAULT_FANOUT,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        scheme: str = "http",
        lang: str = "en",
    ) -> None:
        if not hosts:
            raise InvalidValue("a fleet needs at least one host")
        if fanout < 1:
            raise InvalidValue(f"fanout must be at least 1, got {fanout}")
        self.fanout = fanout
        # One Client (one connection pool) per host costs ~4 KiB, no thread and no connection until
        # used (measured: 100 hosts, 375 KiB); the TLS context, the one costly part, is shared
        # already (tls_context). A pool shared by all hosts would hold the same connections, one
        # per host, but under one keep-alive limit (20): a call on 100 hosts would reconnect (and
        # shake hands again) with most of them every time.
        self.clients: dict[str, Client] = {}
        servers = set()
        for host in hosts:
            client = Client(host_url(host, scheme), token=token, timeout=timeout, verify=verify, cert=cert, lang=lang)
            if client.server in servers:  # one server named twice ('web1', 'web1:2376/'): asked once, one row
                client.close()
                continue
            servers.add(client.server)
            self.clients[host] = client

    @property
    def hosts(self) -> list[str]:
        return list(self.clients)

    def map(self, call: Callable[[str, Client], T]) -> list[HostResult[T]]:
        """call(host, client) on every host; an OsreapiError becomes that host's error. The calls
        run on daemon threads and this thread only waits for their answers, so a KeyboardInterrupt
        (Ctrl-C) ends the wait at once, and the program's exit does not wait for a hung host."""
        todo: queue.SimpleQueue[str] = queue.SimpleQueue()
        for host in self.clients:
            todo.put(host)
        done: queue.Queue[tuple[str, HostResult[T] | BaseException]] = queue.Queue()

        def work() -> None:
            while True:
                try:
                    host = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((host, HostResult(host, value=call(host, self.clients[host]))))
                except OsreapiError as exc:
                    done.put((host, HostResult(host, error=exc)))
                except BaseException as exc:  # a bug in `call`: raised to the caller, as before
                    done.put((host, exc))

        for _ in range(min(self.fanout, len(self.clients))):
            threading.Thread(target=work, name="osreapi-fleet", daemon=True).start()
        answers = dict(done.get() for _ in self.clients)
        for outcome in answers.values():
            if isinstance(outcome, BaseException):
                raise outcome
        return [answers[host] for host in self.clients]  # type: ignore[misc]

    def submit(
        self, steps: list[dict[str, Any]] | str | bytes, mode: str | None = None, task_id: str | None = None
    ) -> list[HostResult[str]]:
        """The same task on every host (with the same id everywhere when task_id is given)."""
        return self.map(lambda host, client: client.submit(steps, mode=mode, task_id=task_id))

    def get(self, task_id: str | Mapping[str, str]) -> list[HostResult[TaskResult | None]]:
        """task_id: one id for every host, or each host's own (as submit returned them)."""
        return self.map(lambda host, client: client.get(_id_on(task_id, host)))

    def wait(self, task_id: str | Mapping[str, str], timeout: float | None = None) -> list[HostResult[TaskResult | None]]:
        return self.map(lambda host, client: client.wait(_id_on(task_id, host), timeout=timeout))

    def kill(self, task_id: str | Mapping[str, str], step: str | int | None = None) -> list[HostResult[None]]:
        return self.map(lambda host, client: client.kill(_id_on(task_id, host), step))

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _id_on(task_id: str | Mapping[str, str], host: str) -> str:
    if isinstance(task_id, str):
        return task_id
    if host not in task_id:
        raise NotFound(f"{host}: no task id given for this host")
    return task_id[host]
