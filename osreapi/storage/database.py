"""The LMDB environment: task summaries, step records, specs and the expiry index.

Writes happen on one thread only (the StoreActor's); reads may come from any thread.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from ..errors import EngineClosed, OsreapiError, StoreDetached, StoreUnavailable
from ..records import StepRecord, TaskRecord
from ..spec import StepSpec
from ..vocabulary import State
from . import reattach
from .integrity import check_data_file
from .mapsize import fitted_map_size

log = logging.getLogger(__name__)

INITIAL_MAP_SIZE = 2 << 30  # sparse on disk; grown on MapFullError
_STEP_KEY = struct.Struct(">I")
_EXPIRY_KEY = struct.Struct(">Q")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps makes one per call


def _dumps(data: Any) -> bytes:
    return _ENCODER.encode(data).encode("utf-8")


def _task_key(task_id: str) -> bytes:
    return task_id.encode("utf-8")


def _get(txn: lmdb.Transaction, db: Any, task_id: str) -> bytes | None:
    """A task's value in db; None for the empty id, which no task has (LMDB refuses an empty key)."""
    return txn.get(_task_key(task_id), db=db) if task_id else None


def _step_key(task_id: str, index: int) -> bytes:
    return task_id.encode("utf-8") + b"\x00" + _STEP_KEY.pack(index)


def _expiry_key(expires: float, task_id: str) -> bytes:
    return _EXPIRY_KEY.pack(max(0, int(expires * 1000))) + task_id.encode("utf-8")


