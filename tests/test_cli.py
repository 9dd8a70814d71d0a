"""The installed console scripts: flags, help, run, ordered shutdown, restart recovery."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from .conftest import Client, console_script, gone, read_pid, sh, signal_when, wait_until


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)



def test_version_and_help():
    from osreapi import __version__

    assert run_cli("--version").stdout.strip() == __version__
    for args in (["help"], ["-h"], ["--help"]):
        out = run_cli(*args)
        assert out.returncode == 0
        for flag in ("--addr", "--key_expire", "--exec_timeout", "--timeout", "--max-requests", "--pool_size",
                     "--data_dir", "--lang", "--max_output", "--max_body"):
            assert flag in out.stdout
    run_help = run_cli("help", "run")
    assert run_help.returncode == 0 and "Run server" in run_help.stdout
    several = run_cli("help", "ls", "wait")  # `help [<command>...]`: each one's help (it gave ls alone)
    assert several.returncode == 0
    assert [line.split()[:2] for line in several.stdout.splitlines() if line.startswith("usage:")] == [
        ["usage:", "osreapi"], ["usage:", "osreapi"]] and "osreapi wait ID" in several.stdout
    assert run_cli("help", "ls", "bogus").returncode == 2  # one unknown command: nothing printed but the error


@pytest.mark.parametrize(
    "args, flag",
    [
        (["run", "--key_expire", "10"], "--key_expire"),
        (["--exec-timeout=abc", "run"], "--exec_timeout"),
        (["run", "--pool_size=-1"], "--pool_size"),
        (["run", "--pool-size", "0"], "--pool_size"),
        (["run", "--timeout=0"], "--timeout"),
        (["run", "--max-requests=-2"], "--max-requests"),
        (["run", "--max_output=lots"], "--max_output"),
        (["run", "--lang=fr"], "--lang"),
        (["run", "--addr=nohost"], "--addr"),
        (["run", "--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flag_values_exit_nonzero_naming_the_flag(args, flag, tmp_path):
    out = run_cli(*args, "--data_dir", str(tmp_path))
    assert out.returncode != 0
    assert flag in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_an_unusable_data_dir_is_one_line_naming_it_not_a_traceback(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with_file_for_workspace = tmp_path / "workspace-is-a-file"
    with_file_for_workspace.mkdir()
    (with_file_for_workspace / "workspace").write_text("")
    damaged = tmp_path / "damaged"
    (damaged / "db").mkdir(parents=True)
    (damaged / "db" / "data.mdb").write_text("not a database")
    for data_dir, says in ((a_file, "not a directory"), (a_file / "sub", "not a directory"),
                           (with_file_for_workspace, "not a directory"), (damaged, "database")):
        out = run_cli("run", "--addr", "127.0.0.1:0", "--data_dir", str(data_dir))
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert "--data_dir" in out.stderr and str(data_dir) in out.stderr and says in out.stderr


def test_a_server_whose_stdout_is_closed_serves_and_stops_on_sigterm(tmp_path):
    """`osreapi run | head -1` once head had exited: the listening line raised BrokenPipeError, the
    main thread died, and the server went on serving, deaf to SIGTERM, until killed."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads stdout
    log = tmp_path / "server.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([console_script(), "run", "--addr", "127.0.0.1:0", "--data_dir", str(tmp_path / "data")],
                                stdout=write_end, stderr=stderr, stdin=subprocess.DEVNULL)
    os.close(write_end)

    def serving() -> bool:
        listening = re.search(r"listening on (http://\S+)", log.read_text())
        return listening is not None and Client(listening.group(1)).get("/healthz").status == 200

    assert signal_when(proc, serving, signal.SIGTERM) == 0
    assert "stdout is closed" in log.read_text() and "Traceback" not in log.read_text()


def test_unknown_command_and_missing_command():
    assert run_cli("serve").returncode != 0
    missing = run_cli()
    assert missing.returncode == 2
    assert missing.stderr == "osreapi: error: expected a command (run, submit, get, ls, logs, wait, kill, pause, resume, rm)\n"


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "osreapi", "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip()


@pytest.mark.timeout(60)
def test_flags_in_every_spelling_and_the_alias(start_server, tmp_path):
    server = start_server("--key-expire=1h", "--exec_timeout", "200ms", "--pool-size=2", "--lang", "en",
                          "--max_output=1KiB", data_dir=tmp_path / "d", script="remote_executor")
    client = server.client
    task_id = client.submit([sh("sleep 5")])
    body = client.wait(task_id).json
    assert body["message"] == "0, execution failed" and body["data"][0]["state"] == "timeout"
    assert body["data"][0]["times"]["ttl"].startswith("59m")
    big = client.wait(client.submit([sh("head -c 5000 /dev/zero | tr '\\0' x")])).json["data"][0]["message"]
    assert "bytes truncated" in big and len(big) < 1200
    assert server.terminate() == 0


