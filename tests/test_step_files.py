"""A step's files in its workspace (.osreapi/step-N.sh and .log) are the step's to change: what the
engine reads of them never waits on what a step put there."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from osreapi.vocabulary import State

from .conftest import sh, wait_until

PLANT_FIFO = "rm -f .osreapi/step-0.log && mkfifo .osreapi/step-0.log"


def _release(fifo) -> None:
    with contextlib.suppress(OSError):  # a reader blocked in its open (the old code) is let go
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.timeout(60)
def test_reading_a_running_step_whose_log_is_a_fifo_answers(client):
    """GET /<id> reads a running step's output from its log: open() of a FIFO put there waited for
    a writer, holding the worker thread (every such GET one more) for as long as the step ran."""
    task_id = client.submit([sh(f"echo before; {PLANT_FIFO} && sleep 30")])
    fifo = client.executor.config.workspace(task_id) / ".osreapi" / "step-0.log"
    assert wait_until(lambda: fifo.exists() and stat.S_ISFIFO(fifo.lstat().st_mode), timeout=10)
    try:
        answer = client.get(f"/{task_id}")
        assert answer.status == 200 and answer.json["code"] == 1001
        assert client.executor.get(task_id).steps[0].state is State.RUNNING
    finally:
        _release(fifo)
        client.request("PUT", f"/{task_id}?action=kill")


@pytest.mark.timeout(60)
def test_a_long_output_whose_log_became_a_fifo_still_ends_its_step(client):
    """An output over what the engine keeps in memory is read back from the log at the step's end:
    a FIFO there held the step's worker for ever, and the task never ended."""
    task_id = client.submit([sh(f"head -c 40000 /dev/zero | tr '\\0' x; {PLANT_FIFO}; echo done")])
    fifo = client.executor.config.workspace(task_id) / ".osreapi" / "step-0.log"
    try:
        assert client.wait(task_id, timeout=20).json["code"] == 0
    finally:
        _release(fifo)
