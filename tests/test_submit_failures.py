"""A submission whose task the engine cannot start says what happened to the task: stored and
interrupted, or neither stored nor run."""

from __future__ import annotations

import pytest

from osreapi.actors.task import TaskActor

from .conftest import sh
from .test_hunt16 import fail_runnable


@pytest.mark.timeout(60)
def test_a_made_id_submit_whose_runner_fails_before_storing_it_says_it_was_not_stored(make_server, monkeypatch):
    """The runner failed twice before its first save: nothing of the task exists. The answer said
    the task "ends interrupted", which no task did."""
    fail_runnable(monkeypatch, "faulty", 3)
    client = make_server(call_timeout=20)
    answer = client.post("/?lang=en", [sh("true", name="faulty")])
    assert answer.status == 500
    assert answer.json["message"] == "the task's runner failed inside the engine; the task was neither stored nor run"
    assert client.get("/").json["data"]["tasks"] == []


@pytest.mark.timeout(60)
def test_a_made_id_task_without_a_runner_thread_is_stored_and_ends_interrupted_saying_why(make_executor, monkeypatch):
    """No thread for a runner: the submit raised (a 500 with a traceback) and nothing was kept,
    where a named task was stored and ended interrupted. Now both are stored and end so."""

    def no_thread(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(TaskActor, "start", no_thread)
    ex = make_executor()
    for task_id in (ex.submit([sh("true")]), ex.submit([sh("true")], task_id="named")):
        result = ex.wait(task_id, 20)
        assert result.task.state.value == "interrupted", result
        assert "can't start new thread" in result.steps[0].output
