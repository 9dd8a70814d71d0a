"""The server's command line and logs: unknown help topics, the real bound address, quiet refusals."""

from __future__ import annotations

import re
import subprocess

import pytest

from .conftest import console_script, sh, wait_until


def test_help_of_an_unknown_command_is_an_error():
    out = subprocess.run([console_script(), "help", "bogus"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "unknown command 'bogus'" in out.stderr
    known = subprocess.run([console_script(), "help", "run"], capture_output=True, text=True, timeout=30)
    assert known.returncode == 0 and "Run server" in known.stdout


def test_bad_read_timeout_names_the_flag():
    out = subprocess.run([console_script(), "run", "--read_timeout=10"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "read_timeout" in out.stderr


@pytest.mark.timeout(60)
def test_start_up_line_shows_the_address_really_bound(tmp_path):
    proc = subprocess.Popen(
        [console_script(), "run", "--addr", "0.0.0.0:0", "--data_dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(30)
    assert re.search(r"listening on http://0\.0\.0\.0:\d+ ", line), line


@pytest.mark.timeout(60)
def test_a_rejected_control_action_logs_one_line_not_a_traceback(start_server):
    server = start_server()
    client = server.client
    task_id = client.submit([sh("sleep 30")])
    assert wait_until(lambda: client.get(f"/{task_id}?lang=en").json["data"][0]["state"] == "running")
    assert client.request("PUT", f"/{task_id}?action=resume").status == 400
    assert client.request("PUT", f"/{task_id}?action=kill").status == 200
    server.terminate()
    log = server.log.read_text()
    assert "ActionRejected: the task is not paused" in log
    assert "Traceback" not in log
