"""The state-store seam: where a run's state lives when it is not (only) a local directory.

A ``StateStore`` holds objects under keys (``<pipeline>/runs/<run_id>/out.csv``), with six
operations and one promise: every write is whole or absent, never a part.

- ``read(key)``: the bytes, or ``None`` if there is no such object;
- ``write(key, data)``: replace the object in one operation (one PUT on object storage);
- ``upload(key, path)``: the same from a local file (a PUT, or a multipart upload completed
  only once every part is there);
- ``create(key, data)``: write only if there is no object yet (``If-None-Match: *``); ``None``
  if there was one. What a lease is made of;
- ``list_keys(prefix)`` (``list_sizes``: with each object's size), ``list_dirs(prefix)``
  (the names one level below ``prefix`` that hold objects: one delimited listing, however
  many objects they hold), ``list_directory(prefix)`` (the objects right under a prefix,
  with their sizes, from one listing request), ``delete(keys)``,
  ``head(key)`` (size, last modified, and the store's clock when it answered: expiry is
  judged on the store's clock, never on ours), ``fetch(key)`` (``read`` and ``head`` in one
  request).

``LocalStore`` is a directory, through the same atomic-write code as the local root
(``_atomic``). The local root itself does not go through this seam: its classes
(``CheckpointStore``, ``DeadLetterStore``, ``RunLock``) keep their code and guarantees;
``LocalStore`` lets the object-store classes run on a directory (tests, a shared mount).
``_s3.S3Store`` is object storage through s3fs, imported only for an ``s3://`` root
(``_remote_state.open_store`` picks the store for a root).

``SegmentedLog`` is an append-only log on a store that has no append: each append is a new
immutable segment object; a snapshot covers the segments before it once they pile up.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple, Protocol

from ._atomic import fsync_directory, replace_bytes, temp_name_for

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "SegmentedLog",
    "StateStore",
    "is_remote",
]

REMOTE_SCHEMES = ("s3://",)
_READERS = 8  # parallel reads of a log's parts


class ObjectInfo(NamedTuple):
    """What ``head`` (and ``create``) tell about an object."""

    size: int
    modified: float
    """When it was last written, by the store's clock (seconds since the epoch)."""
    now: float
    """The store's clock when it answered (the ``Date`` header on object storage)."""


class StateStore(Protocol):
    """Objects under keys; every write whole or absent (see the module docstring)."""

    root: str
    """The root as the user gave it (``s3://bucket/prefix`` or a directory)."""

    def url(self, key: str) -> str: ...
    def read(self, key: str) -> bytes | None: ...
    def write(self, key: str, data: bytes) -> None: ...
    def upload(self, key: str, path: str) -> None: ...
    def create(self, key: str, data: bytes) -> ObjectInfo | None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def list_sizes(self, prefix: str) -> dict[str, int]: ...
    def list_directory(self, prefix: str) -> tuple[dict[str, int], bool]: ...
    def list_dirs(self, prefix: str) -> list[str]: ...
    def newest_write(self, prefix: str) -> float | None: ...
    def delete(self, keys: Iterable[str]) -> list[str]: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def fetch(self, key: str) -> tuple[bytes, ObjectInfo] | None: ...


def is_remote(root: str) -> bool:
    """Is ``root`` object storage (``s3://...``) rather than a directory?"""
    return root.startswith(REMOTE_SCHEMES)


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key[0] == "/" or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ValueError(f"invalid state key {key[:200]!r}")
    return key


