"""The run lock without ``flock``: a lease made of create-only objects, numbered by epoch.

``<run>/.lease/<epoch>`` objects are only ever created, never overwritten
(``StateStore.create``: ``If-None-Match: *`` on object storage), so for each epoch exactly
one process succeeds. The newest epoch says who holds the run:

- it is **held** while the store's clock (``Date``) is within ``ttl`` seconds of its
  ``LastModified`` (plus one second for the 1 s resolution of both);
- the holder **renews** every ``ttl / 3`` s by creating the next epoch; if that epoch exists
  already, another process took the run over and the holder has lost it;
- a newcomer finds the newest epoch **expired** (or ``released``) and creates the next one:
  it holds the run, unless someone created that epoch first (then it exits 75);
- the holder **stops itself**: ``check()``, called before every write of the run's state,
  raises ``LeaseLostError`` once ``ttl - ttl/4`` seconds (by its own monotonic clock, from
  the moment it *sent* its last successful renewal) have passed without a renewal. The store
  dates that renewal no earlier than it was sent, so the holder's deadline comes before any
  newcomer can see the lease expired, by ``ttl/4`` (the margin for the one write in flight).

Why a paused holder (SIGSTOP, a long GC, a VM migration) is harmless is in
docs/crash-safety.md ("A lease on object storage").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from typing import TYPE_CHECKING

from ._clock import monotonic
from ._errors import RunLockedError
from ._time import utc_now

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._store import ObjectInfo, StateStore

__all__ = ["DEFAULT_TTL", "FencedStore", "Lease", "LeaseLostError", "lease_holder", "lease_ttl"]

log = logging.getLogger("stalwart.lease")

DEFAULT_TTL = 30.0
_RESOLUTION = 1.0  # Date and LastModified are whole seconds
_EPOCH_DIGITS = 12


class LeaseLostError(RunLockedError):
    """This process no longer holds the run's lease (it could not renew it in time, or
    another process took the run over): it stops before writing anything more."""


def lease_ttl() -> float:
    """``$STALWART_LEASE_SECONDS`` (default 30): how long a lease lasts without renewal."""
    text = os.environ.get("STALWART_LEASE_SECONDS", "").strip()
    if not text:
        return DEFAULT_TTL
    try:
        ttl = float(text)
    except ValueError:
        ttl = 0.0
    if not 2 <= ttl <= 3600:
        from ._errors import UsageError  # noqa: PLC0415

        raise UsageError(f"STALWART_LEASE_SECONDS={text!r}: give seconds from 2 to 3600")
    return ttl


def _epochs(store: StateStore, prefix: str) -> list[tuple[int, str]]:
    found = []
    for key in store.list_keys(prefix):
        name = key[len(prefix) :]
        if name.isdigit():
            found.append((int(name), key))
    return sorted(found)


def _note(raw: bytes | None) -> dict[str, object]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _state(store: StateStore, prefix: str) -> tuple[int, str | None, bool]:
    """The newest epoch, its holder's note, and whether it still holds the run."""
    epochs = _epochs(store, prefix)
    if not epochs:
        return 0, None, False
    epoch, key = epochs[-1]
    found = store.fetch(key)
    if found is None:  # renewed (and this epoch deleted) in between: held
        return epoch, None, True
    raw, info = found
    note = _note(raw)
    ttl = note.get("ttl")
    ttl = float(ttl) if isinstance(ttl, int | float) else DEFAULT_TTL
    live = not note.get("released") and info.now - info.modified <= ttl + _RESOLUTION
    return epoch, str(note.get("holder", "")) or None, live


def lease_holder(store: StateStore, prefix: str) -> str | None:
    """Who holds the lease under ``prefix`` now (``None`` if nobody). Creates nothing."""
    try:
        _epoch, holder, live = _state(store, prefix)
    except OSError:
        return None
    return (holder or "holder unknown") if live else None


