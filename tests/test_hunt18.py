"""Hunt 18: what the host can do to the engine (a damaged store, a data dir taken away, limits,
signals, odd step environments), each as an operator meets it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from osreapi import Executor
from osreapi.errors import StoreDamaged
from osreapi.http.app import HttpSettings
from osreapi.storage.database import Database

from .conftest import console_script, sh, wait_until


def _store_with_tasks(data_dir: Path, count: int = 5) -> Path:
    """A data dir whose database holds `count` finished tasks; returns its data.mdb."""
    executor = Executor(data_dir, kill_grace=0.5)
    try:
        for task_id in [executor.submit([sh(f"echo {i}")]) for i in range(count)]:
            executor.wait(task_id, 20)
    finally:
        executor.close()
    return data_dir / "db" / "data.mdb"


def test_a_data_file_cut_short_is_refused_with_what_to_do_and_kept(tmp_path):
    """A data.mdb cut short (a copy or restore that stopped) was mapped as it was, and the first
    read past its end killed the server with SIGBUS (exit 135), saying nothing."""
    data_file = _store_with_tasks(tmp_path / "data")
    whole = data_file.read_bytes()
    data_file.write_bytes(whole[: len(whole) // 2])
    cut = data_file.read_bytes()
    done = subprocess.run(
        [console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(tmp_path / "data")],
        check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(data_file) in lines[0] and "cut short" in lines[0] and "backup" in lines[0]
    assert data_file.read_bytes() == cut  # nothing changed that a restore could use
    with pytest.raises(StoreDamaged, match="cut short"):  # the embedded engine says so too
        Executor(tmp_path / "data")
    data_file.write_bytes(whole)  # restored whole: it opens, its records there
    executor = Executor(tmp_path / "data")
    try:
        assert len(executor.list()) == 5
    finally:
        executor.close()


def _second_server(data_dir: Path) -> tuple[int, str]:
    """Start another server on data_dir: (its exit status, its first line); one that serves is
    stopped (status None)."""
    proc = subprocess.Popen([console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "listening on" in line:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
        return None, line
    status = proc.wait(30)
    proc.stdout.close()
    return status, line


def test_a_data_dir_removed_while_serving_is_written_again_whole_and_locked(start_server, tmp_path):
    """The data dir removed under a running server (by hand, by a cleaner of old files in /tmp):
    LMDB went on writing to a file that was in no directory any more, every later submit was
    acknowledged and then lost at the next start, and a second server started on the same data
    dir (its lock file had gone too)."""
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir)
    before = server.client.submit([sh("echo before")])
    assert server.client.wait(before).json["code"] == 0
    shutil.rmtree(data_dir)
    after = server.client.submit([sh("echo after")])  # acknowledged once on disk: in the data dir again
    assert server.client.wait(after).json["code"] == 0
    assert (data_dir / "db" / "data.mdb").is_file()
    status, line = _second_server(data_dir)
    assert status == 1 and "in use" in line, (status, line)  # the lock was taken again
    assert server.terminate() == 0
    restarted = start_server(data_dir=data_dir)
    for task_id, word in ((before, "before"), (after, "after")):
        answer = restarted.client.get(f"/{task_id}").json
        assert answer["code"] == 0 and answer["data"][0]["message"] == f"{word}\n", answer


def test_a_data_dir_that_cannot_be_made_again_refuses_saying_why_and_recovers(make_server, tmp_path):
    """While the data dir cannot be made again (a file is where it was), submits answer 507
    saying the data dir was lost, reads go on, a step that ends meanwhile keeps its end; once the
    path is free, everything is written there and the engine takes submits again."""
    data_dir, started, flag = tmp_path / "data", tmp_path / "started", tmp_path / "go"
    client = make_server(settings=HttpSettings(lang="en"), data_dir=data_dir)
    done = client.submit([sh("echo done")])
    client.wait(done)
    running = client.submit([sh(f"touch {started}; while [ ! -e {flag} ]; do sleep 0.02; done; echo ended")])
    assert wait_until(started.exists)
    shutil.rmtree(data_dir)
    data_dir.write_text("not a directory\n")
    refused = client.post("/", [sh("echo x")])
    assert refused.status == 507 and "data dir was removed" in refused.json["message"], refused.body
    assert client.get("/healthz").json["data"]["status"] == "data dir lost"
    assert client.get(f"/{done}").json["code"] == 0  # reads go on
    flag.touch()  # the step ends while its end cannot be stored: kept, written once it can be
    assert wait_until(lambda: client.executor._services.pool.stats()[1] == 0)
    data_dir.unlink()
    assert wait_until(lambda: client.get(f"/{running}").json["code"] == 0, timeout=20), client.get(f"/{running}").json
    assert client.get(f"/{running}").json["data"][0]["message"].startswith("ended\n")  # (its log file is lost)
    assert wait_until(lambda: client.get("/healthz").json["data"]["status"] == "ok")  # (a check stands 0.1 s)
    again = client.submit([sh("echo again")])
    assert client.wait(again).json["code"] == 0
    assert (data_dir / "db" / "data.mdb").is_file() and re.fullmatch(r"\d+\n", (data_dir / "lock").read_text())


def test_a_workspace_root_taken_away_fails_the_steps_saying_why(make_server, caplog):
    """The workspace root replaced by a file (or made read-only) while the server runs: every task
    submitted then was "interrupted" (a state that means the server stopped), its record saying
    "the engine failed", and each logged a traceback as a bug of the engine. Its steps cannot
    start: they end failed, saying why, and the engine goes on once the root is back."""
    client = make_server(settings=HttpSettings(lang="en"))
    root = client.executor.config.workspace_root
    shutil.rmtree(root)
    root.write_text("not a directory\n")
    for _ in range(3):
        answer = client.wait(client.submit([sh("echo never")])).json
        step = answer["data"][0]
        assert answer["code"] == 1002 and step["state"] == "stopped" and step["code"] == 127, answer
        assert "cannot start step" in step["message"] and "Not a directory" in step["message"], step
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    root.unlink()
    assert client.wait(client.submit([sh("echo back")])).json["data"][0]["message"] == "back\n"


def test_an_idle_engine_puts_back_a_removed_data_dir_at_its_next_sweep(make_executor, tmp_path):
    """Nothing submitted: the sweep's write notices the removal (the lock went with the data dir)."""
    executor = make_executor(sweep_interval=0.1)
    done = executor.submit([sh("echo kept")])
    executor.wait(done, 20)
    shutil.rmtree(tmp_path / "data")
    assert wait_until(lambda: (tmp_path / "data" / "db" / "data.mdb").is_file() and (tmp_path / "data" / "lock").is_file())
    status, line = _second_server(tmp_path / "data")
    assert status == 1 and "in use" in line, (status, line)


