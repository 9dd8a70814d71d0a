"""osreapi-killtree TASK_ID [--dry-run]: kill every process tree carrying a task's marker.

Works without the server: it finds processes by the OSREAPI_TASK_ID environment marker. Exits 0
when it killed (or would kill) something, 1 when no process carries the marker (as pkill does),
2 for a usage error.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from .executor import treekill


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="osreapi-killtree",
        description="Kill every process (and its children) whose environment carries OSREAPI_TASK_ID=TASK_ID.",
        epilog="Exit status: 0 something was killed (or would be), 1 no process carries the marker, 2 usage error.",
    )
    parser.add_argument("task_id")
    parser.add_argument("--dry-run", action="store_true", help="list the pids that would be killed, kill nothing")
    parser.add_argument("--grace", type=_seconds, default=3.0, help="seconds between TERM and KILL (default 3)")
    args = parser.parse_args(argv)
    if args.dry_run:
        found = sorted(treekill.marked_trees(args.task_id), key=lambda p: p.pid)
        for proc in found:
            print(f"would kill {proc.pid}")
    else:
        found = treekill.kill_marked(args.task_id, args.grace)
        for pid in found:
            print(f"killed {pid}")
    if not found:
        print(f"no process carries OSREAPI_TASK_ID={args.task_id}", file=sys.stderr)
        return 1
    return 0


def _seconds(text: str) -> float:
    """A grace in seconds: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value

if __name__ == "__main__":
    sys.exit(main())
