"""Faults found by review12 in the session's changes (issue 9's list)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest

from osreapi.errors import CaseConflict
from osreapi.vocabulary import State

from .conftest import no_descriptor_free, sh, wait_until
from .test_front12 import case_folding_dir  # noqa: F401 - a fixture
from .test_storage import FakeClock

# A tree deeper than Python's recursion limit: shutil.rmtree raised RecursionError on it.
DEEP_TREE = "i=0; while [ $i -lt 1200 ]; do mkdir d && cd d || exit 1; echo x > f; i=$((i+1)); done"


def test_a_workspace_deeper_than_the_recursion_limit_is_deleted_swept_and_replaced(make_executor):
    """A step can make its workspace a thousand directories deep. shutil.rmtree recursed once per
    level and raised RecursionError, which its error handler never sees: a delete failed (500) and
    the record stayed for good, every sweep stopped at that task, and its id posted again once
    expired raised inside the store's write and stopped the store actor (no task stored after)."""
    clock = FakeClock()
    ex = make_executor(key_expire="1h", clock=clock, sweep_interval=3600)
    try:
        deleted, swept, replaced = (ex.submit([sh(DEEP_TREE)], task_id=name) for name in ("del", "swept", "again"))
        for task_id in (deleted, swept, replaced):
            assert ex.wait(task_id, 30).task.state == State.STOPPED
        ex.delete(deleted)
        assert not ex.config.workspace(deleted).exists() and ex._db.get_task(deleted) is None
        clock.now += 3601
        ex.submit([sh("ls")], task_id="again")  # the expired task's files go first, then it is replaced
        assert ex.wait("again", 30).task.state == State.STOPPED
        assert ex.wait("again", 30).steps[0].output.strip() == ""
        assert ex.sweep() == 1  # "swept"; "again" is the new task's, not expired
        assert not ex.config.workspace(swept).exists() and ex._db.get_task(swept) is None
        later = ex.submit([sh("echo alive")])  # the store still takes tasks
        assert ex.wait(later, 30).task.state == State.STOPPED
        assert ex._discarder.wait_idle(60)  # the trees moved into the trash are removed there too
        assert list((ex.config.data_dir / "trash").iterdir()) == []
    finally:  # what a failure (or a close before the trash is empty) leaves, pytest's own clean-up
        ex.close()  # (rmtree) cannot remove: it fails the whole session at its end
        subprocess.run(["rm", "-rf", "--", str(ex.config.data_dir)], check=False, timeout=60)


def test_an_expired_task_replaced_while_it_waits_keeps_its_workspace_name(case_folding_dir, make_executor):  # noqa: F811
    # (the executor is closed, its sleep killed, before the file system is unmounted)
    """On a root that folds case, a submission takes its workspace's name at once (mkdir), even
    while its task waits in the queue. An expired id posted again was replaced with its old
    workspace removed whole: until its step ran, the name was free, and an id equal to it under
    case folding was accepted into the same directory. The old files go; the directory stays."""
    clock = FakeClock()
    ex = make_executor(data_dir=case_folding_dir.parent, key_expire="1h", clock=clock, pool_size=1)
    ex.submit([sh("echo old > made-by-old")], task_id="Build-1")
    assert ex.wait("Build-1", 30).task.state == State.STOPPED
    clock.now += 3601
    ex.submit([sh("sleep 30")], task_id="runner")  # the pool's one slot: the next task waits
    assert ex.submit([sh("ls")], task_id="Build-1") == "Build-1"  # replaces the expired one
    with pytest.raises(CaseConflict) as refused:
        ex.submit([sh("true")], task_id="BUILD-1")
    assert refused.value.existing == "Build-1"
    assert [path.name for path in case_folding_dir.iterdir() if path.name.lower() == "build-1"] == ["Build-1"]
    assert not (case_folding_dir / "Build-1" / "made-by-old").exists()  # the old task's files are gone
    assert ex.get("BUILD-1") is None


# Run as root without the capability to override file modes: as any other user, rmtree cannot
# empty a directory without write permission.
_WITHOUT_DAC_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                         "--inh-caps", "-dac_override,-dac_read_search"]
_READ_ONLY_TREES = """
import json, sys
from osreapi import Executor
from osreapi.vocabulary import State
now = [1_000_000.0]
ex = Executor(sys.argv[1], kill_grace=0.5, key_expire="1h", clock=lambda: now[0])
step = {"command_type": "sh", "command_content": sys.argv[2]}
try:
    for task_id in ("deleted", "again"):
        ex.submit([step], task_id=task_id)
        assert ex.wait(task_id, 30).task.state == State.STOPPED
    ex.delete("deleted")
    now[0] += 3601
    ex.submit([{"command_type": "sh", "command_content": "ls -A"}], task_id="again")
    listed = ex.wait("again", 30).steps[0].output.split()
    print(json.dumps({"deleted_left": ex.config.workspace("deleted").exists(), "again_lists": listed}))
finally:
    ex.close()
"""


