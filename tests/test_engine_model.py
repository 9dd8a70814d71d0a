"""A stateful model test of the whole embedded engine: random sequences of submits (three modes,
named and made ids, re-posts), kill / pause / resume of tasks and steps (one call or two at once),
deletes, clean restarts and crash restarts (a subprocess engine killed with SIGKILL), all on a real
LMDB with real `sh` steps. Every step appends "<task> <step> g<submission> <pid>" to a ledger
outside the workspace, so that at-most-once holds across restarts whatever the records say.

A seeded random sequence, not hypothesis' RuleBasedStateMachine: real processes make the same
choices lead to different states (a pause races a step's exit), which hypothesis reports as a flaky
strategy instead of the fault. Each seed is one test; a failure names its seed and the actions so
far. OSREAPI_MODEL_SEEDS=100:140 hunts with other seeds."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from osreapi import Executor
from osreapi.errors import (
    ActionRejected,
    InvalidRequest,
    TaskActive,
    TaskConflict,
)
from osreapi.executor.treekill import TASK_MARKER
from osreapi.records import StepRecord, lowest_failure
from osreapi.vocabulary import (
    STEP_CODE_KILLED,
    STEP_CODE_TIMEOUT,
    STEP_CODE_UNFINISHED,
    State,
)

from .conftest import wait_until

POOL = int(os.environ.get("OSREAPI_MODEL_POOL", "2"))  # step processes at once: small, so steps queue
KEY_EXPIRE = 3600.0  # seconds; the model's clock jumps past it to expire what has ended
STEPS = int(os.environ.get("OSREAPI_MODEL_STEPS", "15"))  # actions per seed
SETTLE = 30.0  # seconds for every task to end at quiescence (bounded)


@dataclass(frozen=True)
class Plan:
    """One step as the model means it: sleep, then exit; or run past its time limit."""

    exit: int
    sleep: float
    limit: bool  # a 300ms time limit that fires (the step would sleep 5 s)
    deps: tuple[int, ...] = ()


@dataclass
class Sub:
    """An acknowledged submission and what the model knows of it."""

    id: str
    gen: int
    mode: str
    plans: tuple[Plan, ...]
    body: list[dict[str, Any]]
    named: bool
    deleted: bool = False
    paused: float | None = None  # when a pause of the task was answered OK (no resume since)
    paused_steps: dict[int, float] = field(default_factory=dict)  # steps paused on their own, and when
    killed: bool = False  # a task kill answered OK
    killed_steps: set[int] = field(default_factory=set)
    disturbed: bool = False  # a restart came while it had not ended: its outcome is not the plan's


def step_body(ledger: Path, gen: int, index: int, plan: Plan) -> dict[str, Any]:
    script = f"printf '%s %s g{gen} %s\\n' \"$OSREAPI_TASK_ID\" \"$OSREAPI_STEP_NAME\" $$ >> '{ledger}'\necho out-{index}\n"
    step: dict[str, Any] = {"command_type": "sh", "name": f"s{index}"}
    if plan.limit:
        step.update(command_content=script + "sleep 5\n", timeout="300ms")
    else:
        step["command_content"] = script + f"sleep {plan.sleep}\nexit {plan.exit}\n"
    if plan.deps:
        step["depends_on"] = [f"s{d}" for d in plan.deps]
    return step


def expected_runs(sub: Sub) -> list[bool]:
    """Which steps run when nothing disturbs the task: the modes' semantics (CONTRACT §3.1)."""
    ok = [not p.limit and p.exit == 0 for p in sub.plans]
    runs: list[bool] = []
    for index, plan in enumerate(sub.plans):
        if sub.mode == "sequential":
            runs.append(all(runs[:index]) and all(ok[:index]))
        elif any(p.deps for p in sub.plans):  # a DAG
            runs.append(all(runs[d] and ok[d] for d in plan.deps))
        else:
            runs.append(True)
    return runs


