"""Atomic file writes: a reader sees the old file or the new one, never a part.

The protocol, in this order: create a temp file ``.<name>.<random>.tmp`` in the destination's
directory, write, flush, ``fsync`` the temp file, ``os.replace`` it over the destination, then
``fsync`` the directory so the rename itself is durable.

What survives a crash (process killed, kernel panic, power cut) on a local POSIX filesystem
(ext4, xfs, btrfs, tmpfs for process crashes): the destination holds either its complete old
content or its complete new content. A temp file may be left behind if the process dies
between creating it and the rename; stalwart's runner sweeps those at the start of a run.

What is not promised: network filesystems (NFS, SMB, FUSE mounts such as s3fs) may not honour
``fsync`` or atomic rename; Windows is not supported. The durability of the *directory entry*
depends on the directory fsync, which a few filesystems ignore.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal, overload

__all__ = [
    "FileDigest",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_directory",
    "is_temp_name",
    "json_dumps",
    "sweep_temp_files",
]

_TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"\A\..+\.[0-9a-f]{8}\.tmp\Z", re.DOTALL)


def json_dumps(data: Any) -> str:
    """The JSON form stalwart writes: UTF-8-safe, sorted keys, indented for people."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def temp_name_for(name: str) -> str:
    """``report.csv`` -> ``.report.csv.<random>.tmp`` (unique, hidden, recognisable)."""
    return f".{name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """True for names ``temp_name_for`` makes (what ``sweep_temp_files`` removes)."""
    return _TEMP_RE.match(name) is not None


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """``fsync`` a directory so that renames and creations in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileDigest:
    """Size and sha256 of what went through a file object, computed while it is written."""

    __slots__ = ("_hash", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class _DigestingRaw(io.RawIOBase):
    """An unbuffered writer that owns ``fd`` and feeds a ``FileDigest`` as it writes."""

    def __init__(self, fd: int, digest: FileDigest) -> None:
        self._fd = fd
        self._digest = digest

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        written = os.write(self._fd, view)
        self._digest.update(view[:written])
        return written

    def fileno(self) -> int:
        return self._fd


def _open_mode(mode: str) -> bool:
    """Validate ``mode``; return True for binary."""
    if mode in ("w", "wt"):
        return False
    if mode == "wb":
        return True
    raise ValueError(f"atomic_write mode must be 'w', 'wt' or 'wb', not {mode!r}")


@overload
def atomic_write(
    path: str | os.PathLike[str],
    mode: Literal["w", "wt"] = ...,
    *,
    encoding: str = ...,
    digest: FileDigest | None = ...,
) -> contextlib.AbstractContextManager[IO[str]]: ...
@overload
def atomic_write(
    path: str | os.PathLike[str],
    mode: Literal["wb"],
    *,
    encoding: str = ...,
    digest: FileDigest | None = ...,
) -> contextlib.AbstractContextManager[IO[bytes]]: ...
def atomic_write(
    path: str | os.PathLike[str],
    mode: str = "w",
    *,
    encoding: str = "utf-8",
    digest: FileDigest | None = None,
) -> contextlib.AbstractContextManager[IO[Any]]:
    """Write ``path`` atomically; use as ``with atomic_write(path) as f: f.write(...)``.

    The file object streams to a temp file in the same directory (nothing is held in
    memory beyond the usual buffer). On a clean exit the temp file is flushed, fsynced,
    renamed over ``path`` and the directory is fsynced. On any exception, ``KeyboardInterrupt``
    included, the temp file is removed and ``path`` is untouched.

    An existing ``path`` keeps its permission bits; a new file gets ``0o666 & ~umask`` like
    ``open()`` would. ``digest``, if given, receives the size and sha256 of the bytes
    written. See the module docstring for what survives a crash.
    """
    return _atomic_write(Path(path), _open_mode(mode), encoding, digest)


def _create_temp(path: Path) -> tuple[Path, int]:
    """Create the temp file beside ``path``, with ``path``'s permission bits if it exists."""
    try:
        keep_mode: int | None = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        keep_mode = None
    tmp = path.parent / temp_name_for(path.name)
    # O_EXCL | O_NOFOLLOW: never reuse or follow anything already at the temp name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o666)
    if keep_mode is not None:
        try:
            os.fchmod(fd, keep_mode)
        except BaseException:
            os.close(fd)
            _discard(tmp)
            raise
    return tmp, fd


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same kind of OSError (same errno), saying which destination it was about."""
    if exc.filename is not None and str(path) in str(exc.filename):
        return exc
    return type(exc)(exc.errno, f"{exc.strerror} (atomic write of {path})", str(path))


@contextlib.contextmanager
def _atomic_write(
    path: Path, binary: bool, encoding: str, digest: FileDigest | None
) -> Iterator[IO[Any]]:
    try:
        tmp, fd = _create_temp(path)
    except OSError as exc:
        raise _naming(exc, path) from exc
    raw: io.RawIOBase = (
        io.FileIO(fd, "wb", closefd=True) if digest is None else _DigestingRaw(fd, digest)
    )
    buffered = io.BufferedWriter(raw, buffer_size=1 << 20)
    handle: IO[Any] = (
        buffered if binary else io.TextIOWrapper(buffered, encoding=encoding, newline="")
    )
    try:
        yield handle
        try:
            handle.flush()
            os.fsync(fd)
            handle.close()
            os.replace(tmp, path)
        except OSError as exc:
            raise _naming(exc, path) from exc
    except BaseException:
        with contextlib.suppress(Exception):
            handle.close()
        _discard(tmp)
        raise
    try:
        fsync_directory(path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, digest: FileDigest | None = None
) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``)."""
    target = Path(path)
    try:
        tmp, fd = _create_temp(target)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            _discard(tmp)
            raise
        fsync_directory(target.parent)
    except OSError as exc:
        raise _naming(exc, target) from exc
    if digest is not None:
        digest.update(data)


def atomic_write_text(
    path: str | os.PathLike[str],
    data: str,
    *,
    encoding: str = "utf-8",
    digest: FileDigest | None = None,
) -> None:
    """Write the text ``data`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write_bytes(path, data.encode(encoding), digest=digest)


def atomic_write_json(
    path: str | os.PathLike[str], data: Any, *, digest: FileDigest | None = None
) -> None:
    """Write ``data`` as JSON (UTF-8, sorted keys, indented) to ``path`` atomically.

    Serialisation happens before anything touches the disk, so an unserialisable value
    raises ``TypeError`` and leaves ``path`` as it was.
    """
    atomic_write_bytes(path, json_dumps(data).encode("utf-8"), digest=digest)


def sweep_temp_files(directory: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Remove temp files a killed writer left (``.<name>.<random>.tmp``); return them.

    Only names of that exact shape are touched, so user files are never removed.
    """
    removed: list[Path] = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
    for dirpath, _dirs, files in walker:
        for name in files:
            if is_temp_name(name):
                victim = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    victim.unlink()
                    removed.append(victim)
    return removed
