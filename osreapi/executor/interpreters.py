"""Which interpreter runs which command_type, and which are present on this host."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Interpreter:
    command_type: str
    argv_prefix: tuple[str, ...]  # the script path is appended
    suffix: str
    newline: str = "\n"


_ALIASES = {"python": "python3", "pwsh": "powershell"}


def canonical_type(command_type: str) -> str:
    return _ALIASES.get(command_type, command_type)


KNOWN_TYPES = ("sh", "bash", "python3", "python", "cmd", "powershell", "pwsh")


@cache
def available() -> dict[str, Interpreter]:
    """Interpreters found on this host, by every accepted command_type spelling."""
    found: dict[str, Interpreter] = {}
    for name in ("sh", "bash"):
        path = shutil.which(name)
        if path:
            found[name] = Interpreter(name, (path,), ".sh")
    python = shutil.which("python3") or sys.executable
    if python:
        found["python3"] = Interpreter("python3", (python, "-u"), ".py")
    cmd = shutil.which("cmd") if sys.platform == "win32" else None
    if cmd:
        found["cmd"] = Interpreter("cmd", (cmd, "/D", "/C"), ".bat", "\r\n")
    powershell = shutil.which("pwsh") or shutil.which("powershell")
    if powershell:
        found["powershell"] = Interpreter(
            "powershell",
            (powershell, "-NoLogo", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File"),
            ".ps1",
        )
    for alias, target in _ALIASES.items():
        if target in found:
            found[alias] = found[target]
    return found


def lookup(command_type: str) -> Interpreter | None:
    return available().get(command_type)
