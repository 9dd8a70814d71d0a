"""StoreActor: the only writer of LMDB; sweeps expired records and their workspaces.

Group commit: a write promised durable is committed at once (readers see it) but flushed, and
acknowledged, when the mailbox is empty (or GROUP writes wait): steps starting together share one
fsync, and nobody hears of a change before it is on disk.

A write that fails (a full disk) is an answer, never a dead actor: the records are kept in memory,
merged with later ones for the same task, and written again every second until the disk has room;
submits answer DiskFull meanwhile and reads go on from what is on disk.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import lmdb

from .. import casefold
from ..config import EngineConfig
from ..errors import (
    CaseConflict,
    DataDirLost,
    DiskFull,
    StoreDetached,
    StoreUnavailable,
    TaskConflict,
)
from ..records import StepRecord, TaskRecord
from ..storage.database import Database
from ..storage.discard import Discarder
from ..storage.removal import Leftovers, empty_tree
from .base import EngineActor
from .delivery import tell_if_alive
from .messages import (
    CreateTask,
    DeleteTask,
    Flush,
    InterruptStored,
    Ping,
    RetryUnsaved,
    SaveRecords,
    ScheduledSweep,
    SweepExpired,
    TaskDropped,
)
from .reply import Reply
from .taskstate import TaskState

log = logging.getLogger(__name__)
SWEEP_BATCH = 100
GROUP = 64  # most committed writes waiting for one flush
RETRY_AFTER = 1.0  # seconds between attempts to write what a full disk refused
FREE_WAIT = 10.0  # most seconds a deletion refused by a full disk waits for its files' removal
WRITE_ERRORS = (lmdb.Error, OSError)
ASKED = (Ping, Flush, SweepExpired)  # only ever sent with ask(): a failure goes back to the asker
OnCommit = Callable[[str, TaskRecord | None, tuple[StepRecord, ...]], None]


class WorkspaceLeft(OSError):
    """A task's workspace not removed whole for want of a descriptor: its record stays (answered
    503 for the server being short of descriptors, as every such OSError)."""


class _Unclaimed(Exception):
    """The workspace's name not taken for an error of its file system (no descriptor to list the
    root with on a clash): no write of the store's failed; its cause is the caller's answer, as it
    was when the submission took the name (503 for want of a descriptor)."""


@dataclass(frozen=True)
class _Created:
    """A create committed and waiting for its flush."""

    message: CreateTask
    existing: TaskRecord | None  # the task that already had its id (nothing was written)
    conflict: bool = False  # that task was submitted with another body
    first: SaveRecords | None = None  # its runner's first save, written with it (see _create)


class StoreActor(EngineActor):
    @staticmethod
    def _create_actor_inbox() -> queue.Queue:
        return queue.Queue()  # one that can be looked into: the saves queued together share a write

    def __init__(
        self,
        db: Database,
        config: EngineConfig,
        clock: Callable[[], float],
        on_commit: OnCommit,
        on_delete: Callable[[tuple[str, ...]], None],
        call_later: Callable[[float, Callable[[], None]], object],
        disk_full: threading.Event,
        discarder: Discarder,
        folds_case: bool = False,
    ) -> None:
        super().__init__()
        self._db = db
        self._config = config
        self._clock = clock
        self._on_commit = on_commit  # after every committed write of a task's records
        self._on_delete = on_delete  # after tasks were deleted or swept
        self._call_later = call_later
        self._unsaved: dict[str, tuple[TaskRecord | None, dict[int, StepRecord]]] = {}
        self._retry_scheduled = False
        self._awaiting: list[SaveRecords | _Created] = []  # committed, acknowledged after the next flush
        self._disk_full = disk_full  # set while a write is refused; read by health checks
        self._refusal: type[DiskFull] = DiskFull  # what a refused write is, by the last failure's cause
        self._folds_case = folds_case  # the workspace root's: a create takes its workspace's name
        self._discarder = discarder  # removes the trees of workspaces moved aside, on its own thread
        self._to_release: set[str] = set()  # ids whose record's removal waits for a flush (see _give_back)
        self._undeleted: dict[str, TaskRecord] = {}  # refused creates whose records the disk kept (see _not_created)
        self._dropping: set[str] = set()  # refused creates whose runners may still send saves (see _not_stored_with)
        self._ending: set[str] = set()  # tasks being interrupted after a bug refused their end (see _end_refused)

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except Exception as exc:  # a bug: the message's answer, never the end of the single writer
            if isinstance(message, ASKED):
                raise  # pykka hands it to the asker, and the store goes on (a told one's would stop it)
            log.exception("store: handling %s failed; going on", type(message).__name__)
            reply = getattr(message, "reply", None)
            if isinstance(reply, Reply):
                reply.fail(exc)
            return None
        finally:
            if self._awaiting and (len(self._awaiting) >= GROUP or self.actor_inbox.empty()):
                self._flush()

    def _handle(self, message: Any) -> Any:
        match message:
            case SaveRecords(create=create) if create is not None:
                self._create(create, first=message)
            case SaveRecords():
                self._save([message, *self._saves_waiting()])
            case CreateTask():
                self._create(message)
            case InterruptStored():
                self._interrupt(message)
            case DeleteTask(task_id=task_id, reply=reply):
                try:
                    reply.arrive(self._delete(task_id))
                except Exception as exc:  # a refusal (DiskFull, WorkspaceLeft) or a bug: the caller
                    if not isinstance(exc, (DiskFull, WorkspaceLeft, StoreUnavailable)):  # hears it, the store goes on
                        log.exception("store: deleting task %s failed", task_id)
                    reply.fail(exc)
            case Ping():  # a health probe: notices a data dir removed under an idle engine (one stat)
                self._guarded(self._db.check_attached)
                return None
            case TaskDropped(task_id=task_id):
                self._dropping.discard(task_id)
            case RetryUnsaved():
                self._retry()
            case SweepExpired():
                return self._sweep()
            case ScheduledSweep():
                self._sweep(whole=False)
            case Flush():
                self._flush()
            case _:
                log.warning("store: unexpected message %r", message)
        return None

    def _create(self, message: CreateTask, first: SaveRecords | None = None) -> None:
        """Write the task now (readers see it); answer after the flush, which the creates and
        saves queued together share. `first`: the first save of the runner that has the task
        already (Submit), written in the same transaction and told after the same flush; if the
        task is not stored (or its id was taken), neither is that save, and the runner hears it."""
        task = message.task
        if task.id in self._undeleted:  # not the task it names: that one goes once the disk has room
            self._not_stored_with(first)
            message.reply.fail(DiskFull(f"task {task.id}, refused, is removed once the disk has room"))
            return
        claimed: list[bool] = []  # whether its workspace was made here (the write may run twice)
        try:
            existing, _ = self._db.create_task(task, message.steps, message.specs, self._clock(),
                                               before_writing=partial(self._ready_workspace, task.id, claimed),
                                               first=(first.task, first.steps) if first is not None else None)
        except Exception as exc:  # nothing was stored: the name is free again, the caller hears why
            self._release(task.id, claimed)
            self._not_stored_with(first)
            message.reply.fail(self._not_stored(task.id, exc))
            return
        if existing is not None:
            self._not_stored_with(first)
            self._awaiting.append(_Created(message, existing, not self._same(existing, message)))
        else:
            self._awaiting.append(_Created(message, None, first=first))

    def _refuse_delete_unless(self, write: Callable[[], Any]) -> None:
        """A delete's write (or its check of the data file) that fails is its 507."""
        try:
            write()
        except WRITE_ERRORS as exc:
            self._failed(exc)
            raise self._refusal(f"the task could not be deleted: {exc}") from None

    def _not_stored_with(self, first: SaveRecords | None) -> None:
        """The runner that sent its first save with a create that was not stored drops the task.
        Until it says so (TaskDropped), the saves it sent meanwhile (a start granted later, a
        control) are refused unwritten: a record of a task that does not exist, a step started on
        a worker the runner gives back, are not kept; nor is what a full disk refused of it before
        (the retry wrote it: steps without their task, told to the subscribers)."""
        if first is None:
            return
        self._dropping.add(first.task_id)
        self._unsaved.pop(first.task_id, None)
        for ref, otherwise in first.otherwise:
            tell_if_alive(ref, otherwise)

    def _same(self, existing: TaskRecord, message: CreateTask) -> bool:
        """Whether the task that has the id was submitted as this one: compared here, in order
        with the deletion of that task (the submitter, comparing after the answer, found a task
        deleted meanwhile without specs, and told a re-post of the same body it conflicted)."""
        return existing.mode == message.task.mode and self._db.get_specs(existing.id) == message.specs

    def _not_stored(self, task_id: str, exc: Exception) -> Exception:
        """What a caller hears of a create that failed."""
        if isinstance(exc, (WorkspaceLeft, CaseConflict, DiskFull)):  # answers as they are
            return exc
        if isinstance(exc, _Unclaimed):
            return exc.__cause__
        if isinstance(exc, WRITE_ERRORS):
            self._failed(exc)
            return self._refusal(f"the task could not be stored: {exc}")
        log.exception("store: creating task %s failed", task_id)  # a bug: the store (the single writer) goes on
        return exc

    def _ready_workspace(self, task_id: str, claimed: list[bool], old: TaskRecord | None) -> None:
        """Before a task is written: an expired task of its id loses its files (or stays as it was,
        WorkspaceLeft), its directory kept; on a root that folds case, the workspace's name is
        taken here, in order with the deletes and sweeps that free names (CaseConflict if another
        task has it)."""
        if old is not None:  # its directory holds the name until the new task runs
            self._remove_files(task_id)
        elif self._folds_case:
            try:
                claimed.append(casefold.claim_workspace(self._config.workspace(task_id), task_id))
            except OSError as exc:
                raise _Unclaimed() from exc
            except CaseConflict as exc:  # a removed task's name, given back once the disk takes the removal
                if exc.existing in self._to_release or exc.existing in self._undeleted:
                    raise DiskFull(f"the workspace name of removed task {exc.existing} is free once its "
                                   "removal is on disk") from None
                raise

    def _release(self, task_id: str, claimed: list[bool]) -> None:
        if any(claimed):  # nothing stored: the name is free again
            casefold.release_workspace(self._config.workspace_entry(task_id))

    def _created(self, created: _Created) -> None:
        """Its flush is done: acknowledge the task (or the one that had its id)."""
        message = created.message
        if created.conflict:
            message.reply.fail(TaskConflict(message.task.id))
            return
        if created.existing is None:
            if not self._unsaved and not self._undeleted:  # else the retry clears it, once they are deleted
                self._disk_full.clear()
            self._committed(message.task.id, message.task, message.steps)
            for ref, then in message.then:
                tell_if_alive(ref, then)
        message.reply.arrive(created.existing)
        if created.first is not None:  # its first steps start now
            self._deliver(created.first)

    def _not_created(self, created: _Created) -> None:
        """Its flush failed: a task never acknowledged is not kept either. Its workspace's name
        (claimed for it, or the expired task's it replaced) is given back once that is on disk;
        a record whose deletion the disk refuses too keeps it until the retry deletes it (a restart
        before then finds it waiting, and runs it)."""
        if created.existing is None:
            self._delete_refused(created.message.task)
        self._not_stored_with(created.first)
        created.message.reply.fail(self._refusal("the task could not be flushed to disk"))

    def _delete(self, task_id: str) -> TaskRecord | None:
        """Remove a finished task's files, then its records, then its workspace's directory;
        answer the task as it was. The files go first: on a disk full of the steps' own logs, the
        record's deletion (a write) finds room only once they are gone. The directory goes last,
        once the deletion is on disk: a record never lacks it, so on a root that folds case no
        other id takes the name while the record is there (a crash between leaves a record whose
        log files are gone, its output is in the record, deleted again by the next try; or an
        empty directory without a record, removed at the next start).
        A deletion committed whose flush fails is done: every reader sees the task gone, and so
        does the next start after a crash of the process (LMDB has the commit). Only a crash of
        the machine before the disk takes it may bring the ended task back, whole, its directory
        kept for it until then."""
        if task_id in self._undeleted:  # refused: it was never stored (it goes once the disk has room)
            return None
        task = self._db.get_task(task_id)
        if task is None or not task.state.finished:
            return task
        self._refuse_delete_unless(self._db.attach)  # the files are not ours to remove otherwise
        self._remove_files(task_id)
        self._refuse_delete_unless(lambda: self._after_removal(lambda: self._db.delete_task(task)))
        self._to_release.add(task_id)
        if not self._flush():
            log.warning("store: task %s is deleted; its deletion is flushed to disk once there is room", task_id)
        self._on_delete((task_id,))
        return task

    def _interrupt(self, message: InterruptStored) -> None:
        """End the task interrupted from its newest records, saved as any change (a full disk
        keeps them for the retry). The task's saves told earlier were handled first (one mailbox)."""
        try:
            changes = self._interrupted(message)
        except StoreUnavailable:  # LMDB not opened again yet after its fatal error: once the retry may have
            ref = self.actor_ref
            self._call_later(RETRY_AFTER, lambda: tell_if_alive(ref, message))
            return
        except Exception:  # a record that cannot be read: left as stored, and the store goes on
            log.exception("task %s cannot be marked interrupted", message.task_id)
            return
        if changes is not None:
            self._save([SaveRecords(message.task_id, *changes, durable=True)])

    def _interrupted(self, message: InterruptStored) -> tuple[TaskRecord | None, tuple[StepRecord, ...]] | None:
        """The records that end the task interrupted (None if it is gone or ended meanwhile); the
        runs of its steps that had not ended are handed to kill_run first."""
        state = self._newest_state(message.task_id)
        if state is None or state.task.state.finished:
            return None
        if message.kill_run is not None:
            for step in state.steps:
                if step.run_id is not None and not step.state.finished:
                    message.kill_run(step.run_id)
        now = self._clock()
        state.interrupt(now, message.reason)
        state.finish(now, self._config.key_expire)
        return state.take_changes()

    def _newest_state(self, task_id: str) -> TaskState | None:
        """A task as it is: what a full disk refused (not yet on disk) over what LMDB holds."""
        kept_task, kept_steps = self._unsaved.get(task_id, (None, {}))
        stored_task, stored_steps = self._db.get_task_and_steps(task_id)
        task = kept_task or stored_task
        if task is None:
            return None
        return TaskState(task, [kept_steps.get(step.index, step) for step in stored_steps], (), plan=False)

    def _saves_waiting(self) -> list[SaveRecords]:
        """The SaveRecords tells queued right behind the one in hand, taken from the mailbox in
        order (up to GROUP), so that one transaction writes them all; anything else (a message
        that wants an answer, a stop) ends the run and is left for pykka's loop."""
        inbox = self.actor_inbox  # a queue.Queue of envelopes (see _create_actor_inbox)
        taken: list[SaveRecords] = []
        if not isinstance(inbox, queue.Queue):  # another pykka: no batching, nothing lost
            return taken
        with inbox.mutex:
            while inbox.queue and len(taken) < GROUP:
                envelope = inbox.queue[0]
                message = envelope.message
                if envelope.reply_to is not None or not isinstance(message, SaveRecords) or message.create is not None:
                    break  # a save with its task's create is a create first (see _create)
                taken.append(inbox.queue.popleft().message)
        return taken

    def _save(self, messages: list[SaveRecords]) -> None:
        if self._dropping:
            for message in (m for m in messages if m.task_id in self._dropping):
                self._refuse(message, DiskFull(f"task {message.task_id} was not stored"))
            messages = [m for m in messages if m.task_id not in self._dropping]
        merged: list[tuple[SaveRecords, TaskRecord | None, tuple[StepRecord, ...]]] = []
        try:  # the merge too: a fault before the write must refuse these saves as well (their steps wait)
            merged.extend((message, *self._merge_unsaved(message.task_id, message.task, message.steps))
                          for message in messages)
            self._db.save_many([(message.task_id, task, steps) for message, task, steps in merged])
        except WRITE_ERRORS as exc:
            for message, task, steps in merged:
                self._keep_unsaved(message.task_id, task, steps)
            self._failed(exc)
            for message in messages:
                self._refuse(message, exc)
            return
        except Exception as exc:  # a bug: these saves are refused, not kept (they would fail again); the store goes on
            log.exception("store: saving %s failed", ", ".join(sorted({m.task_id for m in messages})))
            for message in messages:
                self._refuse(message, exc)
            self._end_refused(((m.task_id, m.task) for m in messages), exc)
            return
        for message, task, steps in merged:
            committed = replace(message, task=task, steps=steps)
            if message.durable or task is not None or self._awaiting:  # in order behind the others
                self._awaiting.append(committed)
            else:
                self._deliver(committed)

    def _end_refused(self, changes: Iterable[tuple[str, TaskRecord | None]], exc: Exception) -> None:
        """A task whose end a bug refused (of its records: task id, summary) gets nothing more from
        its runner: it ends interrupted from what is on disk, else it stays running there for ever.
        Once: the interrupt's own save may meet the same bug."""
        for task_id in {task_id for task_id, task in changes if task is not None and task.state.finished} - self._ending:
            self._ending.add(task_id)
            try:
                self._interrupt(InterruptStored(task_id, f"task interrupted: its end could not be stored "
                                                         f"({type(exc).__name__}: {exc})"))
            finally:
                self._ending.discard(task_id)

    def _flush(self) -> bool:
        """Flush what was committed; then tell everyone waiting for it. False if the flush failed
        (the writes promised durable are then refused)."""
        awaiting, self._awaiting = self._awaiting, []
        try:
            self._db.sync()
        except WRITE_ERRORS as exc:
            self._failed(exc)
            for message in awaiting:  # in order: a create refused here drops its task before its saves
                if isinstance(message, _Created):
                    self._not_created(message)
                elif message.durable or message.task is not None or message.task_id in self._dropping:
                    self._refuse(message, exc)  # (a save of a task that is not stored is never told)
                else:
                    self._deliver(message)
            return False
        try:
            self._give_back()
        except Exception:  # a bug: those names go with the next start's orphans; the writes are told
            log.exception("store: giving back the workspace names of removed tasks failed")
        for message in awaiting:
            self._acknowledge(message)
        return True

    def _acknowledge(self, message: SaveRecords | _Created) -> None:
        """Tell those waiting for a write now on disk. A fault (a bug) is that write's answer, never
        the others' nor the store's end: a flush runs after a message's handling, outside its guard."""
        try:
            if isinstance(message, _Created):
                self._created(message)
            else:
                self._deliver(message)
        except Exception as exc:
            reply = message.message.reply if isinstance(message, _Created) else message.reply
            log.exception("store: telling a write on disk failed")
            if reply is not None:
                reply.fail(exc)

    def _deliver(self, message: SaveRecords) -> None:
        for position, (ref, then) in enumerate(message.then):  # first: a step waiting for its start to be on disk
            if not tell_if_alive(ref, then) and position < len(message.otherwise):  # its actor has stopped
                tell_if_alive(*message.otherwise[position])
        if message.reply is not None:
            message.reply.arrive()
        self._committed(message.task_id, message.task, message.steps)

    def _refuse(self, message: SaveRecords, exc: BaseException) -> None:
        if message.reply is not None:
            message.reply.fail(self._refusal(f"the change could not be stored: {exc}"))
        for ref, otherwise in message.otherwise:
            tell_if_alive(ref, otherwise)

    def _keep_unsaved(self, task_id: str, task: TaskRecord | None, steps: tuple[StepRecord, ...]) -> None:
        """Keep what a full disk refused, on top of what was kept for the task before."""
        old_task, old_steps = self._unsaved.get(task_id, (None, {}))
        self._unsaved[task_id] = (task or old_task, {**old_steps, **{s.index: s for s in steps}})

    def _merge_unsaved(self, task_id: str, task: TaskRecord | None, steps: tuple[StepRecord, ...]):
        """Newer records on top of what a full disk refused for the same task."""
        if task_id not in self._unsaved:
            return task, steps
        self._keep_unsaved(task_id, task, steps)
        merged_task, merged = self._unsaved.pop(task_id)
        return merged_task, tuple(merged[i] for i in sorted(merged))

    def _retry(self) -> None:
        self._retry_scheduled = False
        if not self._delete_undeleted():
            return
        if not self._unsaved:  # a refused create, delete or flush: is there room again?
            try:
                self._db.probe()
            except WRITE_ERRORS as exc:
                self._failed(exc)
                return
        for task_id in list(self._unsaved):
            task, steps = self._unsaved.pop(task_id)
            try:
                self._db.save(task_id, task, tuple(steps[i] for i in sorted(steps)))
                self._db.sync()
            except WRITE_ERRORS as exc:
                self._unsaved[task_id] = (task, steps)
                self._failed(exc)
                return
            except Exception as exc:  # a bug: these are dropped (they would fail again), the others written
                log.exception("store: writing the kept records of task %s failed", task_id)
                self._end_refused(((task_id, task),), exc)
                continue
            self._committed(task_id, task, tuple(steps.values()))
        self._give_back()
        if self._disk_full.is_set():
            log.warning("store: the disk has room again; every record is written")
        self._disk_full.clear()
        self._refusal = DiskFull

    def _delete_undeleted(self) -> bool:
        """Delete the records of refused creates that the disk kept (flushed with what follows);
        False if it still refuses."""
        return all(self._delete_refused(task) for task in list(self._undeleted.values()))

    def _delete_refused(self, task: TaskRecord) -> bool:
        """Delete the records of a create whose flush failed; its workspace's name is given back
        once that is on disk. False while the disk refuses: it is kept for the retry."""
        try:
            self._db.delete_task(task)
        except WRITE_ERRORS as exc:
            self._failed(exc)
            self._undeleted[task.id] = task
            return False
        self._undeleted.pop(task.id, None)
        self._to_release.add(task.id)
        return True

    def _give_back(self) -> None:
        """Everything committed is on disk: the workspaces of removed records lose their
        directories (their names are free), unless their id was stored again meanwhile (that
        task's directory now). Never before: a crash of the machine may bring back a record
        whose removal was not flushed, and on a root that folds case another id could have
        taken its name meanwhile."""
        released, self._to_release = self._to_release, set()
        for task_id in released:
            if self._db.get_task(task_id) is None:
                casefold.release_workspace(self._config.workspace_entry(task_id))

    def _committed(self, task_id: str, task: TaskRecord | None, steps: tuple[StepRecord, ...]) -> None:
        """Tell the commit hook (events, waiters, subscribers) of a write on disk: the one place it
        is called. Its fault (a bug) is logged, never the write's answer: a create told it failed
        was stored all the same and never run, and a retry stopped with the rest of what it kept."""
        # A small write may fit in freed pages while the disk is still full: only a new task or
        # the retry of everything refused says there is room again.
        try:
            self._on_commit(task_id, task, steps)
        except Exception:
            log.exception("store: publishing a write of task %s failed; the write stands", task_id)

    def _failed(self, exc: BaseException) -> None:
        self._refusal = DataDirLost if isinstance(exc, StoreDetached) else DiskFull
        if not self._disk_full.is_set():
            log.error("store: a write failed (%s); retrying every %gs", exc, RETRY_AFTER)
        self._disk_full.set()
        if not self._retry_scheduled:
            self._retry_scheduled = True
            ref = self.actor_ref
            self._call_later(RETRY_AFTER, lambda: tell_if_alive(ref, RetryUnsaved()))

    def _remove_files(self, task_id: str) -> None:
        if not self._files_removed(task_id):
            raise WorkspaceLeft(errno.EMFILE, f"the workspace of task {task_id} could not be removed whole")

    def _files_removed(self, task_id: str) -> bool:
        """Remove what a task's workspace holds, its directory kept (it goes once the record is
        gone). Moved aside at once and removed by the discarder's thread: a tree of many files
        does not hold the single writer. Removed here while the disk is full (the space is wanted
        now, for the write that follows) or where it cannot be moved: then False if some of it is
        left for want of a descriptor (rmtree opens each directory): the caller keeps the record,
        or the files would never be removed. Other failures (a file made immutable, a read-only
        mount) are let go, logged in one warning however many files they left."""
        entry = self._config.workspace_entry(task_id)
        if not self._disk_full.is_set() and self._discarder.detach(entry):
            return True
        leftovers = Leftovers()
        empty_tree(entry, leftovers.failed)
        if leftovers.left:
            log.warning("workspace of task %s: %s", task_id, leftovers.summary())
        return not leftovers.short

    def _after_removal(self, write: Callable[[], Any]) -> Any:
        """A write that follows a removal of files: on a disk the removed tasks' own logs filled,
        it needs the room their removal (on the discarder's thread) frees. Refused, it waits for
        that (bounded) and is tried once more."""
        try:
            return write()
        except WRITE_ERRORS:
            if not self._discarder.wait_idle(FREE_WAIT):
                raise
            return write()

    def _attach(self) -> bool:
        self._db.attach()
        return True

    def _guarded(self, write: Callable[[], Any]) -> Any:
        try:
            return write()
        except WRITE_ERRORS as exc:
            self._failed(exc)
            return None

    def _sweep(self, whole: bool = True) -> int:
        """Remove expired tasks, a batch at a time; how many went. Not `whole` (the timer's): one
        batch, the next told behind what waits meanwhile: thousands of tasks expiring together
        (their files removed here) do not hold the single writer, and every step's start, at once."""
        total = 0
        while True:
            now = self._clock()
            expired = self._db.expired(now, SWEEP_BATCH)
            if expired and self._guarded(self._attach) is None:  # a data dir not ours: its files stay
                break
            if not all(self._files_removed(task_id) for task_id in expired):  # files first, as a delete does
                break  # the records stay, swept (their files with them) at the next round
            gone = self._guarded(lambda: self._after_removal(lambda: self._db.delete_expired(now, SWEEP_BATCH))) or []
            self._to_release.update(gone)  # their directories last, once on disk, as a delete's
            if gone:
                self._on_delete(tuple(gone))
            total += len(gone)
            if len(gone) < SWEEP_BATCH:
                break
            if not whole:
                tell_if_alive(self.actor_ref, ScheduledSweep())
                break
        if total:
            self._flush()
            log.debug("sweep removed %d expired tasks", total)
        return total
