"""The project's exception root and its small, named subclasses."""

from __future__ import annotations

import errno
import logging
import threading

from .vocabulary import Phrase


class OsreapiError(Exception):
    """Root of every error osreapi raises on purpose."""


class InvalidValue(OsreapiError, ValueError):
    """A duration, size or other scalar setting could not be parsed."""


class Refusal(OsreapiError):
    """Something a client asked for is refused. The message is a key of the vocabulary table with
    its values, rendered in the caller's language by text(); str() is the English text."""

    def __init__(self, key: str, /, *, step: int | None = None, **values: object) -> None:
        phrase = Phrase(key, values)
        self.phrase = phrase if step is None else Phrase("at_step", {"index": step, "text": phrase})
        super().__init__(self.phrase.render("en"))

    def text(self, lang: str) -> str:
        return self.phrase.render(lang)


class InvalidRequest(Refusal):
    """A submission or a query is malformed; the message names what and where."""


class EngineBusy(OsreapiError):
    """The engine did not answer within the configured timeout."""


class StoreUnavailable(EngineBusy):
    """The store cannot be read for a moment: LMDB refused the environment after a failed write
    (its fatal state) and the store is opening it again. Retry shortly."""


class EngineFailed(OsreapiError):
    """The part of the engine that held the request failed before handling it (a task runner
    stopped): nothing was applied, and the task concerned ends interrupted, saying why."""


class NotStored(EngineFailed):
    """A submitted task's runner failed before the task was stored: nothing was stored or run."""


class EngineClosed(OsreapiError):
    """The engine has been shut down."""


class CalledFromListener(OsreapiError):
    """An Executor call that waits for the store was made inside a subscribe() listener, which runs
    on the store's thread: it would wait for itself."""


class NotFound(OsreapiError):
    """No such task or step (or it expired)."""


class StepNotFound(NotFound):
    """The task exists but has no such step (by index or name)."""

    def __init__(self, step: str | int) -> None:
        self.step = step
        super().__init__(f"step {step!r} does not exist in this task")


class ActionRejected(Refusal):
    """A control action does not apply to the task or step in its current state."""


class DiskFull(OsreapiError):
    """The store could not write: the disk (or its quota) is full. Reads go on working."""


class DataDirLost(DiskFull):
    """The store could not write: its data file (the data dir with it) was removed or replaced
    while the engine ran, and could not be put back yet. Reads go on working."""


class StoreDetached(OsreapiError, OSError):
    """A write's failure: the data file at its path is not the one open, and could not be made so."""


class DataDirInUse(OsreapiError):
    """Another server (or Executor) holds the data dir."""


class DataDirUnsafe(OsreapiError):
    """The data dir is another user's, or every user may write in it: they could change the scripts
    the engine runs."""


class StoreDamaged(OsreapiError):
    """The database file cannot be opened safely (it is shorter than its own pages): refused at
    start with what to do, nothing in it changed."""


class TaskActive(OsreapiError):
    """The task has not finished: it cannot be deleted (HTTP 409)."""

    def __init__(self, task_id: str, state: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id!r} is {state}; kill it or wait for it to end")


class TaskConflict(OsreapiError):
    """A task id is taken by a task with a different submission (HTTP 409)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"id {task_id} is taken by a task with a different submission: nothing was run")


class CaseConflict(TaskConflict):
    """A task id that differs from an existing task's only in case, on a workspace root that folds
    case, where the two would share one workspace (HTTP 409)."""

    def __init__(self, task_id: str, existing: str) -> None:
        self.existing = existing
        super().__init__(task_id)
        self.args = (f"id {task_id} names the workspace of task {existing} (the workspace file system "
                     "ignores case): nothing was run",)


def one_line_refusals(record: logging.LogRecord) -> bool:
    """A logging filter: a refusal handed back to a caller (pykka logs those with their traceback
    at INFO) is expected, so it is logged as one line."""
    if record.exc_info and isinstance(record.exc_info[1], Refusal):
        record.msg = f"{record.getMessage()} {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
    return True


# No descriptor (or no kernel memory) for a new socket or file: the server is short of a resource,
# not broken, and not the client's fault (accept() then leaves the connection in the backlog).
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def out_of_descriptors(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in _OUT_OF_DESCRIPTORS


# The request intake keeps one descriptor in reserve to refuse connections with while none is free:
# it closes it and accepts at once. A follower opening its log in that instant took the slot and kept
# it, and the connections behind waited unanswered: the intake and those opens take turns.
DESCRIPTOR_TURN = threading.Lock()