def finished_running_queued(start_server, data, running_steps: list, queued_text: str):
    """A pool-1 server holding a finished task ("earlier"), a running one and one queued behind it
    (which writes queued_text to out.txt); returns (server, finished id, running id, queued id)."""
    server = start_server("--pool_size=1", data_dir=data)
    finished = server.client.submit([sh("echo earlier")])
    server.client.wait(finished)
    running = server.client.submit(running_steps)
    queued = server.client.submit([sh(f"echo {queued_text} > out.txt")])
    return server, finished, running, queued


@pytest.mark.timeout(90)
def test_sigterm_interrupts_running_keeps_queued_and_restart_runs_them(start_server, tmp_path):
    data = tmp_path / "data"
    server, done, running, queued = finished_running_queued(
        start_server, data, [sh("sleep 300 & echo $! > bg.pid; sleep 300"), sh("echo never")], "queued-ran"
    )
    client = server.client
    workspace = data / "workspace" / running
    bg = read_pid(workspace / "bg.pid")
    assert client.get(f"/{queued}").json["data"][0]["state"] == "等待中"
    assert server.terminate() == 0
    assert wait_until(lambda: gone(bg), timeout=5)
    assert not (data / "workspace" / queued / "out.txt").exists()

    restarted = start_server("--pool_size=1", data_dir=data)
    client = restarted.client
    body = client.get(f"/{running}").json
    assert body["code"] == 1002 and body["message"] == "0, 执行失败"
    assert [(s["state"], s["code"]) for s in body["data"]] == [("已中断", -1), ("已跳过", -1)]
    listed = {t["id"]: t for t in client.get("/").json["data"]["tasks"]}
    assert listed[running]["state"] == "已中断" and listed[running]["code"] == 1002
    assert client.wait(queued).json["code"] == 0
    assert (data / "workspace" / queued / "out.txt").read_text() == "queued-ran\n"
    assert client.get(f"/{done}").json["data"][0]["message"] == "earlier\n"
    assert restarted.terminate() == 0


@pytest.mark.timeout(90)
def test_kill_9_then_restart_marks_interrupted_and_kills_leftovers(start_server, tmp_path):
    data = tmp_path / "data"
    server, earlier, task_id, queued = finished_running_queued(
        start_server, data, [sh("setsid sleep 300 & echo $! > escaped.pid; sleep 300")], "queued"
    )
    client = server.client
    workspace = data / "workspace" / task_id
    escaped = read_pid(workspace / "escaped.pid")
    # Only what is committed survives kill -9: wait until the running step is on disk.
    assert wait_until(lambda: client.get(f"/{task_id}").json["data"][0]["state"] == "执行中")
    leader = client.get(f"/{task_id}").json
    server.kill()
    assert psutil.pid_exists(escaped) and not gone(escaped)
    restarted = start_server("--pool_size=1", data_dir=data)
    assert wait_until(lambda: gone(escaped), timeout=10)
    client = restarted.client
    body = client.get(f"/{task_id}").json
    assert leader["code"] == 1001
    assert body["code"] == 1002 and body["data"][0]["state"] == "已中断", body
    assert client.get(f"/{earlier}").json["data"][0]["message"] == "earlier\n"
    assert client.wait(queued).json["code"] == 0
    assert (data / "workspace" / queued / "out.txt").read_text() == "queued\n"
    assert restarted.terminate() == 0


@pytest.mark.timeout(60)
def test_smoke_script_against_the_console_server(start_server):
    server = start_server()
    smoke = Path(__file__).resolve().parent.parent / "tools" / "smoke.sh"
    out = subprocess.run(["sh", str(smoke), server.url], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "smoke: all passed" in out.stdout
    assert server.terminate() == 0


def test_smoke_script_says_when_no_server_answers():
    """It printed "FAIL: failure message of FAIL: submit  answered" and five more lines of FAIL."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    smoke = Path(__file__).resolve().parent.parent / "tools" / "smoke.sh"
    out = subprocess.run(["sh", str(smoke), url], capture_output=True, text=True, timeout=50)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"smoke: cannot reach {url}")


@pytest.mark.timeout(60)
def test_expiry_through_the_console_server(start_server):
    server = start_server("--key_expire=1s")
    task_id = server.client.submit([sh("true")])
    assert server.client.wait(task_id).json["code"] == 0
    assert wait_until(lambda: server.client.get(f"/{task_id}").status == 404, timeout=10)
    assert json.loads(server.client.get("/").body)["data"]["total"] == 0
    assert server.terminate() == 0
