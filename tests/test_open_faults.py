"""Engine faults left open in issue 8, each reproduced against main before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from osreapi.storage.database import Database

from .conftest import sh


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
