"""osreapi-killtree TASK_ID [--dry-run]: kill every process tree carrying a task's marker.

Works without the server: it finds processes by the OSREAPI_TASK_ID environment marker.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    if args.dry_run:
        for proc in sorted(treekill.marked_trees(args.task_id), key=lambda p: p.pid):
            print(f"would kill {proc.pid}")
        return 0
    killed = treekill.kill_marked(args.task_id, args.grace)
    if not killed:
        print(f"no process carries OSREAPI_TASK_ID={args.task_id}", file=sys.stderr)
    for pid in killed:
        print(f"killed {pid}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