def test_a_health_probe_puts_back_a_removed_data_dir_at_once(make_executor, tmp_path):
    """An idle engine noticed a removed data dir only at its next sweep (30 s by default): a second
    server started meanwhile took the data dir. A health probe (an orchestrator polls it) looks too."""
    executor = make_executor(sweep_interval=3600)
    done = executor.submit([sh("echo kept")])
    executor.wait(done, 20)
    shutil.rmtree(tmp_path / "data")
    assert executor.check_health() == "ok"
    assert (tmp_path / "data" / "db" / "data.mdb").is_file() and (tmp_path / "data" / "lock").is_file()
    status, line = _second_server(tmp_path / "data")
    assert status == 1 and "in use" in line, (status, line)


@pytest.mark.parametrize("put", [lambda key: key.mkdir(), lambda key: key.symlink_to("/etc/hostname")],
                         ids=["a directory", "a symbolic link"])
def test_an_audit_key_that_cannot_be_read_is_a_data_dir_error_not_the_address(put, tmp_path):
    """The audit key unreadable (a directory, a link, a data dir made read-only) answered "cannot
    serve on 127.0.0.1:0: [Errno 21] Is a directory: 14": the address blamed, a descriptor named."""
    data_dir = tmp_path / "data"
    _store_with_tasks(data_dir, count=1)
    put(data_dir / "audit.key")
    done = subprocess.run([console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(data_dir)],
                          check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"osreapi: error: --data_dir: {data_dir / 'audit.key'}: cannot "), done.stderr
    assert "serve on" not in done.stderr and "Traceback" not in done.stderr
    Executor(data_dir).close()  # the engine it had started let go of the data dir


