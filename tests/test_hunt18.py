"""Hunt 18: what the host can do to the engine (a damaged store, a data dir taken away, limits,
signals, odd step environments), each as an operator meets it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from osreapi import Executor
from osreapi.errors import StoreDamaged

from .conftest import console_script, sh


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