class Lease:
    """The run lock on a ``StateStore`` (see the module docstring); used like ``RunLock``."""

    def __init__(self, store: StateStore, prefix: str, *, ttl: float | None = None) -> None:
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"
        self.ttl = lease_ttl() if ttl is None else ttl
        self._epoch = 0
        self._first = 0  # the epoch this holder began with: kept until it lets go
        self._renewed = 0.0  # monotonic time the last successful renewal was sent
        self._lost = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self.holder = f"pid {os.getpid()} on host {os.uname().nodename} since {utc_now()}"

    @property
    def path(self) -> str:
        return self._store.url(self._prefix.rstrip("/"))

    @property
    def held(self) -> bool:
        return self._thread is not None and not self._lost

    def _key(self, epoch: int) -> str:
        return f"{self._prefix}{epoch:0{_EPOCH_DIGITS}d}"

    def _create(self, epoch: int, **more: object) -> ObjectInfo | None:
        body = json.dumps({"holder": self.holder, "ttl": self.ttl, "epoch": epoch, **more})
        return self._store.create(self._key(epoch), body.encode("utf-8"))

    def _locked(self, holder: str | None) -> RunLockedError:
        return RunLockedError(
            f"this run is already being worked on by another process "
            f"({holder or 'holder unknown'}); its lease is {self.path}. Nothing was touched. "
            f"Wait for it to finish, or stop it first (a killed holder's lease expires "
            f"{self.ttl:g} s after its last renewal).",
            lock_path=self.path,
            holder=holder or "",
        )

    def acquire(self) -> None:
        """Take the lease or raise ``RunLockedError`` at once (never waits)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.path} is already held by this Lease")
        epoch, holder, live = _state(self._store, self._prefix)
        if live:
            raise self._locked(holder)
        sent = monotonic()
        if self._create(epoch + 1) is None:  # someone else created it first
            _epoch, holder, _live = _state(self._store, self._prefix)
            raise self._locked(holder)
        self._epoch, self._first, self._renewed, self._lost = epoch + 1, epoch + 1, sent, ""
        self._forget_older()
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="stalwart-lease", daemon=True)
        self._thread.start()

    def _forget_older(self, *, keep_first: bool = True) -> None:
        """Delete the epochs before ours, but the one we began with while we hold the lease:
        the holder before us, if it wakes up, tries to create exactly that one, and must
        fail. (Tidiness only: the newest epoch is what counts.)"""
        with contextlib.suppress(Exception):
            epochs = _epochs(self._store, self._prefix)
            older = [
                key
                for number, key in epochs
                if number < self._epoch and not (keep_first and number == self._first)
            ]
            if older:
                self._store.delete(older)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if not self.renew():
                return

    def renew(self) -> bool:
        """Create the next epoch; False once the lease is lost (stop renewing)."""
        with self._mutex:
            if self._lost:
                return False
            sent = monotonic()
            if sent - self._renewed > self.deadline:  # paused past our deadline: too late
                self._lose(f"it was not renewed for {self.deadline:g} s (paused?)")
                return False
            try:
                created = self._create(self._epoch + 1)
            except Exception as exc:  # noqa: BLE001 - the network: retried at the next tick
                if monotonic() - self._renewed > self.deadline:
                    self._lose(f"it could not be renewed for {self.ttl:g} s ({exc})")
                    return False
                log.warning("could not renew the run's lease %s (%s); retrying", self.path, exc)
                return True
            if created is None:
                self._lose("another process took the run over")
                return False
            self._epoch += 1
            self._renewed = sent
        self._forget_older()
        return True

    @property
    def deadline(self) -> float:
        """Seconds after a renewal was sent during which this holder may still write."""
        return self.ttl - self.ttl / 4

    def _lose(self, why: str) -> None:
        self._lost = why
        log.error("lost the run's lease %s: %s; stopping before any further write", self.path, why)

    def check(self) -> None:
        """Raise ``LeaseLostError`` unless this process certainly holds the lease now (called
        before every write of the run's state)."""
        if not self._lost and monotonic() - self._renewed > self.deadline:
            with self._mutex:
                if not self._lost:
                    self._lose(f"it was not renewed for {self.deadline:g} s (paused?)")
        if self._lost:
            raise LeaseLostError(
                f"this process lost the run's lease {self.path} ({self._lost}) and stopped "
                f"before writing more; another process may be running the run now. Nothing it "
                f"wrote is partial; check 'status' and run it again if it is not running.",
                lock_path=self.path,
                holder=self.holder,
            )

    def release(self) -> None:
        """Stop renewing and mark the lease released (the next process need not wait)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        with self._mutex:
            if self._lost or monotonic() - self._renewed > self.deadline:
                return
            with contextlib.suppress(Exception):  # else it expires after ttl: still correct
                if self._create(self._epoch + 1, released=True) is not None:
                    self._epoch += 1
                    self._forget_older(keep_first=False)

    def remove(self) -> None:
        """Stop renewing and delete every epoch of this lease, leaving nothing behind: for
        ``gc``, once the state the lease guards is deleted. ``LeaseLostError`` (nothing
        deleted) unless the lease is certainly still held.

        Why no one else can hold it meanwhile: while our epoch is live, a newcomer refuses; it
        is deleted last, after the older ones, so a listing in between still shows it; once it
        is gone a newcomer finds no epoch and creates epoch 1, where the create-only write lets
        exactly one newcomer win. (Deleting a *released* or expired epoch instead would let
        one newcomer number from it while another numbered from nothing.)"""
        thread, self._thread = self._thread, None
        if thread is None:
            raise RuntimeError(f"{self.path} is not held by this Lease")
        self._stop.set()
        thread.join()
        self.check()
        epochs = _epochs(self._store, self._prefix)
        if any(number > self._epoch for number, _key in epochs):
            self._lose("another process took the run over")
            self.check()
        older = [key for number, key in epochs if number < self._epoch]
        if older:
            self._store.delete(older)
        self.check()
        self._store.delete([self._key(self._epoch)])

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class FencedStore:
    """A ``StateStore`` whose writes first check that the lease is still held: a holder that
    lost its lease cannot write anything more."""

    def __init__(self, store: StateStore, lease: Lease) -> None:
        self._store = store
        self.lease = lease
        self.root = store.root
        self.inner = store

    def url(self, key: str) -> str:
        return self._store.url(key)

    def read(self, key: str) -> bytes | None:
        return self._store.read(key)

    def head(self, key: str) -> ObjectInfo | None:
        return self._store.head(key)

    def fetch(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        return self._store.fetch(key)

    def list_keys(self, prefix: str) -> list[str]:
        return self._store.list_keys(prefix)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return self._store.list_sizes(prefix)

    def list_directory(self, prefix: str) -> tuple[dict[str, int], bool]:
        return self._store.list_directory(prefix)

    def list_dirs(self, prefix: str) -> list[str]:
        return self._store.list_dirs(prefix)

    def newest_write(self, prefix: str) -> float | None:
        return self._store.newest_write(prefix)

    def write(self, key: str, data: bytes) -> None:
        self.lease.check()
        self._store.write(key, data)

    def upload(self, key: str, path: str) -> None:
        self.lease.check()
        self._store.upload(key, path)

    def create(self, key: str, data: bytes) -> ObjectInfo | None:
        self.lease.check()
        return self._store.create(key, data)

    def delete(self, keys: Iterable[str]) -> list[str]:
        self.lease.check()
        return self._store.delete(keys)
