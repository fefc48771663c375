"""A pipeline's runs on object storage: ``StoreRunHistory``, the ``_history.RunHistory`` of a
``StateStore`` (what ``runs``, ``report`` and ``gc`` read and delete), and ``VersionedRecord``,
the small pipeline-wide state that alert hygiene read-modify-writes (its failure streak).

The keys are the local layout's (see ``_remote_state``), plus::

    <pipeline>/runs/<run_id>/.summary.json     the run's summary (``_run_summary``), one PUT
    <pipeline>/.alert-streak/<n>               the failure streak, version n (``VersionedRecord``)

Requests ``runs`` makes for N runs: one delimited listing of ``<pipeline>/runs/`` per 1000 runs
(the run IDs: never a listing of their objects), N GETs of the summaries (up to 16 at a time),
two more (list and GET the newest lease epoch) for each run whose summary says it is running,
and for the dead-letter column one listing of the dead letters and a GET of each. A run's
outputs, markers and journal are read only for a run that has no summary.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ._errors import RunLockedError
from ._history import parse_summary
from ._lease import FencedStore
from ._records import is_name
from ._remote_state import (
    RemoteCheckpointStore,
    RemoteDeadLetterStore,
    RunLease,
    deadletter_key,
    run_holder,
    run_key,
)
from ._run_summary import SUMMARY_FILE
from ._store import SegmentedLog

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._store import StateStore

__all__ = ["StoreRunHistory", "VersionedRecord", "pipeline_store"]

log = logging.getLogger("stalwart.history")

_DELETE_BATCH = 1000  # keys per DeleteObjects request
_PARALLEL_READS = 16
"""Summaries read at once (s3fs shares one connection pool; 16 keeps a listing of a thousand
runs around a second on a real store)."""


def pipeline_store(store: StateStore) -> StateStore:
    """``store`` without the run's lease check: for the pipeline's own state (its alert
    streak), which outlives any one run and is guarded by its own conditional writes."""
    return store.inner if isinstance(store, FencedStore) else store


class StoreRunHistory:
    """The runs of ``pipeline`` on ``store`` (a ``_history.RunHistory``)."""

    def __init__(self, store: StateStore, pipeline: str) -> None:
        self._store = pipeline_store(store)
        self.pipeline = pipeline

    def _key(self, run_id: str) -> str:
        return run_key(self.pipeline, run_id)

    def location(self, run_id: str) -> str:
        return self._store.url(self._key(run_id))

    def run_ids(self) -> list[str]:
        names = self._store.list_dirs(f"{self.pipeline}/runs/")
        return [name for name in names if is_name(name)]

    def exists(self, run_id: str) -> bool:
        return run_id in self.run_ids()

    def summaries(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        keys = [f"{self._key(run_id)}/{SUMMARY_FILE}" for run_id in run_ids]
        if len(keys) > 1:
            with ThreadPoolExecutor(min(_PARALLEL_READS, len(keys))) as pool:
                found = list(pool.map(self._store.read, keys))
        else:
            found = [self._store.read(key) for key in keys]
        return {
            run_id: parse_summary(raw, self._store.url(key))
            for run_id, key, raw in zip(run_ids, keys, found, strict=True)
        }

    def holder(self, run_id: str) -> str | None:
        return run_holder(self._store, self._key(run_id))

    def last_change(self, run_id: str) -> str:
        """When the newest of the run's objects was written (a listing of the run's prefix;
        asked only for a run with neither a summary nor a journal that says when it started,
        such as one killed before it wrote either); "" if the run has no object left."""
        written = self._store.newest_write(self._key(run_id) + "/")
        if written is None:
            return ""
        import time  # noqa: PLC0415 - as in the local history

        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(written))

    def checkpoints(self, run_id: str) -> RemoteCheckpointStore:
        return RemoteCheckpointStore(self._store, self._key(run_id))

    def journal(self, run_id: str) -> bytes:
        return SegmentedLog(self._store, f"{self._key(run_id)}/.journal").read()

    def marker(self, run_id: str, step: str) -> bytes | None:
        return self._store.read(f"{self._key(run_id)}/.checkpoints/{step}.done")

    def deadletters(self) -> RemoteDeadLetterStore:
        key = deadletter_key(self.pipeline)
        return RemoteDeadLetterStore(self._store, key, pipeline=self.pipeline)

    def remove(self, run_id: str, *, dry_run: bool) -> tuple[str | None, int]:
        """Take the run's lease (never waiting), list the run's objects, delete them through
        the lease (a holder that lost it deletes nothing more), the summary last, then remove
        the lease itself (``Lease.remove``), leaving nothing under the run's prefix."""
        key = self._key(run_id)
        if dry_run:
            holder = self.holder(run_id)
            return (holder, 0) if holder else (None, sum(self._listing(key).values()))
        run_lease = RunLease(self._store, key)
        try:
            run_lease.acquire()
        except RunLockedError as exc:
            return exc.holder or "another process", 0
        removed = False
        try:
            sizes = self._listing(key)
            summary = f"{key}/{SUMMARY_FILE}"
            rest = [k for k in sizes if k != summary]
            for start in range(0, len(rest), _DELETE_BATCH):  # the lease checked per batch
                run_lease.store.delete(rest[start : start + _DELETE_BATCH])
            if summary in sizes:
                run_lease.store.delete([summary])  # last: until then `runs` still dates it
            run_lease.lease.remove()
            removed = True
        finally:
            if not removed:
                run_lease.release()
        return None, sum(sizes.values())

    def _listing(self, key: str) -> dict[str, int]:
        """The run's objects and their sizes, but its lease's."""
        lease = f"{key}/.lease/"
        sizes = self._store.list_sizes(f"{key}/")
        return {k: size for k, size in sizes.items() if not k.startswith(lease)}


class VersionedRecord:
    """A small JSON object that processes read-modify-write on a store without a lock, with
    the create-only writes the run's lease is made of (``StateStore.create``,
    ``If-None-Match: *``).

    ``<prefix>/<n>`` are its versions, each created once; the newest holds the value (an
    empty object: no value). ``swap(change)`` reads the newest version ``n`` and creates
    ``n + 1`` holding ``change(value)``; if another process created ``n + 1`` first, it reads
    again and retries, so no update is lost and none is applied twice, whatever the clocks.

    Old versions are deleted only once ``2 * keep`` pile up, and then all but the newest
    ``keep``: a version must never be deleted while a writer may still create it (that writer
    read the version before it as the newest, and would win with a stale value), and a writer
    would have to stall between its listing and its write while ``keep`` other updates
    complete for that to happen. What survives a crash: every version is one whole PUT.
    """

    def __init__(self, store: StateStore, prefix: str, *, tries: int = 20, keep: int = 32) -> None:
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"
        self._tries = tries
        self._keep = keep

    def _versions(self) -> list[tuple[int, str, int]]:
        found = []
        for key, size in self._store.list_sizes(self._prefix).items():
            number = key[len(self._prefix) :]
            if number.isdigit():
                found.append((int(number), key, size))
        return sorted(found)

    def _load(self, key: str) -> dict[str, Any] | None:
        raw = self._store.read(key)
        if raw is None:  # pragma: no cover - deleted since it was listed: a newer one exists
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            log.warning("ignoring the unreadable %s (%s)", self._store.url(key), exc)
            return None
        return data if isinstance(data, dict) else None

    def read(self) -> dict[str, Any] | None:
        """The value now (``None``: none)."""
        versions = self._versions()
        if not versions or not versions[-1][2]:
            return None
        return self._load(versions[-1][1])

    def swap(
        self, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Replace the value by ``change(value)`` (a function without side effects: it may be
        called again); return the value it replaced and the new one. Writes nothing if both
        are ``None`` (one listing). ``OSError`` if other writers won ``tries`` times running."""
        for _ in range(self._tries):
            versions = self._versions()
            newest = versions[-1] if versions else (0, "", 0)
            old = self._load(newest[1]) if newest[2] else None
            new = change(old)
            if old is None and new is None:
                return None, None
            body = b"" if new is None else json.dumps(new, sort_keys=True).encode("utf-8")
            if self._store.create(f"{self._prefix}{newest[0] + 1:012d}", body) is not None:
                if len(versions) >= 2 * self._keep:
                    self._tidy([key for n, key, _size in versions if n <= newest[0] - self._keep])
                return old, new
        raise OSError(
            f"{self._store.url(self._prefix.rstrip('/'))} kept changing under this process "
            f"({self._tries} tries): too many writers at once"
        )

    def _tidy(self, keys: list[str]) -> None:
        try:
            self._store.delete(keys)
        except Exception as exc:  # noqa: BLE001 - tidiness only: the next tidying retries
            log.info("could not delete old versions under %s (%s)", self._prefix, exc)