class _ResizeGate:
    """Readers share it; growing the map (or opening the environment again, or closing it) waits
    until no read transaction is open, and for the one doing so before it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:  # one holder at a time (a close() during a reopen, say)
                self._cond.wait()
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class Database:
    def __init__(self, path: Path, map_size: int = INITIAL_MAP_SIZE, relock: Callable[[], None] = lambda: None) -> None:
        """relock: take the data dir's lock again (it went with a data dir that was removed), or
        raise; called before the database is written anew at its path (see check_attached)."""
        path.mkdir(parents=True, exist_ok=True)
        self._data_file = path / "data.mdb"  # (made once: looked at before every write)
        check_data_file(self._data_file)  # one cut short would be a SIGBUS once mapped
        new = _empty(self._data_file)
        self._path = path
        self._relock = relock
        self.lost: str | None = None  # why the data file is not at its path and could not be put back
        self._ceiling: int | None = None  # a map size the map could not grow from (see _grow)
        self._open(fitted_map_size(map_size))
        self._gate = _ResizeGate()
        self._closed = False
        self._fatal = False  # LMDB's fatal state: opened again at once, else before the next write
        self._page_size = self._env.stat()["psize"]
        self.made = self._made(new)
        self._listed: dict[bytes, tuple[bytes, TaskRecord]] = {}  # key -> (stored bytes, parsed), of the last listing
        self._counts_lock = threading.Lock()
        self._counts: Counter[State] = Counter(task.state for task in self.list_tasks())
        # Tasks deleted so far, counted after each commit: a reader that notes it before reading a
        # finished task may cache that task's records for as long as the count holds.
        self.deletions = 0

    def _open(self, map_size: int) -> None:
        # Commits are not flushed one by one: the store calls sync() where durability is promised
        # (a task accepted, begun, paused or ended). A process crash loses nothing either way;
        # an OS crash may lose the newest step-only updates, which recovery tolerates.
        # All or nothing: an environment whose databases did not open is not kept with the old
        # one's handles (reads would fail inside their transactions).
        env = lmdb.open(str(self._path), map_size=map_size, max_dbs=8, subdir=True, sync=False)
        try:
            env.reader_check()
            dbs = [env.open_db(name) for name in (b"tasks", b"steps", b"specs", b"expiry", b"meta")]
            self._map_size = env.info()["map_size"]  # what a reopen asks for (a closed one cannot tell)
        except BaseException:
            env.close()
            raise
        self._env = env
        self._tasks, self._steps, self._specs, self._expiry, self._meta = dbs
        self._identity = reattach.identity(self._data_file)

    def _made(self, new: bool) -> float:
        """When this database was made (wall time; 0 if before this was recorded): a workspace
        older than it was not left by its deletions (see recovery.remove_orphan_workspaces).
        Written here once, before any actor runs, and flushed at once (a start that finds it
        writes nothing)."""
        with self._env.begin() as txn:
            raw = txn.get(b"made", db=self._meta)
        if raw is None:
            raw = repr(time.time() if new else 0.0).encode("ascii")
            with self._env.begin(write=True) as txn:
                txn.put(b"made", raw, db=self._meta)
            self._env.sync(True)
        return float(raw)

    def reopen(self) -> None:
        """Open the environment again, once no read is under way. After a write of a meta page
        failed (an I/O error, a full disk), LMDB refuses every transaction of the environment
        (MDB_PANIC) until it is opened again; `_write` does so at once. Opened again, it holds
        what the last meta page written says: every commit before the failed one."""
        with self._gate.exclusive():
            map_size = self._map_size
            self._env.close()
            self._open(map_size)
            self._fatal = False

    def sync(self) -> None:
        """Flush committed transactions to disk: to the data file at its path (StoreDetached if
        it is gone and cannot be put back)."""
        self.check_attached()
        self._env.sync(True)

    def attach(self) -> None:
        """Before files in the data dir are removed (a delete's, a sweep's): they are this engine's
        while its data file is at its path (put back here if it was removed), or while it is gone
        and the lock is this engine's again (a full disk refused the copy: removing files makes
        room for it). StoreDetached otherwise: a data dir restored under the engine, or taken by
        another server, is left as it is, its workspaces with it."""
        try:
            self.check_attached()
        except StoreDetached:
            if reattach.place(self._data_file, self._identity) is not reattach.Place.GONE:
                raise
            try:
                self._relock()  # (taken already by the put back, unless another server has it)
            except (OSError, OsreapiError) as exc:
                raise StoreDetached(self.lost or str(exc)) from exc

    def check_attached(self) -> None:
        """Make sure the open data file is the one at its path: one removed (its data dir with it)
        is written there anew from the open environment, which holds every record; else
        StoreDetached says why (a write's answer, tried again by the store's retry). A stat per
        write (and per health probe of an idle engine): the cost of noticing at once."""
        data_file = self._data_file
        where = reattach.place(data_file, self._identity)
        if where is reattach.Place.KEPT:  # (a data dir moved away and back keeps it)
            self.lost = None
            return
        cause = None
        if where is reattach.Place.REPLACED:
            reason = (f"{data_file} was replaced while the server ran: it is left as it is, and nothing more can be "
                      "stored; move it away to have the server write its own database there again, or stop the "
                      "server to use that one (what was stored since it was replaced is then lost)")
        else:
            try:
                self._put_back(data_file)
                return
            except (OSError, lmdb.Error, OsreapiError) as exc:
                cause = exc
                reason = (f"{data_file} was removed while the server ran and cannot be written there again "
                          f"({type(exc).__name__}: {exc}); every record is kept, and written there once it can be")
        if self.lost != reason:
            log.error("database: %s", reason)
        self.lost = reason
        raise StoreDetached(reason) from cause

    def _put_back(self, data_file: Path) -> None:
        """Take the data dir's lock again (it went with the data dir), then write the open
        environment at its path and use that one from now on."""
        self._relock()
        self._path.mkdir(parents=True, exist_ok=True)
        reattach.copy_into_place(self._env, data_file)
        self.reopen()
        log.warning("database: %s was removed while the server ran; written there again with every record", data_file)
        self.lost = None

    def close(self) -> None:
        """Flush and close, once no read is under way; a read from now on raises EngineClosed
        (a thread of a program that embeds the engine may still read while it closes)."""
        try:
            self.check_attached()
        except StoreDetached:
            log.error("database: closed while its data file is not at %s: what was stored since is lost", self._path)
        with self._gate.exclusive():
            self._closed = True
            if not self._fatal:  # else closed by a reopen that failed, or refusing: nothing to flush
                self._env.sync(True)
            self._env.close()

    # -- writes (one thread) -------------------------------------------------------------

    def _write(self, work) -> Any:
        """Run work(txn) in a write transaction, growing the map and retrying when it is full."""
        if self._fatal:  # the environment could not be opened again after its fatal error
            self.reopen()
        self.check_attached()
        self._grow(when_used_over=0.5)
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    return work(txn)
            except lmdb.MapFullError:
                self._grow(when_used_over=0.0)
            except lmdb.Error:
                self._reopen_if_fatal()
                raise

    def _reopen_if_fatal(self) -> None:
        """A commit whose meta page could not be written leaves LMDB in its fatal state: every
        transaction, reads too, is refused until the environment is opened again. Done at once
        (else before the next write): reads do not wait for the store's retry."""
        try:
            self._env.begin().abort()
        except lmdb.PanicError:
            self._fatal = True
            try:
                self.reopen()
            except (lmdb.Error, OSError) as exc:  # the write's own error is the answer: said here only
                log.error("database: cannot be opened again after a failed write of its meta page (%s); "
                          "tried again before the next write, reads are refused until then", exc)
                return
            log.warning("database: opened again after a failed write of its meta page")
        except lmdb.Error:  # another refusal (readers full, say): the write's own error is the answer
            pass

    def _grow(self, when_used_over: float) -> None:
        """Double the map once more than this share of it is used. Growing before it is full
        matters: py-lmdb's abort of a write that hit MapFullError waits until no read is in
        progress, which busy readers can postpone for ever."""
        info = self._env.info()
        if (info["last_pgno"] + 1) * self._page_size <= info["map_size"] * when_used_over:
            return
        if when_used_over and self._ceiling is not None and info["map_size"] >= self._ceiling:
            return  # it could not grow from here: tried again when it is full
        with self._gate.exclusive():
            try:
                self._env.set_mapsize(info["map_size"] * 2)
            except lmdb.Error:  # no address space for it (ulimit -v)
                # LMDB unmapped the old map before it tried, and py-lmdb gives the environment up:
                # every read and write was refused from then on, for good. Opened again as it was.
                self._fatal = True  # (opened again before the next write if this open fails)
                self._env.close()
                self._open(info["map_size"])
                self._fatal = False
                if self._ceiling is None:
                    log.warning("database: the map cannot grow past %d MiB (no address space for more); "
                                "writes go on while it has room", info["map_size"] >> 20)
                self._ceiling = info["map_size"]
                if not when_used_over:  # full: this write cannot be done
                    raise
                return
            self._map_size = info["map_size"] * 2
            self._ceiling = None

    def probe(self, size: int = 256 * 1024) -> None:
        """Write `size` bytes and take them back, flushed: raises while the disk has no room for a
        write of that size (freed pages alone do not prove there is room again)."""
        self._write(lambda txn: txn.put(b"probe", bytes(size), db=self._meta))
        self._write(lambda txn: txn.delete(b"probe", db=self._meta))
        self.sync()

    def create_task(
        self, task: TaskRecord, steps: tuple[StepRecord, ...], specs: tuple[StepSpec, ...], now: float,
        before_writing: Callable[[TaskRecord | None], None] = lambda old: None,
        first: tuple[TaskRecord | None, tuple[StepRecord, ...]] | None = None,
    ) -> tuple[TaskRecord | None, bool]:
        """Store a new task. If the id exists and has not expired, store nothing and return the
        existing task; otherwise `before_writing(the expired task or None)` readies the workspace
        (removes the old one's files, takes the name) and the task is written, an expired one
        replaced (what it raises stores nothing and leaves the expired task as it was). `first`:
        its runner's first changes (task, steps), written in the same transaction.
        Returns (existing task or None, whether an expired task was replaced)."""

        def work(txn: lmdb.Transaction) -> tuple[TaskRecord | None, TaskRecord | None]:
            raw = txn.get(_task_key(task.id), db=self._tasks)
            old = TaskRecord.from_json(json.loads(raw)) if raw is not None else None
            if old is not None and (old.expires is None or old.expires > now):
                return old, None
            before_writing(old)
            if old is not None:
                txn.delete(_expiry_key(old.expires, old.id), db=self._expiry)
                self._delete_task(txn, old.id)
            txn.put(_task_key(task.id), _dumps(task.to_json()), db=self._tasks)
            txn.put(_task_key(task.id), _dumps([s.to_json() for s in specs]), db=self._specs)
            for step in steps:
                txn.put(_step_key(task.id, step.index), _dumps(step.to_json()), db=self._steps)
            if first is not None:
                self._save_in(txn, task.id, *first)
            return None, old

        existing, replaced = self._write(work)  # the store flushes it before answering
        if existing is None:
            self._count(first[0].state if first is not None and first[0] is not None else task.state, +1)
            if replaced is not None:
                self._count(replaced.state, -1)
                self.deletions += 1  # the expired task is gone: see `deletions`
        return existing, replaced is not None

    def save(self, task_id: str, task: TaskRecord | None, steps: tuple[StepRecord, ...] = ()) -> None:
        """Write a task summary and/or step records in one transaction; index the expiry."""
        self.save_many(((task_id, task, steps),))

    def save_many(self, changes) -> None:
        """Several save()s, of (task_id, task or None, steps), in one transaction (in order)."""

        def work(txn: lmdb.Transaction) -> list[tuple[State | None, TaskRecord | None]]:
            return [(self._save_in(txn, task_id, task, steps), task) for task_id, task, steps in changes]

        for old_state, task in self._write(work):
            if task is not None and old_state is not task.state:
                self._count(old_state, -1)
                self._count(task.state, +1)

    def _save_in(self, txn: lmdb.Transaction, task_id: str, task: TaskRecord | None,
                 steps: tuple[StepRecord, ...]) -> State | None:
        """Write one task's changes; return the state the task had (None: task not written)."""
        old_state = None
        if task is not None:
            key = _task_key(task.id)
            raw = txn.get(key, db=self._tasks)
            old = json.loads(raw) if raw else {}
            old_state = State(old["state"]) if old else None
            if old.get("expires") is not None and old["expires"] != task.expires:
                txn.delete(_expiry_key(old["expires"], task.id), db=self._expiry)
            if task.expires is not None:
                txn.put(_expiry_key(task.expires, task.id), b"", db=self._expiry)
            txn.put(key, _dumps(task.to_json()), db=self._tasks)
        for step in steps:
            txn.put(_step_key(task_id, step.index), _dumps(step.to_json()), db=self._steps)
        return old_state

    def expired(self, now: float, limit: int) -> list[str]:
        """The ids of up to `limit` tasks whose records expired at or before `now`, in the order
        delete_expired takes them."""
        with self._reading() as txn:
            return [key[8:].decode("utf-8") for key in self._expired_keys(txn, now, limit)]

    def _expired_keys(self, txn: lmdb.Transaction, now: float, limit: int) -> list[bytes]:
        bound = _EXPIRY_KEY.pack(int(now * 1000))
        keys = []
        for key, _ in txn.cursor(db=self._expiry):
            if key[:8] > bound or len(keys) >= limit:
                break
            keys.append(key)
        return keys

    def delete_expired(self, now: float, limit: int) -> list[str]:
        """Delete up to `limit` tasks whose records expired at or before `now`; return their ids."""

        def work(txn: lmdb.Transaction) -> list[str]:
            gone: list[str] = []
            for key in self._expired_keys(txn, now, limit):
                task_id = key[8:].decode("utf-8")
                txn.delete(key, db=self._expiry)
                gone.append((task_id, self._delete_task(txn, task_id)))
            return gone

        gone = self._write(work)
        self.deletions += len(gone)  # after the commit: see `deletions`
        for _, state in gone:
            self._count(state, -1)
        return [task_id for task_id, _ in gone]

    def delete_task(self, task: TaskRecord) -> None:
        """Remove one task's records and its expiry entry."""

        def work(txn: lmdb.Transaction) -> None:
            if task.expires is not None:
                txn.delete(_expiry_key(task.expires, task.id), db=self._expiry)
            return self._delete_task(txn, task.id)

        self._count(self._write(work), -1)
        self.deletions += 1  # after the commit: see `deletions`

    def _delete_task(self, txn: lmdb.Transaction, task_id: str) -> State | None:
        """Delete a task's records; return the state it had (None if there was none)."""
        raw = txn.get(_task_key(task_id), db=self._tasks)
        txn.delete(_task_key(task_id), db=self._tasks)
        txn.delete(_task_key(task_id), db=self._specs)
        prefix = task_id.encode("utf-8") + b"\x00"
        cursor = txn.cursor(db=self._steps)
        if cursor.set_range(prefix):
            while cursor.key().startswith(prefix):
                if not cursor.delete():
                    break
        return State(json.loads(raw)["state"]) if raw is not None else None

    def _count(self, state: State | None, delta: int) -> None:
        if state is not None:
            with self._counts_lock:
                self._counts[state] += delta

    def state_counts(self) -> Counter[State]:
        """Stored tasks by state, kept as the store writes (no scan)."""
        with self._counts_lock:
            return Counter(self._counts)

    # -- reads (any thread) --------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction]:
        with self._open_env() as env:
            with _unavailable_if_refused():
                txn = env.begin(buffers=False)
            with txn:
                yield txn

    @contextmanager
    def _open_env(self) -> Iterator[lmdb.Environment]:
        """The environment, for reads (not while it is opened again); EngineClosed once closed."""
        with self._gate.reading():
            if self._closed:
                raise EngineClosed("the engine is shut down")
            yield self._env

    def get_task(self, task_id: str) -> TaskRecord | None:
        with self._reading() as txn:
            raw = _get(txn, self._tasks, task_id)
        return TaskRecord.from_json(json.loads(raw)) if raw is not None else None

    def get_steps(self, task_id: str) -> list[StepRecord]:
        with self._reading() as txn:
            return self._steps_in(txn, task_id)

    def get_task_and_steps(self, task_id: str) -> tuple[TaskRecord | None, list[StepRecord]]:
        """A task and its steps as of one moment (one read transaction)."""
        with self._reading() as txn:
            raw = _get(txn, self._tasks, task_id)
            if raw is None:
                return None, []
            return TaskRecord.from_json(json.loads(raw)), self._steps_in(txn, task_id)

    def _steps_in(self, txn: lmdb.Transaction, task_id: str) -> list[StepRecord]:
        prefix = task_id.encode("utf-8") + b"\x00"
        steps = []
        cursor = txn.cursor(db=self._steps)
        if cursor.set_range(prefix):
            for key, raw in cursor:
                if not key.startswith(prefix):
                    break
                steps.append(StepRecord.from_json(json.loads(raw)))
        return steps

    def get_specs(self, task_id: str) -> tuple[StepSpec, ...]:
        with self._reading() as txn:
            raw = _get(txn, self._specs, task_id)
        return tuple(StepSpec.from_json(s) for s in json.loads(raw)) if raw is not None else ()

    def list_tasks(self) -> list[TaskRecord]:
        """Every stored task. A record whose stored bytes are those of the last listing is not
        parsed again (parsing was half the cost of GET /): the bytes are the truth, so nothing
        can go stale, and a task that is gone drops out with the next listing."""
        last = self._listed
        listed: dict[bytes, tuple[bytes, TaskRecord]] = {}
        with self._reading() as txn:
            for key, raw in txn.cursor(db=self._tasks):
                known = last.get(key)
                record = known[1] if known is not None and known[0] == raw else TaskRecord.from_json(json.loads(raw))
                listed[key] = (raw, record)
        self._listed = listed  # concurrent listings: the last one kept wins, either is right
        return [record for _, record in listed.values()]

    def size_bytes(self) -> int:
        with self._open_env() as env, _unavailable_if_refused():
            return (env.info()["last_pgno"] + 1) * self._page_size


def _empty(data_file: Path) -> bool:
    """Whether the data file is missing or empty: LMDB makes a new database."""
    try:
        return data_file.stat().st_size == 0
    except FileNotFoundError:
        return True


@contextmanager
def _unavailable_if_refused() -> Iterator[None]:
    """LMDB's refusal of the environment, in its fatal state or not opened again yet (see
    Database._write), as the store being unavailable for a moment."""
    try:
        yield
    except lmdb.Error as exc:
        raise StoreUnavailable(f"the database cannot be read now: {exc}") from exc
