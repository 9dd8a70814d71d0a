"""The benchmark's second limit: what one Python thread does when it only runs steps.

One thread runs 3-step `true` tasks, `concurrent` at a time, with what the engine promises and
nothing else: each step's start is written and flushed before its process exists (the starts of
one wake-up share a flush), its end is written, its output is read, its exit is seen through a
pidfd. No HTTP, no actors, no logs, no control. The engine's throughput is reported as a share of
this too: the distance to it is the price of the server around the steps, not of Python.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import time
from pathlib import Path

STEPS = 3


class _LeanLoop:
    def __init__(self, root: Path, tasks: int) -> None:
        import lmdb  # the engine's own dependency; imported here so bench.py loads without it

        self.root = root
        self.env = lmdb.open(str(root / "db"), map_size=1 << 30, sync=False, metasync=False)
        self.done_steps = [0] * tasks
        self.waiting = list(range(tasks))
        self.selector = selectors.DefaultSelector()
        self.devnull = os.open(os.devnull, os.O_RDONLY)

    def start(self, tasks: list[int]) -> None:
        """Write and flush the starts, then start the processes."""
        with self.env.begin(write=True) as txn:
            for task in tasks:
                txn.put(f"{task}/{self.done_steps[task]}".encode(), json.dumps({"state": "running"}).encode())
        self.env.sync(True)
        for task in tasks:
            script = self.root / f"{task}-{self.done_steps[task]}.sh"
            script.write_bytes(b"true\n")
            read_end, write_end = os.pipe()
            proc = subprocess.Popen(["sh", str(script)], stdin=self.devnull, stdout=write_end,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
            os.close(write_end)
            self.selector.register(os.pidfd_open(proc.pid), selectors.EVENT_READ, (task, proc, read_end))

    def reap(self) -> list[int]:
        """Record every exit of one wake-up; return the tasks with a step to start next."""
        following = []
        with self.env.begin(write=True) as txn:
            for key, _ in self.selector.select(timeout=10):
                task, proc, read_end = key.data
                self.selector.unregister(key.fd)
                os.close(key.fd)
                proc.wait()
                os.read(read_end, 65536)
                os.close(read_end)
                txn.put(f"{task}/{self.done_steps[task]}".encode(), json.dumps({"state": "stopped"}).encode())
                self.done_steps[task] += 1
                if self.done_steps[task] < STEPS:
                    following.append(task)
                elif self.waiting:
                    following.append(self.waiting.pop())
        return following

    def close(self) -> None:
        self.selector.close()
        self.env.close()
        os.close(self.devnull)


def lean_loop_rate(parent: Path, tasks: int, concurrent: int = 8, limit: float = 60.0) -> float | None:
    """3-step tasks per second of the lean loop; None where pidfd is missing (not Linux). Its files
    are left in `parent`, removed with it after the other phases (see bench.run)."""
    if not hasattr(os, "pidfd_open"):
        return None
    root = Path(tempfile.mkdtemp(prefix="osreapi-lean-", dir=parent))
    loop = _LeanLoop(root, tasks)
    try:
        began = time.perf_counter()
        loop.start([loop.waiting.pop() for _ in range(min(concurrent, tasks))])
        while sum(loop.done_steps) < STEPS * tasks and time.perf_counter() - began < limit:
            following = loop.reap()
            if following:
                loop.start(following)
        return sum(loop.done_steps) / STEPS / (time.perf_counter() - began)
    finally:
        loop.close()
