"""Start one step as its own OS process tree: script file, environment, log file, new session."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from ..spec import StepSpec
from . import interpreters
from .treekill import RUN_MARKER, STEP_MARKER, TASK_MARKER

CONTROL_DIR = ".osreapi"  # inside the task workspace: scripts and logs


def prepare_workspace(workspace: Path) -> None:
    """Create the task workspace and its control directory (scripts and logs), once per task."""
    (workspace / CONTROL_DIR).mkdir(parents=True, exist_ok=True)


def log_path(workspace: Path, index: int) -> Path:
    return workspace / CONTROL_DIR / f"step-{index}.log"


def step_environment(task_id: str, spec: StepSpec, run_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(spec.env)
    env[TASK_MARKER] = task_id
    env[STEP_MARKER] = spec.name
    env[RUN_MARKER] = run_id
    return env


def start_step(workspace: Path, task_id: str, index: int, spec: StepSpec, run_id: str) -> tuple[subprocess.Popen, int]:
    """Write the script, then run it in a new session with stdout+stderr merged into a pipe;
    return the process and the pipe's read end (the reaper copies it into the step's log)."""
    interpreter = interpreters.lookup(spec.command_type)
    if interpreter is None:
        raise FileNotFoundError(f"no interpreter for command_type {spec.command_type!r} on this host")
    script = workspace / CONTROL_DIR / f"step-{index}{interpreter.suffix}"
    try:
        handle = open(script, "w", encoding="utf-8", newline=interpreter.newline)
    except FileNotFoundError:  # the task prepares the directory once; this is a fallback
        script.parent.mkdir(parents=True, exist_ok=True)
        handle = open(script, "w", encoding="utf-8", newline=interpreter.newline)
    with handle:
        handle.write(spec.content)
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


@functools.cache
def _devnull() -> int:
    """One /dev/null descriptor for every step's stdin (Popen's DEVNULL opens and closes one per call)."""
    return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


def exit_code(returncode: int) -> int:
    """A signal death (negative returncode) reads as the shell does: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode
