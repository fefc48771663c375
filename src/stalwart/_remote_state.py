"""A run's state on a ``StateStore`` (object storage): markers, the step journal, dead
letters and the run's lease, with the local root's guarantees.

The keys mirror the local layout, below the store's root (``s3://bucket/prefix``)::

    <pipeline>/runs/<run_id>/<output>                   step outputs, one PUT each
    <pipeline>/runs/<run_id>/.checkpoints/<step>.done   markers, one PUT each
    <pipeline>/runs/<run_id>/.checkpoints/<step>.items/seg-<n>, snap-<n>
                                                        a map step's item journal
    <pipeline>/runs/<run_id>/.journal/seg-<n>, snap-<n>  the step journal (``SegmentedLog``)
    <pipeline>/runs/<run_id>/.lease/<epoch>             the run's lease (``_lease``)
    <pipeline>/deadletter/<id>.json                     dead-letter envelopes
    <pipeline>/deadletter/.<id>.lock/<epoch>            serialises replays and discards of a letter

``RemoteCheckpointStore`` and ``RemoteDeadLetterStore`` are the local classes with their
storage seam (read, write, list, delete, sizes, the journal, the lock) pointed at the store;
everything else (what a marker must hold to count, envelopes, replay) is the same code.
``RemoteItemJournal`` is ``_journal.Journal`` (a map step's item lines) on the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from ._checkpoint import CheckpointStore
from ._clock import monotonic, sleep
from ._deadletter import ID_RE, DeadLetterStore, validate_id
from ._errors import DeadLetterError, RunLockedError, UsageError
from ._journal import Entry, GroupCommit, Replay, _line, parse_journal
from ._lease import FencedStore, Lease, lease_holder
from ._records import record_fields, validate_name
from ._store import LocalStore, SegmentedLog, StateStore

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from ._records import Marker, StepRecord

__all__ = [
    "RemoteCheckpointStore",
    "RemoteDeadLetterStore",
    "RemoteItemJournal",
    "RunLease",
    "deadletter_key",
    "item_journal_key",
    "open_store",
    "reset_run",
    "run_holder",
    "run_key",
]

log = logging.getLogger("stalwart.checkpoint")

COMPACT_AFTER = 32
"""Journal segments after which the writer folds them into a snapshot."""
_DEADLETTER_LOCK_WAIT = 60.0
_FLUSH_EVERY = 0.2
"""Seconds the journal writer gathers records into one segment (``close`` flushes at once)."""


def open_store(root: str) -> StateStore:
    """The store for ``root``: ``S3Store`` for ``s3://bucket/prefix``, else a directory."""
    if root.startswith("s3://"):
        from ._s3 import S3Store  # noqa: PLC0415 - s3fs only for an s3:// root

        return S3Store(root)
    if "://" in root:
        scheme = root.partition("://")[0]
        raise UsageError(
            f"the state root {root} uses {scheme}://, which stalwart cannot store state on; "
            f"use a directory or s3://bucket/prefix"
        )
    return LocalStore(root)


def run_key(pipeline: str, run_id: str) -> str:
    return f"{validate_name(pipeline, 'pipeline name')}/runs/{validate_name(run_id, 'run ID')}"


def deadletter_key(pipeline: str) -> str:
    return f"{validate_name(pipeline, 'pipeline name')}/deadletter"


def item_journal_key(run: str, step: str) -> str:
    """The prefix of the item journal of map step ``step`` of the run at key ``run``."""
    return f"{run}/.checkpoints/{validate_name(step, 'step name')}.items"


