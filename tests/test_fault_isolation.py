"""A fault (a bug, not an I/O error the code expects) in one of the engine's long-lived parts is the
answer to the piece of work it met, never the end of that part: the store (the single writer),
the reaper (which reports every step's end) and the stream hub (which serves every long wait and
follow) stopped, and with them the engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from osreapi.errors import DiskFull
from osreapi.executor.reaper import LogSink
from osreapi.http.streams import StreamHub
from osreapi.storage.database import Database

from .conftest import sh, wait_until
from .test_mend16 import failing_sync  # noqa: F401 - a fixture


def fail_once(monkeypatch, owner: type, name: str, when: Callable[..., bool] = lambda *args, **kwargs: True) -> list[int]:
    """Inject one fault (a RuntimeError: a bug, not an I/O error) into owner.name, at its first
    call for which when(*args) holds; returns [calls left to fail] (0 once it has failed)."""
    original, left = getattr(owner, name), [1]

    def failing(*args, **kwargs):
        if left[0] > 0 and when(*args, **kwargs):
            left[0] -= 1
            raise RuntimeError("injected fault")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    return left


@pytest.mark.timeout(60)
def test_a_save_that_fails_with_a_bug_is_refused_and_the_store_goes_on(make_executor, monkeypatch):
    left = fail_once(monkeypatch, Database, "save_many", lambda db, changes: any(c[0] == "faulty" for c in changes))
    ex = make_executor(call_timeout=20)
    ex.submit([sh("echo never", name="a")], task_id="faulty")  # stored first; its start's save fails
    result = ex.wait("faulty", 20)
    assert left == [0]
    assert result.task.state.finished, result
    step = result.steps[0]
    assert step.state.value == "interrupted" and step.output == "step not started: its start could not be recorded"
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, 20).steps[0].output == "after\n"
    assert ex.check_health() == "ok"


@pytest.mark.timeout(90)
def test_a_fault_in_the_stores_retry_is_logged_and_the_store_goes_on(failing_sync, make_executor, tmp_path, monkeypatch):
    """A fault anywhere in a message told to the store (here its retry after a failed flush)
    stopped it: every later submit was refused for good. It is logged, and the store goes on."""
    switch = failing_sync(tmp_path / "data")
    ex = make_executor(call_timeout=20)
    switch.fail()
    with pytest.raises(DiskFull):
        ex.submit([sh("true")])
    left = fail_once(monkeypatch, Database, "probe")
    switch.heal()
    assert wait_until(lambda: left == [0], timeout=20)  # the retry met the fault
    after = ex.submit([sh("echo after")])
    assert ex.wait(after, 20).steps[0].output == "after\n"
    assert wait_until(lambda: ex.check_health() == "ok", timeout=20)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["pump", "close"])
def test_a_fault_while_the_reaper_copies_output_ends_that_step_and_the_reaper_goes_on(make_executor, monkeypatch, where):
    """The reaper thread reports every step's end: one fault while it copied or closed a step's
    output (a bug, not an I/O error the sink handles) ended the thread, and no step ended any more."""
    left = fail_once(monkeypatch, LogSink, where)
    ex = make_executor()
    first = ex.wait(ex.submit([sh("echo first")]), 20)
    assert left == [0] and first.task.state.finished, first
    after = ex.wait(ex.submit([sh("echo after")]), 20)
    assert after.steps[0].output == "after\n", after


@pytest.mark.timeout(60)
def test_a_fault_while_the_stream_hub_serves_one_stream_ends_that_stream_only(make_server, monkeypatch):
    """One thread serves every wait past its first 20 ms, followed log and event feed: a fault
    while it served one stream ended the thread, and no such stream was answered any more."""
    left = fail_once(monkeypatch, StreamHub, "_pull")
    client = make_server()
    first = client.submit([sh("sleep 0.3")])
    try:  # the stream the fault met: ended (the connection closed, the answer cut short)
        client.get(f"/{first}?wait=30s")
    except Exception:  # noqa: BLE001 - any way a cut-short answer shows is fine here
        pass
    assert left == [0]
    second = client.submit([sh("sleep 0.3; echo second")])
    answer = client.get(f"/{second}?wait=30s")
    assert answer.status == 200 and answer.json["code"] == 0, answer.body[:200]
