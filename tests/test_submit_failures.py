"""A submission whose task the engine cannot start says what happened to the task: stored and
interrupted, or neither stored nor run."""

from __future__ import annotations

import threading

import pytest

from osreapi import spec
from osreapi.actors.messages import CreateTask, StartTask
from osreapi.actors.reply import Reply
from osreapi.actors.task import TaskActor
from osreapi.errors import NotStored
from osreapi.records import StepRecord, TaskRecord

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


class _Hold:
    """A message that keeps a runner's thread until `go` is set (see hold_runners)."""

    def __init__(self) -> None:
        self.taken, self.go = threading.Event(), threading.Event()


def hold_runners(monkeypatch) -> None:
    """Task runners told a _Hold keep their thread on it until its `go` is set: what is told to
    them meanwhile (a stop, then a start) waits in their mailbox in that order."""
    on_receive = TaskActor.on_receive

    def holding(self, message):
        if isinstance(message, _Hold):
            message.taken.set()
            message.go.wait(20)
            return None
        return on_receive(self, message)

    monkeypatch.setattr(TaskActor, "on_receive", holding)


@pytest.mark.timeout(60)
def test_a_create_left_in_a_stopped_runners_mailbox_is_answered_not_stored(make_executor, monkeypatch):
    """A runner that stops with a made-id task's start (and create) still in its mailbox never
    handles it: the submitter was answered only when its wait ran out (30 s by default). Its
    create now fails at once: neither stored nor run."""
    hold_runners(monkeypatch)
    ex = make_executor(call_timeout=120)
    runner = TaskActor.start(ex._services, ex._supervisor)
    hold = _Hold()
    runner.tell(hold)
    assert hold.taken.wait(10)
    runner.stop(block=False)  # queued behind the hold: the start told next is never handled
    task = TaskRecord(id="never-stored", mode="sequential", count=1, accepted=0.0)
    create = CreateTask(task, (StepRecord(index=0, name="a"),), tuple(spec.build_steps(task.id, [sh("true")], ex.limits)), Reply())
    runner.tell(StartTask(task, create.steps, create.specs, create))
    hold.go.set()
    with pytest.raises(NotStored):
        create.reply.get(timeout=20)
    assert ex.get("never-stored") is None