def submission(rng: random.Random) -> tuple[str, tuple[Plan, ...]]:
    """A mode and 1-3 steps: sleep 0-0.3 s and exit 0 or 1, or (one in six) pass a time limit."""
    mode = rng.choice(["sequential", "parallel", "dag"])
    chosen = []
    for index in range(rng.randint(1, 3)):
        deps = tuple(sorted(rng.sample(range(index), min(index, rng.randint(0, 2))))) if mode == "dag" else ()
        chosen.append(Plan(rng.choice([0, 0, 1]), rng.choice([0, 0.1, 0.3]), rng.randint(0, 5) == 0, deps))
    return mode, tuple(chosen)


def marked_alive(task_ids: set[str]) -> list[tuple[int, str]]:
    """Live (not zombie) processes carrying one of these tasks' marker."""
    found = []
    for proc in psutil.process_iter():
        try:
            marker = proc.environ().get(TASK_MARKER)
            if marker in task_ids and proc.status() != psutil.STATUS_ZOMBIE:
                found.append((proc.pid, marker))
        except (psutil.Error, OSError):
            continue
    return found


CRASH_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from osreapi import Executor
    from osreapi.errors import ActionRejected
    offset = float(sys.argv[3])
    ex = Executor(sys.argv[1], pool_size=%d, kill_grace=0.5, key_expire=%r, clock=lambda: time.time() + offset)
    for mode, task_id, body, pause in json.loads(sys.argv[2]):
        task_id, paused = ex.submit(body, mode=mode, task_id=task_id), "-"
        try:
            if pause:  # the crash then leaves a suspended tree (or a held task) behind
                ex.pause(task_id, None if pause == "task" else 0)
                paused = pause
        except ActionRejected:
            pass
        print("ok", task_id, paused, flush=True)
    print("ready", flush=True)
    sys.stdin.read()  # until the test kills it (its end of the pipe stays open until then)
