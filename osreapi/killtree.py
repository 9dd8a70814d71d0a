"""osreapi-killtree TASK_ID [--dry-run]: kill every process tree carrying a task's marker.

Works without the server: it finds processes by the OSREAPI_TASK_ID environment marker.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psutil

from .executor import treekill


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="osreapi-killtree",
        description="Kill every process (and its children) whose environment carries OSREAPI_TASK_ID=TASK_ID.",
    )
    parser.add_argument("task_id")
    parser.add_argument("--dry-run", action="store_true", help="list the pids that would be killed, kill nothing")
    parser.add_argument("--grace", type=float, default=3.0, help="seconds between TERM and KILL (default 3)")
    args = parser.parse_args(argv)
    marked = treekill.marked_processes(args.task_id)
    pids: set[int] = set()
    for proc in marked:
        pids.add(proc.pid)
        try:
            pids.update(child.pid for child in proc.children(recursive=True))
        except psutil.Error:
            pass
    if args.dry_run:
        for pid in sorted(pids):
            print(f"would kill {pid}")
        return 0
    if not marked:
        print(f"no process carries OSREAPI_TASK_ID={args.task_id}", file=sys.stderr)
        return 0
    killed = treekill.kill_tree(marked[0].pid, grace=args.grace, extra=marked)
    for pid in sorted(set(killed) | pids):
        print(f"killed {pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
