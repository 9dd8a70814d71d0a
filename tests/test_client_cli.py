"""The terminal commands through the installed console script against a real server: exit
statuses, --json envelopes, YAML input, live output, and the progress display on a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from osreapi.cli import CLIENT_COMMANDS
from osreapi.client import cli as client_cli
from osreapi.http.app import HttpSettings

from .certs import make_pki
from .conftest import Client, console_script, sh, signal_when, wait_until


def osreapi(url: str, *args: str, stdin: str | None = None, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OSREAPI_")}
    environ.update({"OSREAPI_URL": url, **(env or {})})
    return subprocess.run([console_script(), *args], input=stdin, capture_output=True, text=True,
                          env=environ, timeout=timeout)


def without_ttl(envelope: dict) -> dict:
    """The envelope with each step's ttl left out: it counts down between two reads."""
    steps = [{**step, "times": {k: v for k, v in step["times"].items() if k != "ttl"}} for step in envelope["data"]]
    return {**envelope, "data": steps}


def test_help_lists_the_client_commands():
    out = subprocess.run([console_script(), "help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for command in CLIENT_COMMANDS:
        assert f"\n  {command} " in out.stdout
    assert tuple(client_cli.COMMANDS) == CLIENT_COMMANDS
    usage = subprocess.run([console_script(), "help", "submit"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 0 and "--hosts_file" in usage.stdout and "--follow" in usage.stdout


def test_submit_wait_exit_statuses(client: Client):
    ok = osreapi(client.url, "submit", "-e", "echo hello", "-e", "uname -s", "--wait", "--lang", "en")
    assert ok.returncode == 0, ok.stderr
    assert "step 1" in ok.stderr  # progress lines on stderr, the table on stdout
    assert [line.split()[2] for line in ok.stdout.splitlines()[2:]] == ["stopped", "stopped"]
    failed = osreapi(client.url, "submit", "-e", "echo oops; exit 3", "--wait", "--lang", "en")
    assert failed.returncode == 1 and "oops" in failed.stdout and "exit status 3" in failed.stdout
    slow = osreapi(client.url, "submit", "-e", "sleep 30", "--wait", "--timeout", "300ms")
    assert slow.returncode == 124 and "--timeout" in slow.stderr
    task_id = slow.stderr.split()[1].rstrip(":")
    assert osreapi(client.url, "kill", task_id).returncode == 0
    assert osreapi(client.url, "wait", task_id, "--timeout", "20s").returncode == 1  # killed


def test_usage_and_connection_errors_exit_2(client: Client, tmp_path: Path):
    nothing = osreapi(client.url, "submit", "--lang", "en")
    assert nothing.returncode == 2 and "nothing to submit" in nothing.stderr
    assert "没有可提交的步骤" in osreapi(client.url, "submit").stderr  # the default language is the server's
    bad_file = tmp_path / "steps.yaml"
    bad_file.write_text("- command_type: sh\n  comand_content: echo\n")
    bad = osreapi(client.url, "submit", str(bad_file), "--lang", "en")
    assert bad.returncode == 2 and "step 0" in bad.stderr and "command_content" in bad.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("- [unclosed\n")
    assert osreapi(client.url, "submit", str(broken)).returncode == 2
    down = osreapi("http://127.0.0.1:9", "ls")
    assert down.returncode == 2 and "127.0.0.1:9" in down.stderr
    assert osreapi(client.url, "submit", "--no-such-flag").returncode == 2
    no_time = osreapi(client.url, "ls", "--request_timeout", "0")
    assert no_time.returncode == 2 and "--request_timeout" in no_time.stderr and "more than 0" in no_time.stderr
    assert osreapi(client.url, "get", "no-such-task").returncode == 1


def test_a_steps_file_that_is_not_utf8_empty_or_not_a_list_is_a_usage_error(tmp_path: Path):
    """Read before any connection: no server needed, and none must be reached."""
    binary, empty, mapping = tmp_path / "steps.bin", tmp_path / "empty.yaml", tmp_path / "map.json"
    binary.write_bytes(b"\xff\xfe[]")
    empty.write_text("")
    mapping.write_text('{"command_type": "sh"}')
    cut = tmp_path / "cut.json"
    cut.write_text('[{"command_type": "sh",\n  "command_content": ')
    for path, says in ((binary, "cannot read: not UTF-8 text (byte 0xff at offset 0)"), (empty, "is empty: no steps"),
                       (mapping, "expected a list of steps, got object"),
                       (cut, "not valid JSON or YAML: expected the node content, but found '<stream end>' (line 2, column 22)")):
        out = osreapi("http://127.0.0.1:9", "submit", str(path), "--lang", "en")
        assert out.returncode == 2, out.stderr
        assert out.stderr == f"osreapi: error: {path}: {says}\n"


def test_a_tls_file_that_is_missing_or_not_pem_is_a_usage_error_naming_it(tmp_path: Path):
    """They were tracebacks (FileNotFoundError, ssl.SSLError), exit 1. Read before any connection."""
    pki = make_pki(tmp_path)
    cert, key, missing = str(pki["client"].cert), str(pki["client"].key), str(tmp_path / "missing.pem")
    cases = [
        (["--tls_ca", missing], f"CA bundle {missing}: cannot read: No such file or directory"),
        (["--tls_ca", key], f"CA bundle {key}: holds no PEM certificate"),
        (["--tls_cert", missing, "--tls_key", key], f"client certificate {missing} and key {key}: cannot read"),
        (["--tls_cert", key, "--tls_key", cert], f"client certificate {key} and key {cert}: not a PEM certificate"),
    ]
    for flags, says in cases:
        out = osreapi("https://127.0.0.1:9", "ls", *flags)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"osreapi: error: {says}") and len(out.stderr.splitlines()) == 1


def test_a_reader_that_stops_early_gets_no_traceback(client: Client):
    """`osreapi ls --json | head -c 10` printed a BrokenPipeError traceback."""
    client.wait(client.submit([sh("echo hi")]))
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe fails, as after `head` has exited
    try:
        out = subprocess.run([console_script(), "ls", "--json", "--url", client.url], stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert out.returncode == 128 + 13 and out.stderr == ""


def test_ctrl_c_while_watching_says_the_task_goes_on_and_how_to_stop_it(client: Client, tmp_path: Path):
    errors = tmp_path / "stderr"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OSREAPI_")}
    with open(errors, "w") as stderr:
        proc = subprocess.Popen([console_script(), "submit", "-e", "sleep 60", "--id", "watched", "--follow", "--lang", "en",
                                 "--url", client.url], stdout=subprocess.DEVNULL, stderr=stderr, env=environ)
    assert signal_when(proc, lambda: "running" in errors.read_text(), signal.SIGINT) == 130
    assert errors.read_text().endswith(
        "osreapi: stopped watching; task watched goes on on the server (osreapi kill watched stops it)\n")
    assert client.get("/watched?lang=en").json["data"][0]["state"] == "running"  # the task indeed goes on
    assert osreapi(client.url, "kill", "watched").returncode == 0


def test_with_json_a_refusal_is_the_servers_envelope_on_stdout(client: Client, tmp_path: Path):
    """A refused kill or rm printed nothing on stdout: a script reading the envelope had none."""
    task_id = client.submit([sh("true")])
    client.wait(task_id)
    ended = osreapi(client.url, "kill", task_id, "--json", "--lang", "en")
    assert ended.returncode == 1
    assert json.loads(ended.stdout) == {"code": 400, "message": "the task has ended (stopped); kill does not apply"}
    missing = osreapi(client.url, "rm", "no-such-task", "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout) == {"code": 1003, "message": "id不存在, 沒有数据"}
    typo = tmp_path / "typo.json"
    typo.write_text('[{"command_type": "sh", "comand_content": "true"}]')
    malformed = osreapi(client.url, "submit", str(typo), "--json", "--lang", "en")
    assert malformed.returncode == 2 and json.loads(malformed.stdout)["code"] == 400


def test_yaml_json_and_stdin_files_with_json_output(client: Client, tmp_path: Path):
    yaml_file = tmp_path / "steps.yaml"
    yaml_file.write_text("- name: build\n  command_type: sh\n  command_content: echo built\n"
                         "- name: test\n  command_type: sh\n  command_content: echo tested\n  depends_on: [build]\n")
    submitted = osreapi(client.url, "submit", str(yaml_file), "--json", "--id", "from-yaml")
    assert submitted.returncode == 0
    assert json.loads(submitted.stdout) == {"code": 0, "message": "成功", "data": {"id": "from-yaml", "count": 2}}
    done = osreapi(client.url, "wait", "from-yaml", "--json", "--timeout", "20s")
    assert done.returncode == 0
    envelope = json.loads(done.stdout)
    assert without_ttl(envelope) == without_ttl(client.get("/from-yaml").json)  # the server's, unchanged
    assert [s["message"] for s in envelope["data"]] == ["built\n", "tested\n"]
    piped = osreapi(client.url, "submit", "-", "--wait", "--json", stdin=json.dumps([sh("echo piped")]))
    assert piped.returncode == 0 and json.loads(piped.stdout)["data"][0]["message"] == "piped\n"
    listed = osreapi(client.url, "ls", "--json", "--sort", "end", "--lang", "en")
    tasks = json.loads(listed.stdout)["data"]["tasks"]
    assert listed.returncode == 0 and "from-yaml" in [t["id"] for t in tasks]
    assert {t["state"] for t in tasks} == {"stopped"}


def test_ls_get_logs_and_control_in_plain_lines(client: Client, tmp_path: Path):
    gate = tmp_path / "gate"
    task_id = client.submit([sh("echo one; echo two", name="talk"),
                             sh(f"while [ ! -e {gate} ]; do sleep 0.01; done", name="hold")])
    assert wait_until(lambda: client.get(f"/{task_id}?lang=en").json["data"][-1]["state"] == "running")
    listed = osreapi(client.url, "ls", "--lang", "en")
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["id", "state", "steps"] and row.split()[:3] == [task_id, "running", "2"]
    assert osreapi(client.url, "logs", task_id, "talk").stdout == "one\ntwo\n"
    assert osreapi(client.url, "logs", task_id, "0", "--offset", "4").stdout == "two\n"
    assert osreapi(client.url, "pause", task_id, "hold", "--lang", "en").stdout == "success\n"
    twice = osreapi(client.url, "pause", task_id, "hold", "--lang", "en")
    assert twice.returncode == 1 and "paused" in twice.stderr
    busy = osreapi(client.url, "rm", task_id)
    assert busy.returncode == 1 and task_id in busy.stderr  # 409: it still runs
    assert osreapi(client.url, "resume", task_id, "hold").returncode == 0
    gate.touch()
    shown = osreapi(client.url, "wait", task_id, "--lang", "en")
    assert shown.returncode == 0 and "talk" in shown.stdout and "hold" in shown.stdout
    assert osreapi(client.url, "get", task_id).returncode == 0
    assert osreapi(client.url, "rm", task_id).returncode == 0
    assert osreapi(client.url, "get", task_id).returncode == 1


def test_follow_prefixes_step_names_only_when_steps_may_overlap(client: Client, tmp_path: Path):
    gate = tmp_path / "gate"
    parallel = osreapi(client.url, "submit", "--async", "--follow", "--lang", "en",
                       "-e", f"echo left; while [ ! -e {gate} ]; do sleep 0.01; done; echo left-done",
                       "-e", f"echo right; touch {gate}; echo right-done", "--id", "par")
    assert parallel.returncode == 0, parallel.stderr
    lines = parallel.stdout.splitlines()
    for expected in ("[par-0] left", "[par-0] left-done", "[par-1] right", "[par-1] right-done"):
        assert expected in lines
    sequential = osreapi(client.url, "submit", "--follow", "-e", "echo first", "-e", "echo second", "--id", "seq")
    assert sequential.returncode == 0
    lines = sequential.stdout.splitlines()
    assert "first" in lines and "second" in lines and not any(line.startswith("[seq-") for line in lines)


def test_token_from_a_file_or_the_environment(make_server, tmp_path: Path):
    server = make_server(settings=HttpSettings(token="cli-secret"))
    token_file = tmp_path / "token"
    token_file.write_text("cli-secret\n")
    token_file.chmod(0o600)
    assert osreapi(server.url, "ls", "--token_file", str(token_file)).returncode == 0
    assert osreapi(server.url, "ls", env={"OSREAPI_TOKEN": "cli-secret"}).returncode == 0
    refused = osreapi(server.url, "ls")
    assert refused.returncode == 2 and "401" in refused.stderr
    assert "缺少或错误的令牌" in refused.stderr  # the server's message, in the default language
    assert "missing or wrong token" in osreapi(server.url, "ls", "--lang", "en").stderr


def test_the_servers_messages_come_in_the_commands_language(client: Client, tmp_path: Path):
    """--lang (default zh) is the language of what the server says too, on every command."""
    task_id = client.submit([sh("echo hi")])
    client.wait(task_id, timeout=20)
    for args in (["logs", "no-such-task", "0"], ["pause", "no-such-task"], ["rm", "no-such-task"]):
        assert osreapi(client.url, *args).stderr == "osreapi: error: id不存在, 沒有数据\n", args
        assert osreapi(client.url, *args, "--lang", "en").stderr == "osreapi: error: id does not exist, no data\n"
    no_step = osreapi(client.url, "logs", task_id, "7")
    assert no_step.returncode == 1 and no_step.stderr == "osreapi: error: 该任务没有步骤 '7' (以序号或名称指定)\n"
    past_end = osreapi(client.url, "logs", task_id, "0", "--offset", "99")
    assert past_end.returncode == 2 and "超出了输出的末尾" in past_end.stderr
    hosts_file = tmp_path / "hosts"
    hosts_file.write_bytes(b"\xffweb1\n")
    not_text = osreapi(client.url, "get", task_id, "--hosts_file", str(hosts_file))
    assert not_text.returncode == 2
    assert not_text.stderr == f"osreapi: error: --hosts_file: cannot read {hosts_file}: not UTF-8 text (byte 0xff at offset 0)\n"


def read_pty(fd: int, until: bytes, deadline: float) -> bytes:
    """Read a pseudo-terminal until `until` appears (or EOF); bounded by the deadline."""
    seen = b""
    while until not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not data:
            break
        seen += data
    return seen


@pytest.mark.slow
def test_progress_display_on_a_terminal(client: Client, tmp_path: Path):
    gate = tmp_path / "gate"
    task_id = client.submit([sh("true"), sh(f"while [ ! -e {gate} ]; do sleep 0.01; done")])
    leader, follower = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OSREAPI_", "NO_COLOR"))}
    environ.update({"OSREAPI_URL": client.url, "TERM": "xterm-256color", "COLUMNS": "160"})
    proc = subprocess.Popen([console_script(), "wait", task_id, "--lang", "en"], stdin=follower,
                            stdout=follower, stderr=follower, env=environ, close_fds=True)
    os.close(follower)
    try:
        deadline = time.monotonic() + 30
        live = read_pty(leader, b"done 1/2", deadline)
        assert b"done 1/2" in live and b"running 1" in live and b"failed 0" in live
        assert b"\x1b[" in live  # drawn with terminal control sequences, not plain lines
        gate.touch()
        rest = read_pty(leader, b"\xe2\x94\x83", deadline)  # the table's box drawing (heavy vertical)
        assert proc.wait(timeout=30) == 0
        assert b"done 2/2" in rest or b"done 2/2" in live + rest
        assert b"stopped" in rest
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