class RemoteCheckpointStore(CheckpointStore):
    """``CheckpointStore`` on a ``StateStore``: a marker is one PUT; the journal is a
    ``SegmentedLog`` written by a background thread (one segment per flush of the records
    that queued up, a snapshot every ``COMPACT_AFTER`` segments), off the step's path.

    The run's objects are listed once (one request, with their sizes), then the markers are
    kept current: a step that has to run costs no request to find that it has no marker,
    and checking a done step's outputs costs none either. (The run's lease makes this
    process the only writer.)"""

    def __init__(self, store: StateStore, key: str) -> None:
        super().__init__(store.url(key))
        self._store = store
        self._key = key
        self._journal = SegmentedLog(store, f"{key}/.journal")
        self._present: set[str] | None = None
        self._levels: dict[str, dict[str, int]] = {}
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def _markers(self) -> set[str]:
        """What ``.checkpoints/`` holds (``<step>.done``, ``<step>.items/seg-<n>``...),
        listed once (one request), then kept current."""
        if self._present is None:
            prefix = f"{self._key}/.checkpoints/"
            self._present = {k[len(prefix) :] for k in self._store.list_keys(prefix)}
        return self._present

    def _read(self, name: str) -> bytes | None:
        if name not in self._markers():
            return None
        return self._store.read(f"{self._key}/.checkpoints/{name}")

    def _write(self, name: str, data: bytes) -> None:
        self._store.write(f"{self._key}/.checkpoints/{name}", data)
        self._markers().add(name)

    def _list(self) -> list[str]:
        """The markers and item journals (``<step>.items``, however many objects each)."""
        prefix = f"{self._key}/.checkpoints/"
        keys = self._store.list_keys(prefix)
        return sorted({key[len(prefix) :].partition("/")[0] for key in keys})

    def _delete(self, names: list[str]) -> list[str]:
        """Delete markers and item journals (every object of one): markers first, then each
        journal newest object first (a crash part-way leaves an older state of it)."""
        prefix = f"{self._key}/.checkpoints/"
        wanted = set(names)
        found: dict[str, list[str]] = {}
        for key in self._store.list_keys(prefix):
            name = key[len(prefix) :].partition("/")[0]
            if name in wanted:
                found.setdefault(name, []).append(key)
        doomed = sorted(found.items(), key=lambda item: not item[0].endswith(".done"))
        keys = [key for _, some in doomed for key in sorted(some, reverse=True)]
        if keys:
            self._store.delete(keys)
            self._present = None  # listed again when next asked
        return [name for name in names if name in found]

    def _ensure_directory(self) -> None:
        """Object storage has no directories."""

    def _size(self, output: str) -> int:
        """The output's size: from one listing of its "directory" (the first 1,000 objects
        right under it, so a directory of 100,000 item outputs costs one request, not 100),
        used once per output; then, or if it was not listed, one HEAD."""
        directory = output.rpartition("/")[0]
        sizes = self._levels.get(directory)
        if sizes is None:
            prefix = f"{self._key}/{directory}/" if directory else f"{self._key}/"
            sizes = self._levels[directory] = self._store.list_directory(prefix)[0]
        listed = sizes.pop(f"{self._key}/{output}", None)  # used once: then asked
        if listed is not None:
            return listed
        info = self._store.head(f"{self._key}/{output}")
        if info is None:
            raise FileNotFoundError(output)
        return info.size

    def item_journal(self, step: str) -> RemoteItemJournal | None:
        """The item journal of map step ``step`` (``None`` if the run has none, as listed)."""
        if not any(name.startswith(f"{step}.items/") for name in self._markers()):
            return None
        return RemoteItemJournal(self._store, item_journal_key(self._key, step))

    def _journal_stream(self) -> Iterable[bytes | None]:
        return self._journal.read().splitlines()

    def exists(self) -> bool:
        """Has this run left anything in the store? (Every run takes its lease first; no
        listing of the whole run, which may hold 100,000 item outputs.)"""
        return (
            bool(self._store.list_keys(f"{self._key}/.lease/"))
            or bool(self._markers())
            or bool(self._store.list_directory(f"{self._key}/")[0])
        )

    def commit(self, marker: Marker, record: StepRecord) -> None:
        """The step commit on a store: the marker is one PUT, durable when it returns, so
        the ``done`` record needs no commit of its own (it is queued like every record)."""
        self.write_marker(marker)
        self.write_record(marker.step, record)

    def commit_waiting(self) -> None:
        """Nothing waits: a marker on a store is durable when its PUT returns."""

    def write_record(self, step: str, record: StepRecord) -> None:
        """Queue ``record`` for the journal (the writer thread appends it; ``close`` waits
        for it). Statistics, not state: a record lost to a crash only makes status lag."""
        validate_name(step, "step name")
        records = self._load_journal()
        records[step] = record
        line = json.dumps({"step": step, **record_fields(record)}, separators=(",", ":"))
        self._queue.put((line + "\n").encode("utf-8"))
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_journal, name="stalwart-journal", daemon=True
            )
            self._writer.start()

    def _write_journal(self) -> None:
        while True:
            lines = [self._queue.get()]
            flush_at = time.monotonic() + _FLUSH_EVERY  # one segment for what comes meanwhile
            with contextlib.suppress(queue.Empty):
                while lines[-1] is not None:
                    lines.append(self._queue.get(timeout=max(0.0, flush_at - time.monotonic())))
            data = b"".join(line for line in lines if line is not None)
            if data:
                self._flush(data)
            if lines[-1] is None:
                return

    def _flush(self, data: bytes) -> None:
        try:
            self._journal.append(data)
            if self._journal.segments >= COMPACT_AFTER:
                records = dict(self._load_journal())
                snapshot = "".join(
                    json.dumps({"step": name, **record_fields(rec)}, separators=(",", ":")) + "\n"
                    for name, rec in records.items()
                )
                self._journal.compact(snapshot.encode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - statistics, not state (see CheckpointStore)
            log.warning(
                "could not append to the journal of %s (%s); status may lag for this run",
                self._store.url(self._key),
                exc,
            )

    def close(self) -> None:
        """Write what the journal still queues, then stop its writer."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)
            writer.join()


class RemoteItemJournal(GroupCommit):
    """A map step's item journal on a ``StateStore``: ``_journal.Journal``'s lines
    (``<id> <state> <detail>``) and group commit, where a store has no append.

    Each commit is one new immutable segment object (``SegmentedLog``: created once, whole or
    absent); every ``COMPACT_AFTER`` commits, a snapshot of the latest line of each id
    replaces them (created, then the older objects deleted). ``compact`` (start afresh, or
    fold) is written as a snapshot at the next commit, with the lines appended by then.

    Crash safety: a line is durable once the commit that carries it returned. A SIGKILL
    loses the lines not committed yet (at most ``max_batch``, or ``max_delay`` seconds of
    them): their items run again; nothing committed is lost, and a crash mid-compaction
    leaves the old objects or the snapshot, never a mix. Each object is parsed on its own:
    a line of one that is torn or garbage (a part that does not end with a newline ends
    with a torn line) is counted in ``Replay.bad``, never read as ``done``.

    One writer at a time: the run's holder (its store is fenced by the lease); a second
    writer's segment is refused (``RuntimeError``).
    """

    def __init__(
        self,
        store: StateStore,
        key: str,
        *,
        max_batch: int = 1,
        max_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_batch=max_batch, max_delay=max_delay, clock=clock)
        self.path = store.url(key)
        self._log = SegmentedLog(store, key)
        self._lines: list[bytes] = []
        """Appended, not committed yet."""
        self._latest: dict[str, Entry | bytes] | None = None
        """The latest line of each id (what a snapshot holds); encoded once, when needed."""
        self._rewrite = False

    def _load(self) -> tuple[Replay, dict[str, Entry | bytes]]:
        entries: list[Entry] = []
        bad = 0
        for part in self._log.read_parts():  # each on its own: a torn end stays torn
            found = parse_journal(part)
            entries += found.entries
            bad += found.bad
        latest: dict[str, Entry | bytes] = {entry.id: entry for entry in entries}
        self._latest = latest
        return Replay(entries, bad), latest

    def replay(self) -> Replay:
        """The whole journal (lines appended and not committed are committed first).
        ``OSError`` if the store cannot be read."""
        self.sync()
        return self._load()[0]

    def append(self, id: str, state: str, detail: str = "", *, durable: bool = False) -> None:
        """Append one line; with ``durable``, commit per the batch bounds (``_journal``).
        ``ValueError`` for a malformed line; the store's error if a commit fails."""
        self._add(id, _line(Entry(id, state, detail)), durable=durable)

    def append_many(self, entries: Iterable[Entry], *, durable: bool = False) -> None:
        """Append several lines, as ``append`` would one after another (a commit each time a
        batch is full). ``ValueError`` (nothing appended) if any line is malformed."""
        for id, line in [(entry.id, _line(entry)) for entry in entries]:
            self._add(id, line, durable=durable)

    def _add(self, id: str, line: bytes, *, durable: bool) -> None:
        # a snapshot must hold what is there already: read it before the first append
        latest = self._latest if self._latest is not None else self._load()[1]
        self._lines.append(line)
        latest[id] = line
        if durable:
            self._appended_durable()

    def sync(self) -> None:
        """Commit every line appended so far: one segment, or the snapshot that replaces the
        journal when one is due (``compact``, or ``COMPACT_AFTER`` segments)."""
        if not self._lines and not self._rewrite:
            return
        if self._rewrite or self._log.segments + 1 >= COMPACT_AFTER:
            self._log.replace(self._snapshot())
            self._rewrite = False
        else:
            self._log.append(b"".join(self._lines))
        self._lines.clear()
        self._waiting = 0
        self.commits += 1

    def _snapshot(self) -> bytes:
        latest = self._latest or {}
        parts: list[bytes] = []
        for key, value in latest.items():
            line = _read_back(value) if isinstance(value, Entry) else value
            latest[key] = line  # encoded once: the next snapshot only joins
            parts.append(line)
        return b"".join(parts)

    def close(self) -> None:
        """Commit what was appended. Idempotent."""
        self.sync()

    def abandon(self) -> None:
        """Drop what was appended and not committed (those items run again)."""
        self._lines.clear()
        self._waiting = 0

    def compact(self, entries: Iterable[Entry]) -> None:
        """Replace the journal by ``entries``: written as one snapshot by the next commit
        (with the lines appended by then), so a crash before it leaves the journal as it was."""
        self._lines.clear()
        self._waiting = 0
        self._latest = {entry.id: entry for entry in entries}
        self._rewrite = True


def _read_back(entry: Entry) -> bytes:
    """A line that was read (so checked then), as it was: no second check, ~10x faster
    than ``_line`` for the 100,000 lines of a snapshot."""
    if entry.detail:
        return f"{entry.id} {entry.state} {entry.detail}\n".encode()
    return f"{entry.id} {entry.state}\n".encode()


class RemoteDeadLetterStore(DeadLetterStore):
    """``DeadLetterStore`` on a ``StateStore``: an envelope is one PUT; replays and discards
    of a letter are serialised by a lease on ``deadletter/.<id>.lock/``."""

    def __init__(self, store: StateStore, key: str, *, pipeline: str) -> None:
        super().__init__(store.url(key), pipeline=pipeline)
        self._store = store
        self._key = key

    def _ensure_directory(self) -> None:
        """Object storage has no directories."""

    def _object(self, envelope_id: str) -> str:
        return f"{self._key}/{validate_id(envelope_id)}.json"

    def _read(self, envelope_id: str) -> bytes:
        try:
            data = self._store.read(self._object(envelope_id))
        except OSError as exc:
            raise DeadLetterError(f"cannot read dead letter {envelope_id}: {exc}") from None
        if data is None:
            raise UsageError(
                f"no dead letter {envelope_id} in {self._store.url(self._key)} "
                f"(see 'deadletter list')"
            )
        return data

    def _write(self, envelope_id: str, data: bytes) -> None:
        self._store.write(self._object(envelope_id), data)

    def _list(self) -> list[str]:
        prefix = f"{self._key}/"
        names = [key[len(prefix) :] for key in self._store.list_keys(prefix)]
        return sorted(n[:-5] for n in names if n.endswith(".json") and ID_RE.match(n[:-5]))

    def _size(self, envelope_id: str) -> int:
        info = self._store.head(self._object(envelope_id))
        if info is None:
            raise FileNotFoundError(self._store.url(self._object(envelope_id)))
        return info.size

    def _remove(self, envelope_id: str) -> None:
        self._store.delete([self._object(envelope_id)])

    def _remove_lock(self, envelope_id: str) -> None:
        # Its envelope is gone (ids are never reused): whoever locks it later finds nothing.
        lock = f"{self._key}/.{validate_id(envelope_id)}.lock/"
        with contextlib.suppress(Exception):
            self._store.delete(self._store.list_keys(lock))

    @contextlib.contextmanager
    def _locked(self, envelope_id: str) -> Iterator[None]:
        lock = f"{self._key}/.{validate_id(envelope_id)}.lock"  # one letter at a time
        lease = Lease(_unfenced(self._store), lock)
        deadline = monotonic() + _DEADLETTER_LOCK_WAIT
        while True:
            try:
                lease.acquire()
                break
            except RunLockedError as exc:
                if monotonic() > deadline:
                    raise DeadLetterError(
                        f"the dead letters are being replayed or discarded by another process "
                        f"({exc.holder}); try again later"
                    ) from None
                sleep(0.1)
        try:
            yield
        finally:
            lease.release()


def _unfenced(store: StateStore) -> StateStore:
    return store.inner if isinstance(store, FencedStore) else store


class RunLease:
    """The run lock on a store, used like ``RunLock``: on ``acquire``, refuse a store that
    ignores conditional writes (probed once per process), take the lease (``RunLockedError``
    at once if someone holds it), then abort the multipart uploads a killed holder left
    under the run. ``store`` is the store to hand the run: its writes check the lease."""

    def __init__(self, store: StateStore, key: str) -> None:
        self._key = key
        self._raw = store
        self.lease = Lease(store, f"{key}/.lease")
        self.store: StateStore = FencedStore(store, self.lease)

    @property
    def path(self) -> str:
        return self.lease.path

    @property
    def held(self) -> bool:
        return self.lease.held

    def acquire(self) -> None:
        check = getattr(self._raw, "check_conditional_writes", None)
        if check is not None:
            check()
        self.lease.acquire()
        abort: Any = getattr(self._raw, "abort_uploads", None)
        if abort is not None:
            try:
                aborted = abort(f"{self._key}/")
            except BaseException:
                self.lease.release()
                raise
            if aborted:
                log.info("aborted %d incomplete upload(s) left under %s", aborted, self.path)

    def release(self) -> None:
        self.lease.release()

    def __enter__(self) -> RunLease:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def reset_run(store: StateStore, key: str, steps: list[str] | None) -> list[str]:
    """Clear the markers of ``steps`` (every marker if ``None``) of the run at ``key``, under
    its lease; return the steps whose marker was removed."""
    if not RemoteCheckpointStore(store, key)._list():
        return []  # nothing to clear: no lease taken
    with RunLease(store, key) as lease:
        checkpoints = RemoteCheckpointStore(lease.store, key)
        return checkpoints.clear_all() if steps is None else checkpoints.clear(steps)


def run_holder(store: StateStore, key: str) -> str | None:
    """Who holds the run at ``key`` now (``None`` if nobody): what ``status`` shows."""
    return lease_holder(store, f"{key}/.lease/")
