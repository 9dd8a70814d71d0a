"""Kill a whole process tree: TERM the group, wait a grace, KILL what is left, reap."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection

import psutil

TASK_MARKER = "OSREAPI_TASK_ID"
STEP_MARKER = "OSREAPI_STEP_NAME"
RUN_MARKER = "OSREAPI_RUN_ID"  # one step's one run: a reposted id or a kept daemon is not confused with it
ROUND = 0.1  # seconds between marker scans while a run's processes are killed
GIVE_UP_AFTER = 30.0  # seconds past the grace: a process that survives KILL this long is stuck


def marked_processes(task_id: str, step_name: str | None = None, run_id: str | None = None) -> list[psutil.Process]:
    """Processes whose environment carries this task's (and step's, and run's) marker, found even
    after setsid."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(TASK_MARKER) != task_id or (step_name is not None and env.get(STEP_MARKER) != step_name):
            continue
        if run_id is None or env.get(RUN_MARKER) == run_id:
            found.append(proc)
    return found


def marked_trees(task_id: str, step_name: str | None = None, run_id: str | None = None) -> list[psutil.Process]:
    """Every process carrying the marker, and their descendants."""
    procs: dict[int, psutil.Process] = {}
    for proc in marked_processes(task_id, step_name, run_id):
        procs.update(process_tree(proc.pid))
    return list(procs.values())


def process_tree(pid: int) -> dict[int, psutil.Process]:
    """pid and its descendants (none if it is gone); never this process."""
    return _snapshot(pid, include_root=True)


def kill_marked(task_id: str, grace: float, step_name: str | None = None, run_id: str | None = None) -> list[int]:
    """Kill the processes found by marker (no group or child of ours needed): the ops tool (a whole
    task), when the server that started them is gone."""
    return kill_until_gone(lambda: {proc.pid: proc for proc in marked_trees(task_id, step_name, run_id)}, grace)


def kill_until_gone(find: Callable[[], dict[int, psutil.Process]], grace: float, groups: Collection[int] = ()) -> list[int]:
    """Kill what `find` returns and the process `groups`, scanning again and again until nothing
    is left (bounded): a TERM-ignoring process starts new setsid children while it is killed.
    TERM at first sight, KILL whatever is found once `grace` has passed; one grace for all."""
    since = time.monotonic()
    signalled: set[int] = set()  # pids TERMed (or KILLed)
    for group in groups:
        if signal_group(group, signal.SIGTERM):
            signal_group(group, signal.SIGCONT)  # a stopped (paused) process acts on TERM
    while True:
        found = {pid: proc for pid, proc in find().items() if pid != os.getpid() and _alive(proc)}
        live_groups = [group for group in groups if signal_group(group, 0)]
        elapsed = time.monotonic() - since
        if not (found or live_groups) or elapsed > grace + GIVE_UP_AFTER:
            return sorted(signalled)
        late = elapsed >= grace
        for group in live_groups if late else ():
            signal_group(group, signal.SIGKILL)
        for pid, proc in found.items():
            if late:
                _signal(proc, signal.SIGKILL)
            elif pid not in signalled:
                _signal(proc, signal.SIGTERM)
                _signal(proc, signal.SIGCONT)
            signalled.add(pid)
        if found:
            wait_gone(list(found.values()), timeout=ROUND)
        else:  # only group members no scan lists: look again in a moment
            time.sleep(ROUND)


def kill_tree(
    root_pid: int,
    *,
    grace: float,
    own_child: subprocess.Popen | None = None,
    extra: list[psutil.Process] | None = None,
) -> list[int]:
    """Kill root_pid's process group, its descendants and `extra`; return the pids signalled.

    `own_child` is the Popen of root_pid when it is our child: another thread reaps it, so it is
    waited through Popen (never psutil, which would reap it behind Popen's back).
    """
    procs = _snapshot(root_pid, include_root=own_child is None, extra=extra)
    _terminate(procs, grace, group=root_pid, own_child=own_child)
    return sorted(set(procs) | {root_pid})


def signal_tree(root_pid: int, sig: int, extra: list[psutil.Process] | None = None) -> None:
    """Send sig to root_pid's process group, its descendants and `extra` (pause / resume)."""
    procs = _snapshot(root_pid, include_root=False, extra=extra)
    signal_group(root_pid, sig)
    for proc in procs.values():
        _signal(proc, sig)


def _snapshot(
    root_pid: int, include_root: bool, extra: list[psutil.Process] | None = None
) -> dict[int, psutil.Process]:
    """root_pid's descendants (and itself if asked) plus extra; never this process."""
    procs: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(root_pid)
        if include_root:
            procs[root.pid] = root
        for child in root.children(recursive=True):
            procs[child.pid] = child
    except psutil.Error:
        pass
    for proc in extra or ():
        procs.setdefault(proc.pid, proc)
    procs.pop(os.getpid(), None)
    return procs


def _terminate(
    procs: dict[int, psutil.Process],
    grace: float,
    group: int | None = None,
    own_child: subprocess.Popen | None = None,
) -> None:
    """TERM (and CONT) everything, wait up to `grace`, KILL what is left, wait again."""

    def group_alive() -> bool:
        if group is None:
            return False
        return own_child.poll() is None if own_child is not None else True

    for sig in (signal.SIGTERM, signal.SIGCONT):  # CONT: a stopped (paused) process acts on TERM
        if group_alive():
            signal_group(group, sig)
        for proc in procs.values():
            _signal(proc, sig)
    deadline = time.monotonic() + grace
    alive = wait_gone(list(procs.values()), timeout=grace)
    if own_child is not None:
        try:
            own_child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    if group is not None and (group_alive() or alive):
        signal_group(group, signal.SIGKILL)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    wait_gone(alive, timeout=grace)
    if own_child is not None and own_child.poll() is None:
        own_child.kill()


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process is gone or a zombie (its reaper may be slow); return the rest."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        alive = [p for p in procs if _alive(p)]
        remaining = deadline - time.monotonic()
        if not alive or remaining <= 0:
            return alive
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to a process group (0: only ask); False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def scan_markers(runs: set[str]) -> dict[str, list[int]]:
    """One pass over /proc: the pids whose environment carries each wanted run marker. Reads the
    environ files directly: one scan serves every pending clean-up."""
    found: dict[str, list[int]] = {}
    if not runs:
        return found
    prefix = RUN_MARKER.encode() + b"="
    me = os.getpid()
    for pid in psutil.pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                raw = handle.read()
        except OSError:
            continue
        at = raw.find(prefix)
        if at < 0 or (at and raw[at - 1] != 0):
            continue
        end = raw.find(b"\0", at)
        run = raw[at + len(prefix): end if end >= 0 else None].decode("ascii", "replace")
        if run in runs:
            found.setdefault(run, []).append(pid)
    return found