def test_read_only_directories_a_step_left_are_removed_with_its_workspace(tmp_path):
    """Go's module cache is read-only (dirs 0555), and steps `chmod -R a-w` what they keep: rmtree
    could not unlink in those directories (but as root), so a deleted or replaced task's files
    stayed for good while its record went (and the start's orphan clean-up failed the same way)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("drops root's DAC override with setpriv")
    made = "mkdir -p mod/a/b locked && echo x > mod/a/b/f && chmod -R a-w mod && chmod 000 locked"
    try:
        ran = subprocess.run([*_WITHOUT_DAC_OVERRIDE, sys.executable, "-c", _READ_ONLY_TREES, str(tmp_path / "data"), made],
                             capture_output=True, text=True, timeout=120, check=False)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout.splitlines()[-1]) == {"deleted_left": False, "again_lists": [".osreapi"]}
    finally:  # pytest's clean-up has the override back: it removes what a failure leaves
        subprocess.run(["chmod", "-R", "u+rwx", str(tmp_path)], check=False, timeout=60)


_DEEPER_THAN_DESCRIPTORS = """
import json, resource, sys
from osreapi import Executor
from osreapi.vocabulary import State
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
ex = Executor(sys.argv[1], kill_grace=0.5)
try:
    ex.submit([{"command_type": "sh", "command_content": sys.argv[2]}], task_id="deep")
    assert ex.wait("deep", 30).task.state == State.STOPPED
    try:
        ex.delete("deep")
        print(json.dumps({"refused": None, "left": ex.config.workspace("deep").exists()}))
    except OSError as exc:
        print(json.dumps({"refused": exc.errno, "left": ex.config.workspace("deep").exists()}))
finally:
    ex.close()
"""


def test_a_tree_deeper_than_the_descriptors_left_is_not_taken_for_a_shortage(tmp_path):
    """rmtree holds a descriptor per level: under an embedding program's 256 (or the usual 1024),
    a step's tree 400 levels deep failed with EMFILE, taken for a shortage of descriptors: the
    delete was refused (503) on every try and every sweep stopped at that task, for ever."""
    deep = "i=0; while [ $i -lt 400 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done"
    try:
        ran = subprocess.run([sys.executable, "-c", _DEEPER_THAN_DESCRIPTORS, str(tmp_path / "data"), deep],
                             capture_output=True, text=True, timeout=120, check=False)
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert json.loads(ran.stdout.splitlines()[-1]) == {"refused": None, "left": False}
    finally:
        subprocess.run(["rm", "-rf", "--", str(tmp_path / "data")], check=False, timeout=60)


def _answer_of(client, path: str, timeout: float = 10) -> bytes:
    """What the server sends for GET path within `timeout` (all of it, or what came by then)."""
    answer = b""
    with socket.create_connection((client.host, client.port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def test_a_fifo_in_place_of_a_log_holds_up_no_other_log(client):
    """A step can put a FIFO where its log was (the engine writes to the file it opened). Opening it
    for a follower blocked until a writer came, in the stream hub's thread, so every stream stopped,
    and under the lock every log open now takes turns on (with the intake's reserve descriptor):
    another task's log could not be read at all, even plainly."""
    fifo_step = "rm -f .osreapi/step-0.log && mkfifo .osreapi/step-0.log && sleep 30"
    holder = client.submit([sh(fifo_step)])
    fifo = client.executor.config.workspace(holder) / ".osreapi" / "step-0.log"
    assert wait_until(lambda: fifo.exists() and stat.S_ISFIFO(fifo.lstat().st_mode), timeout=10)
    other = client.submit([sh("echo hello-from-other")])
    client.wait(other)
    follower = socket.create_connection((client.host, client.port), timeout=10)
    try:
        follower.sendall(f"GET /{holder}/0/log?follow=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert b"200 OK" in follower.recv(65536)  # its head: the hub now reads the log
        assert b"hello-from-other" in _answer_of(client, f"/{other}/0/log")
        assert b"hello-from-other" in _answer_of(client, f"/{other}/0/log?follow=true")
    finally:
        follower.close()
        with contextlib.suppress(OSError):  # a reader blocked in its open is let go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        client.request("PUT", f"/{holder}?action=kill")


def test_a_delete_while_no_descriptor_is_free_logs_no_traceback(make_executor, caplog):
    """A workspace left for want of descriptors is no failure of the engine: the store logged each
    one with its traceback. (It is now moved aside and removed once descriptors free.)"""
    ex = make_executor()
    task_id = ex.submit([sh("mkdir -p a/b && echo x > a/b/file")])
    assert ex.wait(task_id, 10).task.state == State.STOPPED
    with caplog.at_level(logging.INFO, logger="osreapi"), no_descriptor_free():
        ex.delete(task_id)
    assert ex._discarder.wait_idle(10)
    assert [record for record in caplog.records if record.exc_info] == []
    assert ex.get(task_id) is None