""") % (POOL, KEY_EXPIRE)


class EngineModel:
    """The engine in a temporary data dir, and what it acknowledged: each action is a method (the
    driver, run(), picks among those that apply); the checks after every action and at quiescence
    compare the records, the ledger and the processes with it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.root = Path(tempfile.mkdtemp(prefix="osreapi-model-"))
        self.data = self.root / "data"
        self.ledger = self.root / "ledger"
        self.ledger.touch()
        self.offset = 0.0
        self.ex = self._open()
        self.subs: dict[str, Sub] = {}  # by id: the live (last) submission of each id
        self.gens: dict[int, Sub] = {}  # every submission, by generation
        self.next_gen = 0
        self.prefix = uuid.uuid4().hex[:8]
        self.actions: list[str] = []

    def _open(self) -> Executor:
        return Executor(self.data, pool_size=POOL, kill_grace=0.5, call_timeout="20s", key_expire=KEY_EXPIRE,
                        clock=self.clock)

    def clock(self) -> float:
        """The engines' wall clock: real time, moved forward by expire()."""
        return time.time() + self.offset

    def _new_sub(self, mode: str, chosen: tuple[Plan, ...], task_id: str | None) -> Sub:
        gen, self.next_gen = self.next_gen, self.next_gen + 1
        body = [step_body(self.ledger, gen, i, p) for i, p in enumerate(chosen)]
        return Sub(task_id or "", gen, mode, chosen, body, named=task_id is not None)

    def _name(self) -> str:
        """The id of the next named submission: unique on this host (the process scans look for
        these markers, and other tests may run at the same time)."""
        return f"{self.prefix}-n{self.next_gen}"

    def _live(self) -> list[Sub]:
        return [s for s in self.subs.values() if not s.deleted]

    # -- submits ------------------------------------------------------------------------

    def submit(self) -> None:
        rng = self.rng
        (mode, chosen), named, then = submission(rng), rng.random() < 0.5, rng.choice([None, None, "pause", "kill"])
        on_step, twin = rng.random() < 0.5, rng.random() < 0.5
        self.note(f"submit {mode} {chosen} named={named} then={then} on_step={on_step} twin={twin}")
        new = self._new_sub(mode, chosen, self._name() if named else None)
        new.id = self.ex.submit(new.body, mode=mode, task_id=new.id or None)
        if named:
            assert new.id == f"{self.prefix}-n{new.gen}"
        self.subs[new.id] = self.gens[new.gen] = new
        if then is not None:  # a control just after the submit
            self._control(new, then, 0 if on_step else None, twin)

    def repost(self) -> None:
        """A named id posted again: the same body answers the existing task and runs nothing; a
        different one is refused and changes nothing (its generation must never reach the ledger)."""
        sub, same = self.rng.choice([s for s in self._live() if s.named]), self.rng.random() < 0.5
        self.note(f"repost {sub.id} same={same}")
        before = self.ex.get(sub.id)
        if same:
            submitted = self.ex.submit_task(sub.body, parallel=sub.mode != "sequential", task_id=sub.id)
            assert (submitted.id, submitted.count, submitted.created) == (sub.id, len(sub.plans), False)
        else:
            other = self._new_sub(sub.mode, sub.plans, sub.id)
            try:
                self.ex.submit(other.body, mode=other.mode, task_id=sub.id)
            except TaskConflict:
                pass
            else:
                raise AssertionError(f"a different body under {sub.id} was accepted")
        assert before is not None and self.ex.get(sub.id).task.accepted == before.task.accepted

    def reuse_deleted_id(self) -> None:
        """A deleted id is free again: a new submission under it runs as a new task."""
        old = self.rng.choice([s for s in self.subs.values() if s.named and s.deleted])
        self.note(f"reuse deleted {old.id}")
        new = self._new_sub(old.mode, old.plans, old.id)
        assert self.ex.submit(new.body, mode=new.mode, task_id=old.id) == old.id
        self.subs[old.id] = self.gens[new.gen] = new

    def submit_invalid(self) -> None:
        """A submit that raises leaves no record."""
        task_id = f"bad{uuid.uuid4().hex[:8]}"
        try:
            self.ex.submit([{"command_type": "sh", "command_content": "true", "depends_on": ["nowhere"]}], task_id=task_id)
        except InvalidRequest:
            pass
        else:
            raise AssertionError("an unknown dependency was accepted")
        assert self.ex.get(task_id) is None

    # -- controls -----------------------------------------------------------------------

    def control(self) -> None:
        rng = self.rng
        sub, action = rng.choice(self._live()), rng.choice(["kill", "pause", "pause", "resume", "resume"])
        step = rng.randrange(len(sub.plans)) if rng.random() < 0.5 else None
        self._control(sub, action, step, rng.random() < 0.5)

    def resume_paused(self) -> None:
        """Resume what the model knows is paused (random controls rarely hit it)."""
        sub = self.rng.choice([s for s in self._live() if s.paused is not None or s.paused_steps])
        step = None if sub.paused is not None else min(sub.paused_steps)
        self._control(sub, "resume", step, self.rng.random() < 0.5)

    def _control(self, sub: Sub, action: str, step: int | None, twin: bool) -> None:
        self.note(f"{action} {sub.id}/{step} twin={twin}")
        answers = self._call_control(sub.id, action, step, 2 if twin else 1)
        answered = self.clock()
        oks = answers.count("ok")
        assert oks <= 1, f"{action} of {sub.id}/{step} answered OK {oks} times at once"
        record = self.ex.get(sub.id)
        assert record is not None
        target_state = record.task.state if step is None else record.steps[step].state
        self._forget_ended_pauses(sub, record)
        task_paused_before = sub.paused is not None
        was_paused = task_paused_before or (step is not None and step in sub.paused_steps)
        ended = record.task.state.finished or target_state.finished
        stopping = sub.killed or (step is not None and step in sub.killed_steps)
        if action == "pause":
            if was_paused:
                assert not oks, f"pause of {sub.id}/{step} answered OK while it was paused already"
            elif oks:
                assert target_state is State.PAUSED or ended, f"pause of {sub.id}/{step} answered OK, record says {target_state}"
                if step is None:
                    sub.paused = answered
                else:
                    sub.paused_steps[step] = answered
            else:
                assert ended or stopping, f"pause of {sub.id}/{step} refused ({answers}), record says {target_state}"
        elif action == "resume":
            if step is not None and task_paused_before:
                assert not oks, f"resume of step {sub.id}/{step} answered OK while its task is paused"
            elif was_paused and not stopping:
                assert oks == 1, f"resume of paused {sub.id}/{step} refused: {answers}"
            else:
                assert not oks or ended, f"resume of {sub.id}/{step} answered OK though it was not paused"
            if oks:
                if step is None:
                    sub.paused = None
                else:
                    sub.paused_steps.pop(step, None)
        elif oks:  # kill
            if step is None:
                sub.killed, sub.paused, sub.paused_steps = True, None, {}
            else:
                sub.killed_steps.add(step)
                sub.paused_steps.pop(step, None)
        else:
            assert ended or stopping, f"kill of {sub.id}/{step} refused ({answers}), record says {target_state}"

    def _call_control(self, task_id: str, action: str, step: int | None, count: int) -> list[str]:
        """The same control from `count` threads at once: "ok" or the refusal for each."""
        return list(self._calls_at_once(task_id, [action] * count, step))

    def _calls_at_once(self, task_id: str, actions: list[str], step: int | None) -> tuple[str, ...]:
        """Controls from one thread each, at once: "ok" or the refusal for each, in their order."""
        answers: list[str | None] = [None] * len(actions)
        start = threading.Barrier(len(actions))

        def call(position: int) -> None:
            start.wait(timeout=10)
            try:
                self.ex.control(task_id, actions[position], step)
            except ActionRejected as exc:
                answers[position] = f"rejected: {exc}"
            else:
                answers[position] = "ok"

        threads = [threading.Thread(target=call, args=(position,)) for position in range(len(actions))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert None not in answers, f"{actions} of {task_id}/{step}: {answers} (a call failed or hung)"
        return tuple(answers)

    def mixed_controls(self) -> None:
        """Two different controls at once on a task or step that is neither paused nor being
        killed: the answers must fit one order of the two. pause+resume: the pause applies; the
        resume only if it came second, and then nothing stays paused. kill+pause: the kill applies."""
        rng = self.rng
        sub = rng.choice([s for s in self._live() if s.paused is None and not s.killed])
        step = rng.randrange(len(sub.plans)) if rng.random() < 0.5 else None
        if step is not None and (step in sub.paused_steps or step in sub.killed_steps):
            return
        pair = rng.choice([("pause", "resume"), ("kill", "pause")])
        self.note(f"{pair[0]}+{pair[1]} at once on {sub.id}/{step}")
        first, second = self._calls_at_once(sub.id, list(pair), step)
        record = self.ex.get(sub.id)
        target = record.task.state if step is None else record.steps[step].state
        if pair[0] == "kill" and first == "ok":
            if step is None:
                sub.killed, sub.paused, sub.paused_steps = True, None, {}
            else:
                sub.killed_steps.add(step)
        if record.task.state.finished or target.finished:
            return  # it ended meanwhile (on its own or killed): any answer may be true
        if pair[0] == "pause":
            assert first == "ok", f"pause of {sub.id}/{step} refused: {first}, record says {target}"
            paused = second != "ok"
            assert (target is State.PAUSED) == paused, f"pause ok, resume {second}: record says {target}"
            if paused:
                if step is None:
                    sub.paused = self.clock()
                else:
                    sub.paused_steps[step] = self.clock()
        else:
            assert first == "ok", f"kill of {sub.id}/{step} refused: {first}, record says {target}"

    # -- deletes ------------------------------------------------------------------------

    def delete(self) -> None:
        sub = self.rng.choice(self._live())
        self.note(f"delete {sub.id}")
        before = self.ex.task(sub.id)
        assert before is not None
        try:
            self.ex.delete(sub.id)
        except TaskActive:
            assert not before.state.finished, f"delete of ended {sub.id} refused"
            assert self.ex.get(sub.id) is not None, f"a refused delete of {sub.id} removed it"
        else:
            assert self.ex.get(sub.id) is None
            assert not self.ex.config.workspace_entry(sub.id).exists(), f"{sub.id} deleted, its workspace kept"
            sub.deleted = True

    # -- restarts -----------------------------------------------------------------------

    def restart(self) -> None:
        """A clean stop and a new start on the same data dir."""
        self.note("restart")
        self._mark_disturbed()
        self.ex.close()
        self.ex = self._open()
        self._check_pauses_kept()

    def crash(self) -> None:
        """The engine in a subprocess takes submits, is killed with SIGKILL while they run (or
        right after the `cut`-th submit was answered), and the data dir is opened again here: what
        it acknowledged survives, a submit it did not answer is there whole or not at all, and
        nothing runs twice."""
        chosen = [submission(self.rng) for _ in range(self.rng.randint(1, 3))]
        named, pause = self.rng.random() < 0.5, self.rng.choice([None, None, "task", "step"])
        cut = self.rng.randint(1, len(chosen))
        self.note(f"crash with {chosen} named={named} pause={pause} cut={cut}")
        self._mark_disturbed()
        self.ex.close()
        news = [self._new_sub(mode, plan, self._name() if named else None) for mode, plan in chosen]
        jobs = [(n.mode, n.id or None, n.body, pause) for n in news]
        proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(self.data), json.dumps(jobs), str(self.offset)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            acked, paused = [], []
            for line in proc.stdout:
                if line.startswith("ok "):
                    acked.append(line.split()[1])
                    paused.append(line.split()[2])
                if line.startswith("ready") or len(acked) == cut < len(news):
                    break
            assert len(acked) == cut, f"the crash engine acknowledged {acked} of {len(news)}"
            if cut == len(news):  # killed while a step runs, if one starts soon enough
                wait_until(lambda: any(line.split()[0] in acked for line in self._ledger_lines()), timeout=3)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            proc.stdin.close()
        for new, task_id, held in zip(news, acked, paused):
            new.id, new.disturbed = task_id, True
            if held == "task":
                new.paused = self.clock()
            elif held == "step":
                new.paused_steps[0] = self.clock()
            self.subs[task_id] = self.gens[new.gen] = new
        self.ex = self._open()  # (was refused while a child the dead engine was forking held its lock)
        self._adopt_unanswered(news[cut:])
        interrupted = {s.id for s in self._live() if self.ex.task(s.id).state is State.INTERRUPTED}
        assert not marked_alive(interrupted), f"the start after a crash left {marked_alive(interrupted)} alive"
        self._check_pauses_kept()

    def _adopt_unanswered(self, unanswered: list[Sub]) -> None:
        """Tasks the crashed engine stored without answering: each must be one of the submits it
        did not answer, whole (every step recorded). One not stored must never run: its generation
        stays unknown, and the ledger check refuses any run of it."""
        by_gen = {sub.gen: sub for sub in unanswered}
        for task in self.ex.list():
            if task.id in self.subs and not self.subs[task.id].deleted:
                continue
            gen = int(re.search(r" g([0-9]+) ", self.ex.specs(task.id)[0].content).group(1))
            sub = by_gen.pop(gen, None)
            assert sub is not None and sub.id in ("", task.id), f"{task.id} (g{gen}) stored, never submitted"
            record = self.ex.get(task.id)
            assert len(record.steps) == len(sub.plans), f"{task.id} stored in part: {record.steps}"
            sub.id, sub.disturbed = task.id, True
            if record.task.state is State.PAUSED:  # the crashed engine applied its pause
                sub.paused = self.clock()
            sub.paused_steps = {s.index: self.clock() for s in record.steps if s.state is State.PAUSED}
            self.subs[task.id] = self.gens[sub.gen] = sub

    def expire(self) -> None:
        """The clock passes the time to keep records: every ended task is gone at once (before any
        sweep), the sweep removes its workspace, its id is free again; the others stay."""
        self.note("expire")
        live = self._live()  # nothing paused (see rules)
        # first everything ends: a task that ends as the clock jumps may be expired at once
        assert wait_until(lambda: all(self.ex.task(s.id).state.finished for s in live), timeout=SETTLE), \
            f"not ended: {[self.ex.get(s.id) for s in live if not self.ex.task(s.id).state.finished]}"
        ended = [s for s in self._live() if self.ex.task(s.id).state.finished]
        self.offset += KEY_EXPIRE + 1
        for sub in ended:
            assert self.ex.get(sub.id) is None, f"{sub.id} readable after it expired"
            sub.deleted = True
        self.ex.sweep()
        for sub in ended:
            assert not self.ex.config.workspace_entry(sub.id).exists(), f"{sub.id} swept, its workspace kept"

    def _mark_disturbed(self) -> None:
        for sub in self._live():
            task = self.ex.task(sub.id)
            if task is not None and not task.state.finished:
                sub.disturbed = True

    def _check_pauses_kept(self) -> None:
        """A task that never started keeps its pauses across a restart; a started one ended."""
        for sub in self._live():
            record = self.ex.get(sub.id)
            assert record is not None, f"{sub.id} lost in a restart"
            if record.task.state.finished:
                sub.paused, sub.paused_steps = None, {}
                continue
            assert (record.task.state is State.PAUSED) == (sub.paused is not None), f"{sub.id}: {record.task.state} after a restart"
            for index in sub.paused_steps:
                assert record.steps[index].state is State.PAUSED, f"{sub.id}/{index}: {record.steps[index].state}"

    # -- invariants ---------------------------------------------------------------------

    def _ledger_lines(self) -> list[str]:
        return self.ledger.read_text().splitlines()

    def _ledger(self) -> dict[tuple[str, str, int], int]:
        """(task, step, generation) -> how many runs the ledger holds."""
        runs: dict[tuple[str, str, int], int] = {}
        for line in self._ledger_lines():
            task_id, step, gen, _pid = line.split()
            key = (task_id, step, int(gen[1:]))
            runs[key] = runs.get(key, 0) + 1
        return runs

    def at_most_once_and_recorded(self) -> None:
        for (task_id, step, gen), count in self._ledger().items():
            assert count == 1, f"{task_id}/{step} (g{gen}) ran {count} times"
            sub = self.gens.get(gen)
            assert sub is not None and sub.id == task_id, f"{task_id}/{step} g{gen} ran but was never acknowledged"
            if sub.deleted or self.subs[task_id] is not sub:
                continue
            record = self.ex.get(task_id)
            if record is None:  # expired: acknowledged_are_readable... tells whether it may be
                continue
            index = int(step[1:])
            assert record.steps[index].begin is not None, f"{task_id}/{step} ran but its record says it never began"

    def listed_are_acknowledged(self) -> None:
        """The list holds exactly the acknowledged tasks not deleted: a submit that raised (or a
        re-post) made no record."""
        listed = sorted(task.id for task in self.ex.list())
        assert listed == sorted(s.id for s in self._live()), f"listed {listed}"

    def records_match_processes(self) -> None:
        """A step recorded as paused has its process suspended; one recorded as running has not."""
        for sub in self._live():
            for step in self.ex.get(sub.id).steps:
                if step.pid is None or step.state not in (State.PAUSED, State.RUNNING):
                    continue
                try:
                    status = psutil.Process(step.pid).status()
                except psutil.NoSuchProcess:
                    continue
                if status != psutil.STATUS_ZOMBIE:
                    stopped = status == psutil.STATUS_STOPPED
                    assert stopped == (step.state is State.PAUSED), f"{sub.id}/{step.index} {step.state}, process {status}"

    def acknowledged_are_readable_and_pauses_hold(self) -> None:
        for sub in self._live():
            record = self.ex.get(sub.id)
            if record is None:  # a paused step's exit won the race with its pause after an expire()
                stored = self.ex._db.get_task(sub.id)
                assert stored is not None and stored.expires <= self.clock(), f"acknowledged {sub.id} is gone"
                sub.deleted = True
                continue
            if sub.paused is not None and record.task.state is not State.PAUSED:
                assert record.task.state.finished, f"{sub.id} paused, record says {record.task.state}"
            for index in sub.paused_steps:
                state = record.steps[index].state
                assert state in (State.PAUSED, State.STOPPED, State.SKIPPED), f"{sub.id}/{index} paused, record says {state}"
            self._forget_ended_pauses(sub, record)

    @staticmethod
    def _forget_ended_pauses(sub: Sub, record: Any) -> None:
        """A pause answered OK while the step's process was exiting on its own: the exit wins (it
        came first) and the task may end. Nothing may START after such a pause, though."""
        if sub.paused is not None and record.task.state.finished:
            late = [s.index for s in record.steps if s.begin is not None and s.begin > sub.paused]
            assert not late, f"{sub.id}: steps {late} began after the task's pause was answered"
            sub.paused = None
        for index, at in list(sub.paused_steps.items()):
            step = record.steps[index]
            if step.state is State.STOPPED:
                assert step.begin < at, f"{sub.id}/{index} began after its pause was answered"
                del sub.paused_steps[index]
            elif step.state is State.SKIPPED:  # held, and a step it needs failed: it can never run
                assert step.begin is None, f"{sub.id}/{index} skipped after it began"
                del sub.paused_steps[index]

    # -- quiescence ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the engine, remove the data, and see that no step's process is left."""
        try:
            self.ex.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
        ids = {s.id for s in self.gens.values()}
        assert wait_until(lambda: not marked_alive(ids), timeout=10), f"left alive after close: {marked_alive(ids)}"

    def settle_and_check(self) -> None:
        """Quiescence: resume what is paused, wait (bounded) for every task to end, then check the
        final records against the plan, the ledger and the pool."""
        for sub in self._live():
            if sub.paused is not None:
                self._control(sub, "resume", None, twin=False)
            for index in sorted(sub.paused_steps):
                self._control(sub, "resume", index, twin=False)
            assert sub.paused is None and not sub.paused_steps, f"{sub.id} still paused"
        live = self._live()
        assert wait_until(lambda: all(self.ex.task(s.id).state.finished for s in live), timeout=SETTLE), \
            f"not ended: {[(s.id, self.ex.task(s.id).state) for s in live if not self.ex.task(s.id).state.finished]}"
        assert wait_until(lambda: self.ex.stats()["pool_busy"] == 0 and self.ex.stats()["tasks_queued"] == 0, timeout=10), \
            self.ex.stats()
        assert self.ex.check_health() == "ok"
        ran = self._ledger()
        for sub in live:
            self._check_final(sub, self.ex.get(sub.id), {step for (t, step, g) in ran if t == sub.id and g == sub.gen})
        ids = {s.id for s in self.gens.values()}
        assert wait_until(lambda: not marked_alive(ids), timeout=10), f"alive after every task ended: {marked_alive(ids)}"

    def _check_final(self, sub: Sub, result: Any, ran: set[str]) -> None:
        task, steps = result.task, result.steps
        where = f"{sub.id} ({sub.mode}, {sub.plans}, killed={sub.killed} {sub.killed_steps}, disturbed={sub.disturbed})"
        assert all(s.state.finished for s in steps), f"{where}: {[s.state for s in steps]}"
        assert task.failed_step == lowest_failure(steps), where
        assert task.succeeded == all(s.succeeded for s in steps), where
        assert task.end is not None and task.expires is not None, where
        for step, plan in zip(steps, sub.plans):
            self._check_step(where, step, plan, step.name in ran)
        if all(s.succeeded for s in steps):  # a kill or a stop that found them all succeeded changed nothing
            assert task.state is State.STOPPED, where
        elif sub.killed:
            assert task.state in (State.KILLED, State.INTERRUPTED) if sub.disturbed else task.state is State.KILLED, where
        elif sub.disturbed:
            assert task.state in (State.STOPPED, State.INTERRUPTED), where
        else:
            assert task.state is State.STOPPED, where
        for index in sub.killed_steps:
            # (or it ended on its own as the kill came: _check_step holds it to its plan then)
            allowed = (State.KILLED, State.STOPPED) + ((State.INTERRUPTED,) if sub.disturbed else ())
            assert steps[index].state in allowed + ((State.SKIPPED,) if sub.killed else ()), f"{where}: step {index}"
        if not (sub.killed or sub.killed_steps or sub.disturbed):  # the plan's outcome, exactly
            runs = expected_runs(sub)
            for step, plan, run in zip(steps, sub.plans, runs):
                expected = State.SKIPPED if not run else State.TIMEOUT if plan.limit else State.STOPPED
                assert step.state is expected, f"{where}: step {step.index} {step.state}, expected {expected}"

    @staticmethod
    def _check_step(where: str, step: StepRecord, plan: Plan, ran: bool) -> None:
        where = f"{where}: step {step.index} {step.state} code {step.code}"
        if step.state is State.STOPPED:
            assert ran and step.code == plan.exit and f"out-{step.index}" in step.output, where
        elif step.state is State.TIMEOUT:
            assert plan.limit and step.code == STEP_CODE_TIMEOUT, where
        elif step.state is State.KILLED:
            assert step.code == STEP_CODE_KILLED, where
        else:
            assert step.code == STEP_CODE_UNFINISHED, where
        if step.state is State.SKIPPED or step.begin is None:
            assert not ran, f"{where}: never started, yet in the ledger"



    # -- the driver ---------------------------------------------------------------------

    def note(self, action: str) -> None:
        self.actions.append(action)

    def rules(self) -> list[tuple[Any, int]]:
        """The rules that apply now, with their weights."""
        live = self._live()
        rules: list[tuple[Any, int]] = [(self.submit, 6), (self.submit_invalid, 1), (self.restart, 1), (self.crash, 1)]
        if live:
            rules += [(self.control, 6), (self.delete, 2)]
        if any(s.paused is None and not s.killed for s in live):
            rules.append((self.mixed_controls, 3))
        if any(s.named for s in live):
            rules.append((self.repost, 2))
        if any(s.named and s.deleted for s in self.subs.values()):
            rules.append((self.reuse_deleted_id, 1))
        if any(s.paused is not None or s.paused_steps for s in live):
            rules.append((self.resume_paused, 3))
        else:  # (a paused step holds its worker: the others might wait for the pool for ever)
            rules.append((self.expire, 1))
        return rules

    def run(self, steps: int) -> None:
        for _ in range(steps):
            rules = self.rules()
            rule = self.rng.choices([r for r, _ in rules], weights=[w for _, w in rules])[0]
            rule()
            self.at_most_once_and_recorded()
            self.acknowledged_are_readable_and_pauses_hold()
            self.listed_are_acknowledged()
            self.records_match_processes()


def _seeds() -> range:
    first, _, last = os.environ.get("OSREAPI_MODEL_SEEDS", "0:6").partition(":")
    return range(int(first), int(last))


@pytest.mark.parametrize("seed", _seeds())
def test_engine_model(seed: int) -> None:
    """Bounded: 6 seeds of 15 actions run in well under a minute here."""
    model = EngineModel(random.Random(seed))
    try:
        try:
            model.run(STEPS)
            model.settle_and_check()
        finally:
            model.close()
    except BaseException as exc:
        raise AssertionError(f"seed {seed}, after: " + "; ".join(model.actions)) from exc
