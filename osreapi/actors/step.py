"""StepActor: a long-lived worker of the pool; it owns one OS process tree at a time.

A free pool slot is an idle StepActor. The TaskActor hands it a RunStep (after the step's start is
on disk); it starts the process, reports StepStarted, and when the reaper reports the exit it
reports StepEnded and returns itself to the pool. Kills are handed to the janitor (TERM, grace,
KILL, rescans on a timer), so no handler here ever waits.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import pykka

from ..errors import ActionRejected
from ..executor import process, treekill
from ..executor.output import add_line, read_output, with_exit_status
from ..executor.reaper import LogSink
from ..vocabulary import (
    STEP_CODE_KILLED,
    STEP_CODE_TIMEOUT,
    STEP_CODE_UNFINISHED,
    State,
)
from .base import EngineActor
from .delivery import tell_if_alive
from .messages import (
    DeadlineReached,
    PauseRefused,
    ProcessExited,
    RunDropped,
    RunStep,
    SignalStep,
    StartNotRecorded,
    StepEnded,
    StepStarted,
    StopStep,
)
from .reply import Reply, arrive
from .services import Services
from .timers import TimerHandle

log = logging.getLogger(__name__)
EXIT_CANNOT_START = 127
PID_SAVE_DELAY = 0.2  # seconds a step runs before its pid is reported to be saved
RUNNER_GONE = "step interrupted: its task runner failed inside the engine"


class StepActor(EngineActor):
    def __init__(self, services: Services) -> None:
        super().__init__()
        self._services = services
        self._job: RunStep | None = None
        self._proc = None
        self._sink: LogSink | None = None
        self._deadline: TimerHandle | None = None
        self._announce: TimerHandle | None = None  # the pid's report to the task, once it has run a moment
        self._stop_state: State | None = None  # why we killed it, if we did
        self._stop_reason: str | None = None  # an interrupted step's line, when not the server's stop
        self._limit = 0.0
        self._active_since: float | None = None  # monotonic; None while paused
        self._active_total = 0.0  # seconds run before the last pause: paused time does not count
        self._last_run = 0
        # Control that overtook its run's RunStep (that one comes through the store, after the
        # start is on disk): applied as the run starts.
        self._early: dict[int, list[SignalStep | StopStep]] = {}
        self._refused: list[SignalStep] = []  # pauses of this run's step alone that came after its exit

    def on_receive(self, message: Any) -> Any:
        """A failure (a bug) is the handled request's answer, not left to its caller's timeout; the
        worker then stops, and on_failure ends its run."""
        try:
            return self._receive(message)
        except Exception as exc:
            reply = getattr(message, "reply", None)
            if isinstance(reply, Reply):
                reply.fail(exc)
            raise

    def _receive(self, message: Any) -> Any:
        match message:
            case RunStep():
                self._run(message)
            case ProcessExited(run=run, returncode=rc, at=at) if self._is_current(run):
                self._exited(rc, at)
            case DeadlineReached(run=run) if self._is_current(run):
                if self._active_since is not None and self._remaining() <= 0:
                    self._kill(State.TIMEOUT)
            case SignalStep(pause=True, alone=True) if self._has_exited(message.run):
                # Not paused: refused by its runner behind the step's end (a pause of the task as
                # a whole is still true of the task, and is answered as below).
                if self._is_current(message.run):
                    self._refused.append(message)  # told after the end, in _end
                else:
                    self._refuse_pause(message)
            case SignalStep(run=run, pause=pause, reply=reply):
                if self._is_current(run):
                    if self._signal(pause) and pause and message.alone and self._has_exited(run):
                        # It exited between the check above and the signal: what the signal
                        # stopped (its orphans) goes on, and the pause is refused behind its end.
                        self._signal(False)
                        self._refused.append(message)
                    else:
                        arrive(reply)
                elif run > self._last_run:
                    self._early.setdefault(run, []).append(message)
                else:
                    arrive(reply)  # the run has ended: nothing to signal
            case StopStep(run=run, state=state, reason=reason):
                if self._is_current(run):
                    self._kill(state, reason)
                elif run > self._last_run:
                    self._early.setdefault(run, []).append(message)
            case RunDropped(run=run):
                self._answer_parked(self._early.pop(run, []))
            case ProcessExited() | DeadlineReached():
                pass  # about a run that has ended
            case _:
                log.warning("step: unexpected message %r", message)
        return None

    def on_failure(self, *args: Any) -> None:
        log.error("step worker failed inside the engine")
        job = self._job
        try:
            if job is not None:
                if self._proc is not None and self._proc.poll() is None:
                    self._clean_up(job, grace=0.0)
                now = self._services.clock()
                tell_if_alive(job.task, StepEnded(job.run, job.record.index, State.INTERRUPTED, STEP_CODE_UNFINISHED,
                                                  "step interrupted: the engine failed", now, self._pid()))
            for message in self._refused:
                self._refuse_pause(message)
            gone = pykka.ActorDeadError(f"{self.actor_ref} failed before applying the request")
            for parked in self._early.values():  # control that waited for a run this worker never applies
                for message in parked:
                    if isinstance(message, SignalStep) and message.reply is not None:
                        message.reply.fail(gone)
        finally:  # whatever failed above: the pool forgets this worker, and its mailbox is answered
            self._services.pool.retire(self.actor_ref)
            super().on_failure(*args)

    def _unhandled(self, message: Any) -> None:
        """A start that reached this failed worker goes back to its runner: the step does not run."""
        super()._unhandled(message)
        if isinstance(message, RunStep):
            tell_if_alive(message.task, StartNotRecorded(message.record.index, self.actor_ref))

    def _is_current(self, run: int) -> bool:
        return self._job is not None and self._job.run == run

    @staticmethod
    def _refuse_pause(message: SignalStep) -> None:
        refused = PauseRefused(message.task_id, message.index, message.reply)
        if message.reply is not None and (message.task is None or not tell_if_alive(message.task, refused)):
            message.reply.fail(ActionRejected("step_exited", index=message.index, action="pause"))

    def _has_exited(self, run: int) -> bool:
        """Whether run's process has exited (reaped, or a zombie not yet reaped: WNOWAIT leaves it
        to the reaper), or the run has ended here, before its runner heard so."""
        if not self._is_current(run):
            return self._last_run >= run
        if self._proc is None or self._proc.returncode is not None:
            return self._proc is not None
        if not hasattr(os, "waitid"):  # Windows: the pause is answered as its signal was
            return False
        try:
            return os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped meanwhile
            return True

    def _run(self, job: RunStep) -> None:
        self._job, self._proc, self._stop_state, self._stop_reason, self._sink = job, None, None, None, None
        self._active_total, self._deadline, self._last_run = 0.0, None, job.run
        for run in [run for run in self._early if run != job.run]:  # runs that never started here
            self._answer_parked(self._early.pop(run))
        # This run's early control stays parked until applied: a failure meanwhile answers it (on_failure).
        early = self._early.setdefault(job.run, [])
        stop = next((m for m in early if isinstance(m, StopStep)), None)
        if stop is None and not job.task.is_alive():  # nobody would hear of it: its task is ended from the store
            stop = StopStep(job.run, State.INTERRUPTED, RUNNER_GONE)
        if stop is not None:  # killed before its process could start: it never starts
            if stop.state is State.KILLED:
                code, text = STEP_CODE_KILLED, with_exit_status("step killed before it started", STEP_CODE_KILLED)
            else:
                code, text = STEP_CODE_UNFINISHED, stop.reason or "step interrupted before it started"
            self._end(stop.state, code, text, self._services.clock())
            self._answer_parked(self._early.pop(job.run))
            return
        self._start(job)
        while early:  # a pause (or resume) that came first; off the list once answered
            if isinstance(early[0], SignalStep):
                self._signal(early[0].pause)
            arrive(getattr(early.pop(0), "reply", None))
        del self._early[job.run]

    @staticmethod
    def _answer_parked(messages: list[SignalStep | StopStep]) -> None:
        for message in messages:
            if isinstance(message, SignalStep):
                arrive(message.reply)

    def _start(self, job: RunStep) -> None:
        spec = job.spec
        self._limit = spec.timeout if spec.timeout is not None else self._services.config.exec_timeout
        output = None
        try:
            self._proc, output = process.start_step(job.workspace, job.task_id, job.record.index, spec, job.record.run_id)
            sink = self._sink = LogSink(output, process.log_path(job.workspace, job.record.index), self._services.config.max_log)
        except OSError as exc:
            if self._proc is not None:  # started, but its output cannot be taken: do not leave it running
                self._proc.kill()
                self._proc.wait()
                os.close(output)
            text = with_exit_status(f"cannot start step: {exc}", EXIT_CANNOT_START)
            self._end(State.STOPPED, EXIT_CANNOT_START, text, self._services.clock())
            return
        self._services.metrics.step_started()
        run, ref = job.run, self.actor_ref
        self._services.reaper.watch(
            self._proc, sink, lambda rc, at: tell_if_alive(ref, ProcessExited(run, rc, at)), spec.keep_background
        )
        self._active_since = self._services.scheduler.now()
        self._arm_deadline()
        started, gone = StepStarted(run, job.record.index, self._proc.pid), StopStep(run, State.INTERRUPTED, RUNNER_GONE)
        # Real time: the pid is saved for recovery, whatever clock step time limits are on. A
        # runner that stopped meanwhile will never stop this step: it stops itself.
        self._announce = self._services.real_timer.call_later(
            PID_SAVE_DELAY, lambda: tell_if_alive(job.task, started) or tell_if_alive(ref, gone)
        )

    def _remaining(self) -> float:
        active = self._active_total
        if self._active_since is not None:
            active += self._services.scheduler.now() - self._active_since
        return self._limit - active

    def _arm_deadline(self) -> None:
        if self._limit > 0:
            run, ref = self._job.run, self.actor_ref
            self._deadline = self._services.scheduler.call_later(
                max(0.0, self._remaining()), lambda: tell_if_alive(ref, DeadlineReached(run))
            )

    def _signal(self, pause: bool) -> bool:
        """Suspend or resume the tree; paused time does not count against the time limit. False if
        there was nothing to do (already so, not started, being stopped)."""
        if self._proc is None or self._stop_state is not None or pause == (self._active_since is None):
            return False
        try:
            marked = treekill.marked_processes(self._job.task_id, self._job.spec.name, self._job.record.run_id)
        except OSError as exc:  # /proc unreadable now (no descriptor free): the group and its tree still are
            log.warning("step %s: its marked processes cannot be listed (%s): only its process group is %s",
                        self._job.spec.name, exc, "paused" if pause else "resumed")
            marked = []
        treekill.signal_tree(self._proc.pid, signal.SIGSTOP if pause else signal.SIGCONT, extra=marked)
        if pause:
            self._active_total += self._services.scheduler.now() - self._active_since
            self._active_since = None
            if self._deadline is not None:
                self._deadline.cancel()
        else:
            self._active_since = self._services.scheduler.now()
            self._arm_deadline()
        return True

    def _kill(self, state: State, reason: str | None = None) -> None:
        if self._proc is None or self._proc.returncode is not None or self._stop_state is not None:
            return
        self._stop_state, self._stop_reason = state, reason
        self._clean_up(self._job, grace=self._services.config.kill_grace)

    def _clean_up(self, job: RunStep, grace: float) -> None:
        self._services.janitor.clean(job.record.run_id, self._proc.pid, grace)

    def _exited(self, returncode: int, at: float) -> None:
        job = self._job
        if self._deadline is not None:
            self._deadline.cancel()
        if self._stop_state is None and not job.spec.keep_background:
            self._clean_up(job, grace=self._services.config.kill_grace)  # its background processes
        output = self._output()
        match self._stop_state:
            case State.TIMEOUT:
                state, code = State.TIMEOUT, STEP_CODE_TIMEOUT
                output = with_exit_status(add_line(output, "step timed out: process tree killed"), code)
            case State.KILLED:
                state, code = State.KILLED, STEP_CODE_KILLED
                output = with_exit_status(add_line(output, "step killed on request"), code)
            case State.INTERRUPTED:
                state, code = State.INTERRUPTED, STEP_CODE_UNFINISHED
                output = add_line(output, self._stop_reason or "step interrupted: the server stopped")
            case _:
                state, code = State.STOPPED, process.exit_code(returncode)
                if code != 0:
                    output = with_exit_status(output, code)
        self._end(state, code, output, at)

    def _output(self) -> str:
        """The step's output for its record: kept by the sink when small, else read from its log."""
        job, limit = self._job, self._services.config.max_output
        small = self._sink.small_output() if self._sink is not None else None
        if small is not None and len(small) <= limit:
            return small.decode("utf-8", "replace")
        return read_output(process.log_path(job.workspace, job.record.index), limit)

    def _pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _end(self, state: State, code: int, output: str, end: float) -> None:
        job, pid = self._job, self._pid()
        self._job = self._proc = None
        try:
            if self._announce is not None:
                self._announce.cancel()
                self._announce = None
            self._services.metrics.step_ended(state, code, job.record.begin, end)
            # Free first, tell last: the task's next step finds this worker idle (no grant message),
            # and the task runs while this thread only goes back to its mailbox.
            self._services.pool.release(self.actor_ref)
        finally:  # told whatever failed above (the run is no longer this worker's: on_failure would not)
            tell_if_alive(job.task, StepEnded(job.run, job.record.index, state, code, output, end, pid))
        refused, self._refused = self._refused, []
        for message in refused:  # behind the end they came too late for
            self._refuse_pause(message)
