"""After a crash or restart: end what was running as interrupted, kill its leftovers, requeue the
rest, and remove the workspaces no record owns any more."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import psutil

from .actors.taskstate import TaskState
from .config import EngineConfig
from .errors import InvalidRequest
from .executor import treekill
from .records import StepRecord, TaskRecord
from .spec import validate_task_id
from .storage.database import Database
from .storage.removal import remove_tree

log = logging.getLogger(__name__)

KEPT = "kept"  # in the data dir: workspaces older than its database, moved out of the workspace root


def recover(
    db: Database, config: EngineConfig, now: float, folds_case: bool = False
) -> tuple[list[tuple[TaskRecord, tuple[StepRecord, ...]]], list[str]]:
    """Return (records to save as interrupted, ids of never-started tasks in submission order).
    A step whose start was recorded may have run: it is interrupted, never run again.
    folds_case: the workspace root's (see retake_names)."""
    interrupted = []
    waiting: list[TaskRecord] = []
    running: list[tuple[TaskRecord, list[StepRecord]]] = []
    tasks = db.list_tasks()
    remove_orphan_workspaces(config, {task.id for task in tasks}, made=db.made)
    if folds_case:
        retake_names(config, [task.id for task in tasks])
    for task in tasks:
        if task.state.finished:
            continue
        stored_steps = db.get_steps(task.id)
        if task.begin is None and not any(step.begin for step in stored_steps):
            waiting.append(task)
        else:
            running.append((task, stored_steps))
    kill_leftovers([(task.id, steps) for task, steps in running], config.kill_grace)
    for task, stored_steps in running:
        state = TaskState(task, stored_steps, db.get_specs(task.id))
        state.interrupt(now, "step interrupted: the server stopped")
        state.finish(now, config.key_expire)
        ended, steps = state.take_changes()
        interrupted.append((ended, steps))
        log.warning("task %s was running when the server stopped: marked interrupted", task.id)
    waiting.sort(key=lambda t: t.accepted)
    return interrupted, [t.id for t in waiting]


def remove_orphan_workspaces(config: EngineConfig, known: set[str], made: float = 0.0) -> list[str]:
    """Remove the workspaces of tasks that have no record: a crash between a deletion's (or a
    sweep's) commit and its rmtree leaves them behind for good. Only real directories directly in
    the workspace root whose names a task could have; nothing else there is ours. Run before
    anything can create a task. One last changed before the database was made (`made`, wall time)
    is not its to remove: its record went with another database (a db/ moved aside, a data.mdb
    lost), and its logs may be all that is left of it; it is moved out of the root into
    <data_dir>/kept, and said (left in place, a new task of its id ran among its files)."""
    try:
        entries = list(os.scandir(config.workspace_root))
    except FileNotFoundError:
        return []
    removed, older = [], []
    for entry in entries:
        if entry.name in known or not _may_be_task_id(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            path = config.workspace(entry.name)  # refuses a path that resolves outside the root
        except ValueError:
            continue
        if entry.stat(follow_symlinks=False).st_mtime < made:
            older.append(_keep(config, path))
            continue
        remove_tree(path, lambda _path, _exc: None)
        removed.append(entry.name)
    if removed:
        log.warning("removed %d workspaces whose tasks have no record (left by a crash)", len(removed))
    if older:
        log.warning("moved %d workspaces older than the database, whose records it never had, to %s (e.g. %s): "
                    "remove them by hand once their logs are not needed", len(older), config.data_dir / KEPT, older[0])
    return removed


def _keep(config: EngineConfig, path: Path) -> str:
    """Move an older workspace into <data_dir>/kept (beside its namesakes moved before); where it
    went, or where it stays if it cannot be moved."""
    kept = config.data_dir / KEPT
    target = kept / path.name
    try:
        kept.mkdir(mode=0o700, exist_ok=True)
        if target.exists():
            target = kept / f"{path.name}.{uuid.uuid4().hex[:8]}"
        os.rename(path, target)
    except OSError as exc:
        log.warning("workspace %s, older than the database, cannot be moved to %s (%s): a new task of its id "
                    "would run among its files", path, kept, exc)
        return str(path)
    return str(target)


def retake_names(config: EngineConfig, task_ids: list[str]) -> None:
    """On a root that folds case, a record's workspace directory holds its name (see
    casefold.claim_workspace): one a crash left without it (killed between a deletion's move of
    the workspace into the trash and the making of its directory again) gets it back, before
    anything can create a task; else another id equal under case folding took the name, and the
    record's deletion later moved that task's workspace into the trash."""
    for task_id in task_ids:
        try:
            config.workspace_entry(task_id).mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            log.warning("workspace of task %s: missing, and not made again (%s)", task_id, exc)


def _may_be_task_id(name: str) -> bool:
    try:
        validate_task_id(name)
    except InvalidRequest:
        return False
    return True


def kill_leftovers(tasks: list[tuple[str, list[StepRecord]]], grace: float) -> list[int]:
    """Kill the trees of the tasks' unfinished steps, all together (one grace for all: a grace each
    held the start that long per TERM-ignoring leftover): stored pids (checked against their create
    time) with their process groups, and the processes carrying their run marker. Daemons kept by
    steps that ended are left alone."""
    steps = [(task_id, step) for task_id, task_steps in tasks for step in task_steps
             if not step.state.finished and step.begin is not None]
    roots = [proc for _, step in steps if (proc := _stored_process(step)) is not None]
    runs = {step.run_id for _, step in steps if step.run_id is not None}
    older = [(task_id, step.name) for task_id, step in steps if step.run_id is None]  # recorded before run markers

    def find() -> dict[int, psutil.Process]:
        found: dict[int, psutil.Process] = {}
        live_roots = [root.pid for root in roots if root.is_running()]  # is_running: not a reused pid
        marked = [pid for pids in treekill.scan_markers(runs).values() for pid in pids]
        for pid in (*live_roots, *marked):
            found.update(treekill.process_tree(pid))
        for task_id, name in older:
            found.update((proc.pid, proc) for proc in treekill.marked_trees(task_id, name))
        return found

    return treekill.kill_until_gone(find, grace, groups=[root.pid for root in roots]) if steps else []


def _stored_process(step: StepRecord) -> psutil.Process | None:
    """The step's saved process if it still runs (its create time tells a reused pid)."""
    if step.pid is None or step.pid_created is None:
        return None
    try:
        proc = psutil.Process(step.pid)
        same = abs(proc.create_time() - step.pid_created) < 0.01
    except psutil.Error:
        return None
    return proc if same else None
