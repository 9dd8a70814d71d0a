"""Engine faults left open in issue 8, each reproduced against main before its fix."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from osreapi.storage.database import Database

from .conftest import Client, gone, read_pid, sh, wait_until


def open_fds() -> list[str]:
    """Where this process's descriptors point (the in-process server is this process)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return targets


def holders(target: str) -> list[int]:
    """Pids of the processes with a descriptor on `target` (e.g. "pipe:[1234]")."""
    found = []
    for proc in psutil.process_iter():
        try:
            if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{proc.pid}/fd")):
                found.append(proc.pid)
        except OSError:
            pass
    return found


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.timeout(60)
def test_a_kept_daemon_writing_to_its_output_ends_its_step_and_holds_nothing_of_the_server(client: Client):
    """keep_background: the step ends with its main process; its log is closed then, and the
    daemon's later output is discarded outside the server: no descriptor of the server stays for
    it, and the daemon lives on through its writes (no SIGPIPE)."""
    client.wait(client.submit([sh("echo warm-up")]))
    before = len(open_fds())
    daemon_loop = "(while :; do echo tick; echo x >> ticks; sleep 0.05; done) & echo $! > daemon.pid; echo started"
    task_id = client.submit([sh(daemon_loop, keep_background=True)])
    assert client.wait(task_id).json["code"] == 0  # the step ended with its main process
    workspace = client.executor.config.workspace(task_id)
    daemon = read_pid(workspace / "daemon.pid")
    pipe = os.readlink(f"/proc/{daemon}/fd/1")
    try:
        assert pipe.startswith("pipe:"), pipe
        assert wait_until(lambda: pipe not in open_fds(), timeout=10), "the server still reads the daemon's output"
        assert wait_until(lambda: len(open_fds()) <= before, timeout=10), (before, open_fds())
        written = lines(workspace / "ticks")
        assert wait_until(lambda: lines(workspace / "ticks") >= written + 10, timeout=10)  # it goes on writing
        assert not gone(daemon)
        assert "started" in client.get(f"/{task_id}/0/log").body.decode()
    finally:
        psutil.Process(daemon).kill()
    # Whatever discards the daemon's output ends with it: nothing holds the pipe any more.
    assert wait_until(lambda: not holders(pipe), timeout=10, interval=0.2), holders(pipe)


@pytest.mark.timeout(60)
def test_a_workspace_left_by_a_crash_between_delete_and_rmtree_is_removed_at_start(start_server, tmp_path):
    """kill -9 after a deletion's commit and before its rmtree leaves a workspace with no record:
    the next start removes it, and nothing else (other tasks, names no task can have, a link)."""
    data = tmp_path / "data"
    server = start_server(data_dir=data)
    gone_id = server.client.submit([sh("echo left > file")])
    kept_id = server.client.submit([sh("echo kept > file")])
    for task_id in (gone_id, kept_id):
        assert server.client.wait(task_id).json["code"] == 0
    assert server.terminate() == 0
    db = Database(data / "db")  # the crash window: the record is gone, the directory stays
    try:
        db.delete_task(db.get_task(gone_id))
        db.sync()
    finally:
        db.close()
    root = data / "workspace"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    (root / "not a task id").mkdir()  # no task can have this name: not ours to remove
    (root / "linked-task").symlink_to(outside, target_is_directory=True)
    (root / "stray.txt").write_text("a file, not a workspace")

    restarted = start_server(data_dir=data)
    assert not (root / gone_id).exists()
    assert (root / kept_id / "file").read_text() == "kept\n"
    assert restarted.client.get(f"/{kept_id}").status == 200
    assert (root / "not a task id").is_dir() and (root / "stray.txt").is_file()
    assert (root / "linked-task").is_symlink() and (outside / "precious").read_text() == "x"
    assert restarted.terminate() == 0
