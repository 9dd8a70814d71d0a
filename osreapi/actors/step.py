"""StepActor: owns one OS process tree from start to reaped exit, then stops."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pykka

from ..executor import process, treekill
from ..executor.output import read_output, with_exit_status
from ..records import StepRecord
from ..spec import StepSpec
from ..vocabulary import (
    STEP_CODE_KILLED,
    STEP_CODE_TIMEOUT,
    STEP_CODE_UNFINISHED,
    State,
)
from .delivery import tell_if_alive
from .messages import (
    DeadlineReached,
    PauseStep,
    ProcessExited,
    ResumeStep,
    RunStep,
    StepEnded,
    StepUpdated,
    StopStep,
)
from .services import Services
from .timers import TimerHandle

log = logging.getLogger(__name__)
EXIT_CANNOT_START = 127


class StepActor(pykka.ThreadingActor):
    """Started holding a pool slot, which it releases exactly once when its process is gone."""

    def __init__(
        self,
        services: Services,
        task_ref: pykka.ActorRef,
        task_id: str,
        workspace: Path,
        record: StepRecord,
        spec: StepSpec,
    ) -> None:
        super().__init__()
        self._services = services
        self._task_ref = task_ref
        self._task_id = task_id
        self._workspace = workspace
        self._record = record
        self._spec = spec
        self._proc: subprocess.Popen | None = None
        self._deadline: TimerHandle | None = None
        self._stop_state: State | None = None  # why we killed it, if we did
        self._slot_held = True
        self._ended = False
        self._limit = spec.timeout if spec.timeout is not None else services.config.exec_timeout
        self._active_since: float | None = None  # monotonic; None while paused or not started
        self._active_total = 0.0  # seconds run before the last pause: paused time does not count

    def on_receive(self, message: Any) -> Any:
        match message:
            case RunStep():
                self._run()
            case ProcessExited(returncode=rc, at=at):
                self._exited(rc, at)
            case DeadlineReached():
                if self._active_since is not None and self._remaining() <= 0:
                    self._kill(State.TIMEOUT)
            case PauseStep():
                return self._pause()
            case ResumeStep():
                return self._resume()
            case StopStep(state=state):
                self._kill(state)
            case _:
                log.warning("step: unexpected message %r", message)
        return None

    def on_failure(self, *args: Any) -> None:
        log.error("step %s of task %s failed inside the engine", self._record.index, self._task_id)
        if self._proc is not None and self._proc.poll() is None:
            self._kill(State.INTERRUPTED)
        self._end(self._record.with_(state=State.INTERRUPTED, code=STEP_CODE_UNFINISHED, end=self._services.clock()))

    def _run(self) -> None:
        begin = self._services.clock()
        try:
            self._proc = process.start_step(self._workspace, self._task_id, self._record.index, self._spec)
        except OSError as exc:
            self._end(
                self._record.with_(
                    state=State.STOPPED,
                    code=EXIT_CANNOT_START,
                    output=with_exit_status(f"cannot start step: {exc}", EXIT_CANNOT_START),
                    begin=begin,
                    end=self._services.clock(),
                )
            )
            return
        self._services.metrics.steps_started.inc()
        created = _create_time(self._proc.pid)
        self._record = self._record.with_(state=State.RUNNING, begin=begin, pid=self._proc.pid, pid_created=created)
        ref = self.actor_ref
        self._services.reaper.watch(self._proc, lambda rc, at: tell_if_alive(ref, ProcessExited(rc, at)))
        self._active_since = time.monotonic()
        self._arm_deadline()
        self._task_ref.tell(StepUpdated(self._record))

    def _remaining(self) -> float:
        active = self._active_total
        if self._active_since is not None:
            active += time.monotonic() - self._active_since
        return self._limit - active

    def _arm_deadline(self) -> None:
        if self._limit > 0:
            self._deadline = self._services.scheduler.call_later(max(0.0, self._remaining()), self._deadline_reached)

    def _pause(self) -> StepRecord | None:
        """Suspend the tree; answer the paused record (None if there is nothing to pause)."""
        if self._proc is None or self._active_since is None or self._stop_state is not None:
            return None
        treekill.signal_tree(self._proc.pid, signal.SIGSTOP, extra=self._marked())
        self._active_total += time.monotonic() - self._active_since
        self._active_since = None
        if self._deadline is not None:
            self._deadline.cancel()
        self._record = self._record.with_(state=State.PAUSED)
        return self._record

    def _resume(self) -> StepRecord | None:
        if self._proc is None or self._active_since is not None or self._stop_state is not None:
            return None
        treekill.signal_tree(self._proc.pid, signal.SIGCONT, extra=self._marked())
        self._active_since = time.monotonic()
        self._arm_deadline()
        self._record = self._record.with_(state=State.RUNNING)
        return self._record

    def _marked(self):
        return treekill.marked_processes(self._task_id, self._spec.name)

    def _deadline_reached(self) -> None:
        tell_if_alive(self.actor_ref, DeadlineReached())

    def _kill(self, state: State) -> None:
        if self._proc is None or self._proc.returncode is not None or self._stop_state is not None:
            return
        self._stop_state = state
        treekill.kill_tree(
            self._proc.pid, grace=self._services.config.kill_grace, own_child=self._proc, extra=self._marked()
        )

    def _exited(self, returncode: int, at: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._release_slot()
        output = read_output(process.log_path(self._workspace, self._record.index), self._services.config.max_output)
        match self._stop_state:
            case State.TIMEOUT:
                state, code = State.TIMEOUT, STEP_CODE_TIMEOUT
                output = with_exit_status(_add_line(output, "step timed out: process tree killed"), code)
            case State.KILLED:
                state, code = State.KILLED, STEP_CODE_KILLED
                output = with_exit_status(_add_line(output, "step killed on request"), code)
            case State.INTERRUPTED:
                state, code = State.INTERRUPTED, STEP_CODE_UNFINISHED
                output = _add_line(output, "step interrupted: the server stopped")
            case _:
                state, code = State.STOPPED, process.exit_code(returncode)
                if code != 0:
                    output = with_exit_status(output, code)
        self._end(self._record.with_(state=state, code=code, output=output, end=at))

    def _end(self, record: StepRecord) -> None:
        if self._ended:
            return
        self._ended = True
        self._release_slot()
        self._services.metrics.step_ended(record)
        tell_if_alive(self._task_ref, StepEnded(record))
        self.stop()

    def _release_slot(self) -> None:
        if self._slot_held:
            self._slot_held = False
            self._services.pool.release()


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _add_line(output: str, line: str) -> str:
    if output and not output.endswith("\n"):
        output += "\n"
    return output + line
