"""Random mixed clients against the installed server, SIGKILLed and restarted on the same data dir
while they work; then the promises are checked on what is left: nothing acknowledged is lost, a
step runs at most once, every record tells what ran, every task ends, no answer is a 5xx for what
a client sent, no process is left. The full-disk variant fills the data dir's small tmpfs and frees
it again and again meanwhile. (Longer runs of it found that a step paused while it ran read "skipped"
after a crash, and that a disk filled by the steps' own logs could not be freed through the API.)
Bounded: a few seconds of clients per seed, a bounded settle."""

from __future__ import annotations

import collections
import http.client
import json
import random
import threading
import time
from pathlib import Path

import psutil
import pytest

from osreapi.executor import treekill

from .conftest import Client, ServerProcess, sh, wait_until

ACTIONS = ("kill", "pause", "resume")
BODIES = {  # each step first writes its run to the ledger: what ran is known outside the server
    "true": "true",
    "fail": "exit 3",
    "short": "sleep 0.2",
    "child": "sleep 2 & sleep 0.3",
    "deaf": "trap '' TERM; sleep 2",
}


class Chaos:
    def __init__(self, seed: int, start: callable, ledger: Path, filler: Path | None = None) -> None:
        self.rnd = random.Random(seed)
        self.filler = filler  # a file on the data dir's disk, to fill it with now and then
        self.start = start
        self.ledger = ledger
        self.server: ServerProcess = start()
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # task id -> steps, once a submit answered 0
        self.maybe_deleted: set[str] = set()  # a DELETE answered 200, or gave no answer
        self.server_errors: list[str] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.client_failures: list[BaseException] = []  # a client thread that stopped early

    def client(self) -> Client:
        with self.lock:
            return self.server.client

    def call(self, method: str, path: str, body: object = None):
        try:
            resp = self.client().request(method, path, body=json.dumps(body) if body is not None else None)
        except (OSError, http.client.HTTPException):  # the server was killed under this request
            return None
        self.statuses[resp.status] += 1
        if resp.status >= 500 and resp.status not in (503, 507):
            self.server_errors.append(f"{method} {path} -> {resp.status} {resp.body[:300]!r}")
        return resp

    def step(self, index: int) -> dict:
        kind = self.rnd.choice(list(BODIES))
        mark = f'echo "$OSREAPI_TASK_ID $OSREAPI_STEP_NAME" >> {self.ledger}; '
        step = sh(mark + BODIES[kind], name=f"s{index}")
        if self.rnd.random() < 0.2:
            step["timeout"] = "1s"
        return step

    def submit(self) -> None:
        steps = [self.step(i) for i in range(self.rnd.randint(1, 3))]
        query = "?async=true" if self.rnd.random() < 0.3 else ""
        if not query and len(steps) > 1 and self.rnd.random() < 0.4:
            for i in range(1, len(steps)):
                steps[i]["depends_on"] = [f"s{self.rnd.randrange(i)}"]
        resp = self.call("POST", "/" + query, steps)
        if resp is not None and resp.status == 200 and resp.json["code"] == 0:
            with self.lock:
                self.acked[resp.json["data"]["id"]] = len(steps)

    def some_task(self) -> str | None:
        with self.lock:
            ids = [t for t in self.acked if t not in self.maybe_deleted]
        return self.rnd.choice(ids) if ids else None

    def control(self) -> None:
        task_id = self.some_task()
        if task_id:
            target = f"/{task_id}" if self.rnd.random() < 0.5 else f"/{task_id}/s{self.rnd.randrange(self.acked[task_id])}"
            self.call("PUT", f"{target}?action={self.rnd.choice(ACTIONS)}")

    def delete(self) -> None:
        task_id = self.some_task()
        if task_id:
            resp = self.call("DELETE", f"/{task_id}")
            if resp is None or resp.status == 200:
                with self.lock:
                    self.maybe_deleted.add(task_id)

    def read(self) -> None:
        task_id = self.some_task()
        path = self.rnd.choice(["/", f"/{task_id}?wait=1s", f"/{task_id}/s0/log", f"/{task_id}"] if task_id else ["/"])
        self.call("GET", path)

    def clients(self, seconds: float, threads: int = 3) -> None:
        deadline = time.monotonic() + seconds
        operations = [self.submit] * 3 + [self.control] * 3 + [self.read] * 3 + [self.delete]
        pace = threading.Event()

        def work(rnd: random.Random) -> None:
            try:
                while time.monotonic() < deadline:
                    rnd.choice(operations)()
                    pace.wait(0.02)  # bounded pace: the box has two cores
            except BaseException as exc:
                self.client_failures.append(exc)
                raise

        workers = [threading.Thread(target=work, args=(random.Random(self.rnd.random()),)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        if self.filler is not None:
            workers.append(threading.Thread(target=self.fill_and_free, args=(deadline, random.Random(self.rnd.random()))))
            workers[-1].start()
        crash_at = time.monotonic() + seconds * self.rnd.uniform(0.3, 0.7)
        assert wait_until(lambda: time.monotonic() >= crash_at, timeout=seconds + 5, interval=0.05)
        with self.lock:
            self.server.kill()  # SIGKILL while the clients work
            self.server = self.start()
        for worker in workers:
            worker.join(seconds + 60)

    def fill_and_free(self, deadline: float, rnd: random.Random) -> None:
        """Fill the disk (a write past its size: ENOSPC), hold it full a moment, free it; again."""
        spell = threading.Event()
        while time.monotonic() < deadline:
            try:
                with open(self.filler, "wb") as handle:
                    for _ in range(64):
                        handle.write(bytes(1 << 20))
            except OSError:  # full: as meant
                pass
            spell.wait(rnd.uniform(0.3, 1.5))
            self.filler.unlink(missing_ok=True)
            spell.wait(rnd.uniform(0.3, 1.5))
        self.filler.unlink(missing_ok=True)

    def settle(self, timeout: float) -> dict[str, dict]:
        """Resume what is paused until every task has ended; return each task's detail answer."""
        ended: dict[str, dict] = {}

        def all_ended() -> bool:
            listing = self.call("GET", "/?lang=en")
            paused = {t["id"] for t in listing.json["data"]["tasks"] if t["state"] == "paused"} if listing else set()
            for task_id in [t for t in self.acked if t not in ended and t not in self.maybe_deleted]:
                resp = self.call("GET", f"/{task_id}?detail=true&lang=en")
                if resp is not None and resp.json["code"] in (0, 1002, 1003):
                    ended[task_id] = resp.json
                    continue
                for step in resp.json["data"]["steps"] if resp is not None else ():
                    if step["state"] == "paused":
                        self.call("PUT", f"/{task_id}/{step['name']}?action=resume")
                if task_id in paused:
                    self.call("PUT", f"/{task_id}?action=resume")
            return all(t in ended or t in self.maybe_deleted for t in self.acked)

        assert wait_until(all_ended, timeout=timeout, interval=0.2), [t for t in self.acked if t not in ended]
        return ended

    def ran(self) -> collections.Counter:
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        return collections.Counter(tuple(line.split()) for line in lines)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [1, 9])
def test_random_clients_and_a_crash_keep_every_promise(start_server, tmp_path, seed):
    data = tmp_path / "data"
    chaos = Chaos(seed, lambda: start_server("--pool_size=3", "--lang=en", data_dir=data), tmp_path / "ledger")
    chaos.clients(seconds=8)
    check_promises(chaos)


@pytest.mark.timeout(240)
def test_random_clients_a_crash_and_a_full_disk_keep_every_promise(start_server, tmp_path, small_disk):
    data = small_disk / "data"
    chaos = Chaos(5, lambda: start_server("--pool_size=3", "--lang=en", data_dir=data), tmp_path / "ledger",
                  filler=small_disk / "filler")
    chaos.clients(seconds=8)
    check_promises(chaos)
    assert chaos.statuses[507], chaos.statuses  # the disk was full under some writes


def check_promises(chaos: Chaos) -> None:
    ended = chaos.settle(timeout=120)
    assert not chaos.client_failures and not chaos.server_errors, (chaos.client_failures, chaos.server_errors)
    assert len(chaos.acked) > 10  # the clients did work
    ran = chaos.ran()
    assert [key for key, count in ran.items() if count > 1] == []  # a step runs at most once
    for task_id, answer in ended.items():
        assert answer["code"] != 1003, f"acknowledged task {task_id} is gone"
        for step in answer["data"]["steps"]:
            key = (task_id, step["name"])
            if key in ran:  # it ran: its record says so
                assert step["state"] not in ("pending", "skipped"), (key, step)
            if step["state"] == "stopped" and step["code"] == 0:  # it says it succeeded: it ran
                assert key in ran, (key, step)
    assert chaos.server.terminate() == 0
    assert wait_until(lambda: not processes_of(set(chaos.acked)), timeout=30), processes_of(set(chaos.acked))


def processes_of(task_ids: set[str]) -> list[int]:
    """The processes that carry one of these tasks' marker (one pass over /proc)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(treekill.TASK_MARKER) in task_ids:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found