def test_steps_beyond_what_the_descriptor_limit_allows_wait_instead_of_failing(start_server):
    """Under `ulimit -n 64` with --pool_size 30, 20 parallel steps started together and each one's
    start took descriptors the others needed: not one ran, every step "cannot start step: [Errno
    24] Too many open files". The pool is fitted to the limit: every step runs, a few at a time."""
    server = start_server("--lang=en", fd_limit=64)
    client = server.client
    client.wait(client.submit([sh("true")]))  # what the first step opens for good (/dev/null) is open

    def descriptors() -> dict[str, str]:
        found = {}
        for fd in os.listdir(f"/proc/{server.proc.pid}/fd"):
            with contextlib.suppress(OSError):
                found[fd] = os.readlink(f"/proc/{server.proc.pid}/fd/{fd}")
        return found

    idle = descriptors()
    task_id = client.submit([sh(f"sleep 0.1; echo {i}") for i in range(20)], query="?async=true")
    answer = client.wait(task_id, timeout=60).json
    assert answer["code"] == 0, [(s["state"], s["message"][:80]) for s in answer["data"] if s["code"]]
    assert [s["message"] for s in answer["data"]] == [f"{i}\n" for i in range(20)]
    assert wait_until(lambda: len(descriptors()) <= len(idle)), (idle, descriptors())
    assert server.terminate() == 0
    log = server.log.read_text()
    assert "pool size 30 needs about" in log and "may open 64" in log and "Traceback" not in log, log[-2000:]


def test_workspaces_older_than_a_new_database_are_kept(tmp_path, caplog):
    """A data dir whose db/ was moved aside (as the error for a data file cut short says to) or
    whose data.mdb was emptied started with a new database, and removed every workspace as an
    orphan of a crash: the step logs, all that was left of those tasks. Only this database's own
    orphans go; older ones are moved out of the workspace root into <data_dir>/kept, and said
    (left in place, a new task of the same id ran among their files)."""
    data_dir = tmp_path / "data"
    _store_with_tasks(data_dir, count=3)
    old = sorted(path.name for path in (data_dir / "workspace").iterdir())
    assert len(old) == 3
    (data_dir / "db").rename(tmp_path / "db.aside")
    (data_dir / "workspace" / old[0] / "made-by-the-old-task").write_text("old")
    executor = Executor(data_dir)
    try:
        assert sorted(path.name for path in (data_dir / "kept").iterdir()) == old
        assert list((data_dir / "workspace").iterdir()) == []
        assert any("moved 3 workspaces" in r.getMessage() for r in caplog.records)
        executor.submit([sh("ls -A")], task_id=old[0])  # the id of a kept one: a workspace of its own
        assert executor.wait(old[0], 20).steps[0].output == ".osreapi\n"
        orphan = executor.submit([sh("echo mine")])
        executor.wait(orphan, 20)
    finally:
        executor.close()
    db = Database(data_dir / "db")  # its record deleted, its workspace left (a crash between the two)
    try:
        db.delete_task(db.get_task(orphan))
    finally:
        db.close()
    Executor(data_dir).close()  # the same database: its own orphan goes
    assert sorted(path.name for path in (data_dir / "workspace").iterdir()) == [old[0]]
    assert sorted(path.name for path in (data_dir / "kept").iterdir()) == old


