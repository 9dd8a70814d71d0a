"""What the terminal commands print: rich tables and a live progress line on a terminal, plain
aligned lines otherwise (for pipes, logs and scripts)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.cells import cell_len
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table

from ..embed import TaskResult
from ..records import StepRecord, TaskRecord
from ..vocabulary import State, message

OUTPUT_TAIL_LINES = 20  # of a failed step's output shown by `get` and `wait`
_STYLE = {State.STOPPED: "green", State.RUNNING: "cyan", State.PENDING: "dim", State.PAUSED: "yellow"}


def clock(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def seconds(begin: float | None, end: float | None) -> str:
    """A duration from the server's whole-second times."""
    if begin is None:
        return ""
    elapsed = (end if end is not None else time.time()) - begin
    return "<1s" if elapsed < 1 else f"{elapsed:.0f}s"


def progress_counts(steps: Sequence[StepRecord]) -> tuple[int, int, int]:
    """(done, running, failed) among the steps."""
    done = sum(1 for s in steps if s.state.finished)
    running = sum(1 for s in steps if s.state is State.RUNNING)
    failed = sum(1 for s in steps if s.failed)
    return done, running, failed


class Out:
    """stdout for results, stderr for errors; tables and styles only on a terminal."""

    def __init__(self, lang: str, as_json: bool, stream: TextIO | None = None) -> None:
        self.lang = lang
        self.as_json = as_json
        # sys.stdout is None when the command runs with its stdout closed (`>&-`): write to nowhere
        self.stream = stream or sys.stdout or open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self.tty = self.console.is_terminal

    def word(self, state: State) -> str:
        return state.word(self.lang)

    def say(self, key: str, **values: object) -> str:
        return message(key, self.lang, **values)

    def heading(self, key: str) -> list[str]:
        return self.say(key).split("|")

    def state(self, state: State, succeeded: bool = True) -> str:
        style = "red" if not succeeded and state.finished else _STYLE.get(state, "red")
        return f"[{style}]{escape(self.word(state))}[/]" if self.tty else self.word(state)

    def text(self, value: str) -> str:
        """Our own words may carry rich markup on a terminal; names and ids never do."""
        return escape(value) if self.tty else value

    def line(self, text: str = "") -> None:
        if self.tty:
            self.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def raw(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def json(self, data: Any) -> None:
        print(json.dumps(data, ensure_ascii=False, separators=(",", ":")), file=self.stream, flush=True)

    def error(self, text: str) -> None:
        print(f"osreapi: error: {text}", file=sys.stderr, flush=True)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.tty:
            table = Table(*columns, header_style="bold")
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
            return
        plain = [list(columns), *map(list, rows)]
        widths = [max(cell_len(row[i]) for row in plain) for i in range(len(columns))]
        for row in plain:
            cells = (cell + " " * (width - cell_len(cell)) for cell, width in zip(row, widths))
            print("  ".join(cells).rstrip(), file=self.stream)
        self.stream.flush()

    # -- records ----------------------------------------------------------------------------

    def tasks(self, tasks: Sequence[TaskRecord]) -> None:
        rows = [
            (self.text(t.id), self.state(t.state, t.succeeded), str(t.count), clock(t.begin), clock(t.end), _failed(t))
            for t in tasks
        ]
        self.table(self.heading("cli_tasks_heading"), rows)

    def result(self, result: TaskResult) -> None:
        task = result.task
        time_taken = seconds(task.begin, task.end) or self.say("cli_not_started")
        self.line(self.say("cli_task", id=self.text(task.id), state=self.state(task.state, task.succeeded),
                           mode=task.mode, time=time_taken))
        rows = [
            (str(s.index), self.text(s.name), self.state(s.state, s.succeeded), str(s.code), seconds(s.begin, s.end))
            for s in result.steps
        ]
        self.table(self.heading("cli_steps_heading"), rows)
        for step in result.steps:
            if step.failed and step.output:
                self.line(self.say("cli_output_tail", name=self.text(step.name), state=self.word(step.state),
                                   code=step.code))
                self.raw("\n".join(step.output.rstrip("\n").split("\n")[-OUTPUT_TAIL_LINES:]) + "\n")


class Progress:
    """A live line on a terminal (done / running / failed, elapsed); elsewhere a plain line on
    stderr each time a step changes state; nothing with --json."""

    def __init__(self, out: Out, task_id: str) -> None:
        self.out = out
        self.task_id = task_id
        self.started = time.monotonic()
        self._seen: dict[int, State] = {}
        live = out.tty and not out.as_json
        self._live = Live(self._render(None), console=out.console, transient=False) if live else None

    def __enter__(self) -> Progress:
        if self._live:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.stop()

    def print(self, text: str) -> None:
        """Output above the live line."""
        if self._live:
            self._live.console.print(text, markup=False, highlight=False, end="")
        else:
            self.out.raw(text)

    def update(self, result: TaskResult | None) -> None:
        if self.out.as_json:
            return
        if self._live:
            self._live.update(self._render(result))
            return
        for step in () if result is None else result.steps:
            if self._seen.get(step.index) is not step.state:
                self._seen[step.index] = step.state
                if step.state is not State.PENDING:
                    elapsed = time.monotonic() - self.started
                    code = self.out.say("cli_exit_code", code=step.code) if step.state.finished else ""
                    change = self.out.say("cli_step_change", index=step.index, name=step.name, state=self.out.word(step.state))
                    line = f"{elapsed:6.1f}s  {change}{code}"
                    print(line, file=sys.stderr, flush=True)  # progress is not the result: stdout stays clean

    def _render(self, result: TaskResult | None) -> Spinner:
        elapsed = time.monotonic() - self.started
        if result is None:
            text = self.out.say("cli_waiting", id=escape(self.task_id), elapsed=f"{elapsed:.1f}s")
        else:
            done, running, failed = progress_counts(result.steps)
            text = self.out.say("cli_progress", id=escape(self.task_id), state=self.out.word(result.task.state),
                                done=done, count=len(result.steps), running=running, failed=failed,
                                elapsed=f"{elapsed:.1f}s")
        return Spinner("dots", text=text)


def _failed(task: TaskRecord) -> str:
    return "" if task.failed_step is None else str(task.failed_step)
