"""Hunt 19: crashes, races and a full disk on the storage paths of round 19 (the trash, the data
dir put back, the kept workspaces)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess

import pytest

from osreapi.errors import DataDirLost
from osreapi.vocabulary import State

from .conftest import sh, wait_until
from .test_storage import FakeClock


def _restore_a_copy(data_dir):
    """The data dir swapped under the running engine for a copy of itself (a backup restored): the
    same task ids, their workspaces and logs, another data.mdb."""
    copy = data_dir.with_name("backup")
    shutil.copytree(data_dir, copy, symlinks=True)
    shutil.rmtree(data_dir)
    copy.rename(data_dir)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["delete", "sweep"])
def test_a_data_dir_replaced_under_the_engine_keeps_its_workspaces(make_executor, tmp_path, how):
    """A data file replaced is "left as it is": writes are refused, never made over it. A delete
    or a sweep removed the task's files first and only then found the write refused: the restored
    data dir's workspaces (its records' logs) were emptied by an engine that no longer owned it."""
    clock = FakeClock()
    ex = make_executor(tmp_path / "data", key_expire="1h", clock=clock, sweep_interval=3600)
    task_id = ex.submit([sh("echo kept > file; echo logged")])
    assert ex.wait(task_id, 10).task.state is State.STOPPED
    _restore_a_copy(tmp_path / "data")
    workspace = ex.config.workspace_entry(task_id)
    if how == "delete":
        with pytest.raises(DataDirLost):
            ex.delete(task_id)
    else:
        clock.now += 3601
        ex.sweep()
    assert (workspace / "file").read_text() == "kept\n"
    assert (workspace / ".osreapi" / "step-0.log").read_text() == "logged\n"
    assert not (tmp_path / "data" / "trash").exists() or not any((tmp_path / "data" / "trash").iterdir())


@pytest.mark.timeout(90)
def test_a_server_whose_data_dir_another_took_leaves_that_ones_workspaces(start_server, tmp_path):
    """The data dir removed under a server, a second one started there before the first noticed
    (its lock had gone too): the first cannot take the lock again and refuses its writes, but its
    DELETE of an id the second also holds emptied the second's workspace first."""
    data_dir = tmp_path / "data"
    first = start_server(data_dir=data_dir)
    old = first.client.post("/?id=deploy-42", [sh("echo first")])
    assert old.status == 200 and first.client.wait("deploy-42").json["code"] == 0
    shutil.rmtree(data_dir)
    second = start_server(data_dir=data_dir)  # the lock went with the data dir: nothing keeps it out
    assert second.client.post("/?id=deploy-42", [sh("echo second > file")]).status == 200
    assert second.client.wait("deploy-42").json["code"] == 0
    refused = first.client.request("DELETE", "/deploy-42")
    assert refused.status == 507, refused.body
    workspace = data_dir / "workspace" / "deploy-42"
    assert (workspace / "file").read_text() == "second\n"
    assert second.client.get("/deploy-42").json["code"] == 0


@pytest.mark.timeout(90)
def test_a_database_removed_on_a_full_disk_is_put_back_once_a_delete_frees_room(make_executor, small_disk):
    """db/ removed on a disk the tasks' files filled: the copy that puts it back finds no room.
    The data dir is still this engine's (its lock is), so a delete removes the task's files all
    the same, and the room they free takes the copy."""
    data_dir = small_disk / "data"
    ex = make_executor(data_dir)
    tasks = [ex.submit([sh("head -c 3000000 /dev/zero > big")]) for _ in range(4)]
    for task_id in tasks:
        assert ex.wait(task_id, 20).task.state is State.STOPPED
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=1M", "count=40"], check=False, capture_output=True)
    shutil.rmtree(data_dir / "db")
    for task_id in tasks:
        with contextlib.suppress(DataDirLost):
            ex.delete(task_id)
        assert not (ex.config.workspace_entry(task_id) / "big").exists()  # its room freed either way
    assert wait_until(lambda: (data_dir / "db" / "data.mdb").is_file(), timeout=20)
    assert all(ex.get(task_id) is None for task_id in tasks[1:])