class LocalStore:
    """A ``StateStore`` on a local directory: writes are ``_atomic.replace_bytes`` (temp file,
    fsync, rename, fsync of the directory); ``create`` links a complete temp file into place,
    which fails if the name exists. The clock is this machine's."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))

    def url(self, key: str) -> str:
        return os.path.join(self.root, _check_key(key))

    def _parent(self, key: str) -> str:
        path = self.url(key)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return path

    def read(self, key: str) -> bytes | None:
        try:
            with open(self.url(key), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        replace_bytes(self._parent(key), data, new_mode=0o600)

    def upload(self, key: str, path: str) -> None:
        with open(path, "rb") as handle:
            self.write(key, handle.read())

    def create(self, key: str, data: bytes) -> ObjectInfo | None:
        target = self._parent(key)
        directory = os.path.dirname(target)
        temp = os.path.join(directory, temp_name_for(os.path.basename(target)))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, target)  # fails if the name exists: create-only, whole
            except FileExistsError:
                return None
        finally:
            os.unlink(temp)
        fsync_directory(directory)
        return self.head(key)

    def list_keys(self, prefix: str) -> list[str]:
        base = self.url(prefix.rstrip("/")) if prefix.strip("/") else self.root
        keys = []
        for directory, _dirs, files in os.walk(base):
            for name in files:
                path = os.path.join(directory, name)
                keys.append(os.path.relpath(path, self.root))
        return sorted(keys)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        sizes = {}
        for key in self.list_keys(prefix):
            with contextlib.suppress(FileNotFoundError):
                sizes[key] = os.stat(self.url(key)).st_size
        return sizes

    def list_directory(self, prefix: str) -> tuple[dict[str, int], bool]:
        """The objects right under ``prefix`` (``a/b/``: ``a/b/x``, not ``a/b/c/y``) with their
        sizes, and whether that is all of them (always, on a directory)."""
        base = self.url(prefix.rstrip("/")) if prefix.strip("/") else self.root
        sizes = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(base) as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False):
                        key = os.path.relpath(entry.path, self.root)
                        sizes[key] = entry.stat(follow_symlinks=False).st_size
        return sizes, True

    def list_dirs(self, prefix: str) -> list[str]:
        base = self.url(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))

    def newest_write(self, prefix: str) -> float | None:
        """When the newest object under ``prefix`` was last written (None: there is none)."""
        newest = None
        for key in self.list_keys(prefix):
            with contextlib.suppress(FileNotFoundError):
                written = os.stat(self.url(key)).st_mtime
                newest = written if newest is None else max(newest, written)
        return newest

    def delete(self, keys: Iterable[str]) -> list[str]:
        deleted = []
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.url(key))
                deleted.append(key)
        return deleted

    def fetch(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        data, info = self.read(key), self.head(key)
        return None if data is None or info is None else (data, info)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            info = os.stat(self.url(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(info.st_size, info.st_mtime, time.time())


class SegmentedLog:
    """An append-only log of lines on a ``StateStore`` (which has no append).

    ``<prefix>/seg-<n>`` are immutable segments, each written once (``create``: a writer that
    lost the run's lease cannot overwrite the new holder's segment); ``<prefix>/snap-<n>``
    holds everything of the segments up to ``n``. Reading takes the newest snapshot and the
    segments after it. ``compact`` writes a snapshot, then deletes what it covers: a crash in
    between leaves segments the reader skips. One writer at a time (the run's holder).
    """

    SEGMENT = "seg-"
    SNAPSHOT = "snap-"

    def __init__(self, store: StateStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"
        self._next: int | None = None
        self.segments = 0
        """Segments written since the newest snapshot (as of the last ``read``)."""

    def _numbered(self) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        segments: list[tuple[int, str]] = []
        snapshots: list[tuple[int, str]] = []
        for key in self._store.list_keys(self._prefix):
            name = key[len(self._prefix) :]
            for kind, found in ((self.SEGMENT, segments), (self.SNAPSHOT, snapshots)):
                number = name[len(kind) :]
                if name.startswith(kind) and number.isdigit():
                    found.append((int(number), key))
        return sorted(segments), sorted(snapshots)

    def read_parts(self) -> list[bytes]:
        """The log's objects, each whole and apart, in order: the newest snapshot, then the
        segments after it (fetched in parallel: a resume reads up to ``COMPACT_AFTER`` of
        them). A reader that must tell a torn last line from a whole one parses each part on
        its own (a part that does not end with a newline ends with a torn line)."""
        segments, snapshots = self._numbered()
        covered = snapshots[-1][0] if snapshots else 0
        keys = [snapshots[-1][1]] if snapshots else []
        later = [key for number, key in segments if number > covered]
        keys += later
        if len(keys) > 2:
            with ThreadPoolExecutor(min(_READERS, len(keys))) as pool:
                found = list(pool.map(self._store.read, keys))
        else:
            found = [self._store.read(key) for key in keys]
        self.segments = len(later)
        self._next = max([covered, *(number for number, _ in segments)]) + 1
        return [part or b"" for part in found]

    def read(self) -> bytes:
        """The whole log: the newest snapshot, then the segments after it, in order."""
        parts = self.read_parts()
        return b"".join(p if p.endswith(b"\n") or not p else p + b"\n" for p in parts)

    def append(self, data: bytes) -> None:
        """One new segment holding ``data`` (``RuntimeError`` if it exists already: someone
        else writes this log now)."""
        if self._next is None:
            self.read()
        number = self._next or 1
        key = f"{self._prefix}{self.SEGMENT}{number:012d}"
        if self._store.create(key, data) is None:
            raise RuntimeError(f"{self._store.url(key)} exists: another process writes this log")
        self._next = number + 1
        self.segments += 1

    def compact(self, data: bytes) -> None:
        """Write ``data`` (everything the log holds, as the caller sees it) as a snapshot of
        every segment so far, then delete those segments and older snapshots."""
        segments, snapshots = self._numbered()
        if not segments:
            return
        last = segments[-1][0]
        self._store.write(f"{self._prefix}{self.SNAPSHOT}{last:012d}", data)
        old = [key for number, key in segments if number <= last]
        old += [key for number, key in snapshots if number < last]
        self._store.delete(old)
        self._next = last + 1
        self.segments = 0

    def replace(self, data: bytes) -> None:
        """Make ``data`` the whole log: one new snapshot (numbered after everything there,
        created once, never over an object), then delete every older segment and snapshot.
        A crash before the snapshot leaves the log as it was; after it, the log is ``data``
        (what the delete missed is older than the snapshot, so no reader reads it)."""
        segments, snapshots = self._numbered()
        number = max([0, *(n for n, _ in segments), *(n for n, _ in snapshots)]) + 1
        key = f"{self._prefix}{self.SNAPSHOT}{number:012d}"
        if self._store.create(key, data) is None:
            raise RuntimeError(f"{self._store.url(key)} exists: another process writes this log")
        old = [key for _, key in sorted([*segments, *snapshots], reverse=True)]  # newest first
        self._store.delete(old)
        self._next = number + 1
        self.segments = 0
