"""Kill a whole process tree: TERM its group and every process carrying its marker, KILL what is
left once a grace has passed, and scan again until nothing is left (bounded)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Collection, Iterable

import psutil

from ..errors import out_of_descriptors

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
    while True:
        found = {pid: proc for pid, proc in find().items() if pid != os.getpid() and _alive(proc)}
        live_groups = [group for group in groups if signal_group(group, 0)]
        elapsed = time.monotonic() - since
        if not (found or live_groups) or elapsed > grace + GIVE_UP_AFTER:
            return sorted(signalled)
        kill_round(found, live_groups, signalled, late=elapsed >= grace, send=lambda pid, sig, found=found: _signal(found[pid], sig))
        if found:
            wait_gone(list(found.values()), timeout=ROUND)
        else:  # only group members no scan lists: look again in a moment
            time.sleep(ROUND)


def kill_round(pids: Iterable[int], groups: Iterable[int], signalled: set[int], late: bool,
               send: Callable[[int, int], None] | None = None) -> None:
    """One round of a kill that scans again until nothing is left (the janitor's, recovery's):
    before the grace has passed, TERM (and CONT: a paused process acts on TERM) each process the
    first time it is found, and the groups still alive; after it, KILL every process found and
    every group still alive. `signalled` collects the pids signalled across rounds."""
    send = send or signal_pid
    for group in groups:
        if late:
            signal_group(group, signal.SIGKILL)
        else:
            term_group(group)
    for pid in pids:
        if late:
            send(pid, signal.SIGKILL)
        elif pid not in signalled:
            send(pid, signal.SIGTERM)
            send(pid, signal.SIGCONT)
        signalled.add(pid)


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
    except (psutil.Error, OSError):  # OSError: /proc unreadable now (no descriptor free): the group still is
        pass
    for proc in extra or ():
        procs.setdefault(proc.pid, proc)
    procs.pop(os.getpid(), None)
    return procs


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


def term_group(pgid: int) -> bool:
    """TERM a process group, and CONT it (a stopped, paused process acts on TERM only then);
    False when no process of it is left (then nothing more is sent)."""
    if not signal_group(pgid, signal.SIGTERM):
        return False
    signal_group(pgid, signal.SIGCONT)
    return True


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
        except OSError as exc:
            if out_of_descriptors(exc):  # not read is not unmarked: the caller scans again later
                raise
            continue
        at = raw.find(prefix)
        if at < 0 or (at and raw[at - 1] != 0):
            continue
        end = raw.find(b"\0", at)
        run = raw[at + len(prefix): end if end >= 0 else None].decode("ascii", "replace")
        if run in runs:
            found.setdefault(run, []).append(pid)
    return found
