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


def test_a_step_that_prints_nothing_leaves_no_log_and_one_that_prints_has_its_own(executor):
    """The log is made at the step's first byte: a silent step costs no file (a create was a tenth
    of a silent step's CPU on ext4 after deletions)."""
    task_id = executor.submit([sh("true", name="quiet"), sh("echo said", name="loud")])
    result = executor.wait(task_id, 20)
    assert [step.output for step in result.steps] == ["", "said\n"]
    control = executor.config.workspace(task_id) / ".osreapi"
    assert not (control / "step-0.log").exists()
    assert (control / "step-1.log").read_bytes() == b"said\n"
    assert stat.S_IMODE((control / "step-1.log").stat().st_mode) == 0o600
    assert "".join(executor.logs(task_id, "quiet")) == ""  # read as empty


@pytest.mark.timeout(60)
@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_what_a_step_puts_in_place_of_its_log_before_printing_is_not_written_through(executor, tmp_path, planted):
    """Before its first byte a step can put a link or a FIFO where its log goes: the engine neither
    writes through the link (its target is left as it was) nor waits for a reader of the FIFO; the
    record keeps the output and says why the log has none."""
    target = tmp_path / "target"
    target.write_bytes(b"untouched")
    make = f"ln -s {target} .osreapi/step-0.log" if planted == "link" else "mkfifo .osreapi/step-0.log"
    result = executor.wait(executor.submit([sh(f"{make}; echo printed")]), 20)
    step = result.steps[0]
    assert step.code == 0 and step.output.startswith("printed\n")
    assert "no log file (the log could not be written:" in step.output  # and none dropped from here
    assert "bytes of output dropped" not in step.output, step.output
    assert target.read_bytes() == b"untouched"


@pytest.mark.timeout(60)
def test_a_long_output_whose_log_became_a_link_is_not_read_through_it(executor, tmp_path):
    """An output over what is kept in memory is read back from the log at the step's end: a link
    the step put there was followed, and the record held its target's bytes as the step's output."""
    secret = tmp_path / "secret"
    secret.write_text("not the step's output")
    result = executor.wait(executor.submit([sh(
        f"head -c 40000 /dev/zero | tr '\\0' x; rm .osreapi/step-0.log; ln -s {secret} .osreapi/step-0.log")]), 20)
    assert result.steps[0].code == 0
    assert "not the step's output" not in result.steps[0].output
    assert "the output could not be read" in result.steps[0].output


@pytest.mark.parametrize("planted", ["link", "directory"])
def test_a_log_a_step_replaced_with_a_link_or_a_directory_reads_as_empty_not_a_server_error(client, tmp_path, planted):
    """GET /<id>/<step>/log of such a step answered 500 (a directory failed its read; a link, not
    followed, its open): it reads as a missing log does, and the record keeps the output."""
    secret = tmp_path / "secret"
    secret.write_text("not the step's output")
    replace = f"ln -s {secret}" if planted == "link" else "mkdir"
    made = "for i in $(seq 1000); do [ -e .osreapi/step-0.log ] && break; sleep 0.01; done"  # at its first byte
    task_id = client.submit([sh(f"echo hi; {made}; rm .osreapi/step-0.log; {replace} .osreapi/step-0.log")])
    assert client.wait(task_id).json["code"] == 0
    for query in ("", "?follow=true"):
        answer = client.get(f"/{task_id}/0/log{query}")
        assert (answer.status, answer.body) == (200, b""), query
    assert client.get(f"/{task_id}/0").json["data"]["message"] == "hi\n"


def test_an_output_whose_log_the_full_disk_could_not_make_stays_in_the_record(tmp_path):
    """A disk with no inode left refuses the log's create at the first byte: the output, kept in
    memory, was dropped from the record too (read back from a log that does not exist)."""
    import subprocess

    from osreapi.executor.reaper import LogSink

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=8", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (root needed)")
    try:
        for n in range(64):  # every inode taken
            try:
                (disk / f"f{n}").touch()
            except OSError:
                break
        read_end, write_end = os.pipe()
        sink = LogSink(read_end, disk / "step-0.log", 1 << 20)
        os.write(write_end, b"hello\n")
        os.close(write_end)
        sink.close()
        kept = sink.small_output()
        assert kept is not None and kept.startswith(b"hello\n") and b"(the disk was full)" in kept, kept
        assert b"bytes of output dropped" not in kept, kept  # they are all here
        assert not (disk / "step-0.log").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
