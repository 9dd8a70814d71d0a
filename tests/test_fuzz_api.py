"""schemathesis drives the live server from its own /openapi.json: no 5xx, no response off its schema.

The server runs with harmless interpreters (sh, bash, python3 all being `true`) so that fuzzed
scripts are accepted and "run" as real processes without doing anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ServerProcess


@pytest.fixture
def harmless_server(tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sh", "bash", "python3"):
        (bin_dir / name).symlink_to("/bin/true")
    monkeypatch.setenv("PATH", str(bin_dir))
    server = ServerProcess(tmp_path / "data", script=str(Path(sys.executable).parent / "osreapi"))
    monkeypatch.undo()
    yield server
    server.close()


@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error_and_no_schema_break(harmless_server, tmp_path):
    schemathesis = Path(sys.executable).parent / "schemathesis"
    out = subprocess.run(
        [
            str(schemathesis), "run", f"{harmless_server.url}/openapi.json",
            "--max-examples", "20",
            "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--request-timeout", "10",
            "--seed", "1",
            "--exclude-path", "/events",  # an endless stream by design
        ],
        capture_output=True, text=True, timeout=280, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"},
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout.split("SUMMARY")[-1].lower()
    listed = harmless_server.client.get("/").json
    assert listed["data"]["total"] > 0  # fuzzed submissions were accepted and ran
    assert harmless_server.client.get("/healthz").status == 200
    assert harmless_server.terminate() == 0