def test_a_data_file_replaced_while_serving_is_left_as_it_is_and_said(make_server, tmp_path):
    """Another data.mdb put in place of the open one (a backup restored under a running server) is
    never overwritten: writes are refused saying so; moved away, the engine writes its own back."""
    client = make_server(settings=HttpSettings(lang="en"), data_dir=tmp_path / "data")
    kept = client.submit([sh("echo kept")])
    client.wait(kept)
    other = _store_with_tasks(tmp_path / "other", count=1)
    data_file = tmp_path / "data" / "db" / "data.mdb"
    data_file.unlink()
    shutil.copy(other, data_file)
    theirs = data_file.read_bytes()
    refused = client.post("/", [sh("echo x")])
    assert refused.status == 507 and "data dir was removed or replaced" in refused.json["message"], refused.body
    assert data_file.read_bytes() == theirs
    data_file.rename(tmp_path / "theirs.mdb")
    again = client.submit([sh("echo again")])
    assert client.wait(again).json["code"] == 0 and client.get(f"/{kept}").json["code"] == 0
    assert (tmp_path / "theirs.mdb").read_bytes() == theirs


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_an_address_space_limit_starts_a_smaller_map_and_runs_steps(start_server):
    """Under `ulimit -v` 1.5 GB the server could not start: LMDB maps its whole 2 GiB map at once
    ("cannot open the database: Cannot allocate memory"). The map starts smaller and grows."""
    limit = 1_500_000_000
    server = start_server("--lang=en", limits=(f"--as={limit}",))
    task_id = server.client.submit([sh(f"echo {i}") for i in range(10)], query="?async=true")
    assert server.client.wait(task_id, timeout=60).json["code"] == 0
    assert server.terminate() == 0
    assert "the database's map starts at" in server.log.read_text()


GROW_WITHOUT_ROOM = """
import json, os, resource, sys
from pathlib import Path
import lmdb
from osreapi.storage.database import Database
db = Database(Path(sys.argv[1]), map_size=32 << 20)
used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (used + (16 << 20), resource.RLIM_INFINITY))
refused, blob = 0, bytes(1 << 20)
for i in range(48):  # 48 MiB into a 32 MiB map that cannot grow
    try:
        db._write(lambda txn: txn.put(b"k%d" % i, blob, db=db._meta))
    except lmdb.Error:
        refused += 1
with db._reading() as txn:
    kept = sum(1 for i in range(48) if txn.get(b"k%d" % i, db=db._meta) is not None)
print(json.dumps({"refused": refused, "kept": kept}))
"""


def test_a_map_that_cannot_grow_refuses_writes_and_the_process_lives(tmp_path):
    """LMDB unmaps its map before it maps a bigger one: when no address space was left for that,
    py-lmdb gave the environment up, and every read and write after was refused, for good (the
    server answered 503 to every read). It is opened again at its old size; writes go on while it
    has room, then are refused, and reads go on."""
    done = subprocess.run([sys.executable, "-c", GROW_WITHOUT_ROOM, str(tmp_path / "db")], check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    result = json.loads(done.stdout)
    assert result["refused"] > 0 and result["kept"] + result["refused"] == 48 and result["kept"] >= 16, result
    assert "cannot grow past 32 MiB" in done.stderr


def test_a_workspace_made_while_the_data_dir_is_gone_never_makes_the_data_dir(tmp_path):
    """A runner makes its task's workspace while the store writes its first starts: the data dir
    removed under the server was made again there, with the umask's mode (0755: other users could
    list the tasks), and the store's put-back kept that mode. Only the workspace root is made
    again here; the data dir is the store's to make (0700)."""
    from osreapi.executor import process

    data_dir = tmp_path / "data"
    with pytest.raises(FileNotFoundError):
        process.prepare_workspace(data_dir / "workspace" / "task")
    assert not data_dir.exists()
    data_dir.mkdir(mode=0o700)
    process.prepare_workspace(data_dir / "workspace" / "task")
    assert stat.S_IMODE((data_dir / "workspace").stat().st_mode) == 0o700
    assert (data_dir / "workspace" / "task" / ".osreapi").is_dir()
