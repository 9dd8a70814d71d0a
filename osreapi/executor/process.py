"""Start one step as its own OS process tree: script file, environment, log file, new session."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import psutil

from ..spec import StepSpec
from . import interpreters
from .treekill import RUN_MARKER, STEP_MARKER, TASK_MARKER

CONTROL_DIR = ".osreapi"  # inside the task workspace: scripts and logs
PRIVATE_DIR = 0o700  # workspaces: a umask can only take bits away from these modes
PRIVATE_FILE = 0o600  # scripts and logs (run as `sh <script>`: no execute bit needed)


def prepare_workspace(workspace: Path) -> None:
    """Create the task workspace and its control directory (scripts and logs), once per task, for
    the engine's user alone whatever the umask (under umask 000 other users could rewrite scripts).
    The workspace root is made again if it is gone, never the data dir above it: made here (the
    data dir removed under the server), it had the umask's mode, which the store's put-back kept."""
    workspace.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    workspace.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    (workspace / CONTROL_DIR).mkdir(mode=PRIVATE_DIR, exist_ok=True)


def remove_empty_workspace(workspace: Path) -> None:
    """Undo prepare_workspace where nothing was written in it (a directory that is not empty stays)."""
    for directory in (workspace / CONTROL_DIR, workspace):
        try:
            directory.rmdir()
        except OSError:
            return


def log_path(workspace: Path, index: int) -> Path:
    return workspace / CONTROL_DIR / f"step-{index}.log"


def step_environment(task_id: str, spec: StepSpec, run_id: str) -> dict:
    """The server's environment, the step's env and its markers. On POSIX in bytes, copied from
    os.environ's own bytes mapping: decoding and re-encoding every variable at each start cost
    a quarter of the step's start (os.environ changed at run time is still seen)."""
    extra = {**dict(spec.env), TASK_MARKER: task_id, STEP_MARKER: spec.name, RUN_MARKER: run_id}
    raw = getattr(os.environ, "_data", None)
    if os.name != "posix" or not isinstance(raw, dict):
        return {**os.environ, **extra}
    env = dict(raw)
    env.update((os.fsencode(key), os.fsencode(value)) for key, value in extra.items())
    return env


def start_step(workspace: Path, task_id: str, index: int, spec: StepSpec, run_id: str) -> tuple[subprocess.Popen, int]:
    """Write the script, then run it in a new session with stdout+stderr merged into a pipe;
    return the process and the pipe's read end (the reaper copies it into the step's log)."""
    interpreter = interpreters.lookup(spec.command_type)
    if interpreter is None:
        raise FileNotFoundError(f"no interpreter for command_type {spec.command_type!r} on this host")
    script = workspace / CONTROL_DIR / f"step-{index}{interpreter.suffix}"
    content = spec.content if interpreter.newline == "\n" else spec.content.replace("\n", interpreter.newline)
    write_file(script, content.encode("utf-8"))
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [*interpreter.argv_prefix, str(script)],
            cwd=workspace,
            env=step_environment(task_id, spec, run_id),
            stdin=_devnull(),
            stdout=write_end,
            stderr=subprocess.STDOUT,
            close_fds=True,
            start_new_session=sys.platform != "win32",
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return proc, read_end


def write_file(path: Path, data: bytes) -> None:
    """Create (or replace) a file with data: plain os calls, no io objects (once per step start)."""
    try:
        fd = os.open(path, CREATE_FLAGS, PRIVATE_FILE)
    except FileNotFoundError:  # the task prepares the directory once; this is a fallback
        prepare_workspace(path.parent.parent)
        fd = os.open(path, CREATE_FLAGS, PRIVATE_FILE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


# A file created (or emptied) for writing, with no io objects: scripts and step logs.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


@functools.cache
def _devnull() -> int:
    """One /dev/null descriptor for every step's stdin (Popen's DEVNULL opens and closes one per call)."""
    return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


def exit_code(returncode: int) -> int:
    """A signal death (negative returncode) reads as the shell does: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def create_time(pid: int) -> float | None:
    """psutil's create_time() of pid (recovery compares the two to tell a reused pid), read
    straight from /proc/<pid>/stat on Linux with plain os calls: each call an actor makes that
    releases the GIL costs it a wait for the GIL under load (io.open made eight such calls)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            fields = os.read(fd, 4096).rpartition(b")")[2].split()
        finally:
            os.close(fd)
        return _BOOT_TIME + int(fields[19]) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        try:
            return psutil.Process(pid).create_time()
        except (psutil.Error, OSError):  # OSError: no descriptor free (EMFILE); recovery finds it by its marker
            return None


_BOOT_TIME = psutil.boot_time()
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
