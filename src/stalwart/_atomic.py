"""Atomic file writes: a reader sees the old file or the new one, never a part.

The protocol, in this order: create a temp file ``.<name>.<random>.tmp`` in the destination's
directory (``O_EXCL``; ``flock``-ed while it is being written, unless the caller holds the
directory alone), write, flush, ``fsync`` the temp file, ``os.replace`` it over the
destination, then ``fsync`` the directory so the rename itself is durable.

What survives a crash (process killed, kernel panic, power cut) on a local POSIX filesystem
(ext4, xfs, btrfs; tmpfs for process crashes): the destination holds either its complete old
content or its complete new content. A temp file may be left behind if the process dies
between creating it and the rename; ``sweep_temp_files`` (which stalwart's runner calls at the
start of a run) removes those, and never one that a live writer still holds.

What is not promised: network filesystems (NFS, SMB, FUSE mounts such as s3fs) may not honour
``fsync``, ``flock`` or atomic rename; Windows is not supported; a disk that acknowledges an
``fsync`` before the data is on stable storage can lose the new content (or the rename) on a
power cut. A filesystem that cannot ``fsync`` a directory (``EINVAL``) is tolerated: the
rename is then as durable as that filesystem makes it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Iterator

from ._lock import try_flock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import IO, Any, Literal, NoReturn, overload

__all__ = [
    "FileDigest",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_directory",
    "is_temp_name",
    "json_dumps",
    "lazy_path",
    "replace_bytes",
    "sweep_temp_files",
    "temp_name_for",
]

log = logging.getLogger("stalwart.atomic")

_TEMP_SUFFIX = ".tmp"
#: What ``temp_name_for`` makes (compiled by ``re`` on first use: only a ``.tmp`` name asks).
_TEMP_PATTERN = r"\A\..+\.[0-9a-f]{8}\.tmp\Z"
_NAME_KEPT = 200
"""Bytes of the destination's name kept in its temp name (NAME_MAX is 255 on Linux)."""
_CREATE_TRIES = 8
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def lazy_path(path: str) -> Path:
    """``Path(path)``, importing ``pathlib`` on first use: the run path works on strings
    (``pathlib`` costs ~8 ms of every start here), public results are still ``Path``."""
    from pathlib import Path  # noqa: PLC0415 - see the docstring

    return Path(path)


def _clean(path: str | os.PathLike[str]) -> str:
    """``path`` as a string naming the same file as ``Path(path)`` (no trailing slash)."""
    text = os.fspath(path)
    stripped = text.rstrip("/")
    return stripped or text[:1]


def json_dumps(data: Any) -> str:
    """The JSON form stalwart writes: UTF-8-safe, sorted keys, indented for people."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def temp_name_for(name: str) -> str:
    """``report.csv`` -> ``.report.csv.<random>.tmp`` (unique, hidden, recognisable).

    A long ``name`` is cut so that the temp name still fits in a directory entry.
    """
    encoded = os.fsencode(name)
    if len(encoded) > _NAME_KEPT:
        name = os.fsdecode(encoded[:_NAME_KEPT])
    return f".{name}.{os.urandom(4).hex()}{_TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """True for names ``temp_name_for`` makes (what ``sweep_temp_files`` removes)."""
    return name.endswith(_TEMP_SUFFIX) and re.match(_TEMP_PATTERN, name, re.DOTALL) is not None


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """``fsync`` a directory so that renames, creations and deletions in it survive a power
    cut. A filesystem that cannot sync a directory (``EINVAL``, ``ENOTSUP``) is tolerated."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        log.debug("%s cannot fsync a directory (%s); renames there are not durable", path, exc)
    finally:
        os.close(fd)


_BUILTIN_SHA256_BUDGET = 256 * 1024
"""Bytes a process hashes with Python's built-in sha256 before it loads OpenSSL's."""
_builtin_sha256_left = [_BUILTIN_SHA256_BUDGET]


_builtin_sha256_found: list[Any] = []
_BUILTIN_SHA256_NAMES = ("_sha2", "_sha256")  # 3.12 merged _sha256 into _sha2
if sys.version_info < (3, 12):
    _BUILTIN_SHA256_NAMES = ("_sha256", "_sha2")


def _builtin_sha256() -> Any:
    """The sha256 constructor compiled into CPython (``_sha2`` from 3.12, ``_sha256`` before),
    or None if this Python was built without it. Looked up once, this version's name first:
    a module that is not there is searched for along the whole ``sys.path`` (a ``stat`` per
    entry, and the import system's work for each) at every import."""
    if not _builtin_sha256_found:
        for name in (*_BUILTIN_SHA256_NAMES, None):
            try:
                _builtin_sha256_found.append(name and __import__(name).sha256)
                break
            except (ImportError, AttributeError):
                continue
    return _builtin_sha256_found[0]


class FileDigest:
    """Size and sha256 of what went through a file object, computed while it is written.

    ``hashlib``'s sha256 is OpenSSL's, and loading OpenSSL costs ~2.5 ms of a start (as much
    as all of stalwart's own modules): a run whose outputs are small should not pay it. So
    until the process has hashed ``_BUILTIN_SHA256_BUDGET`` bytes (256 KiB), a digest keeps
    the bytes and hashes them with Python's built-in sha256 when asked; past that (a write
    larger than what is left is hashed as it is, not copied), or once OpenSSL is loaded
    anyway (``ssl``, ``httpx``), it hashes with ``hashlib`` as it goes (5-6x faster on large
    data). The digest is the same either way."""

    __slots__ = ("_hash", "_kept", "size")

    def __init__(self) -> None:
        self._hash: Any = None
        self._kept: list[bytes] = []
        self.size = 0
        if "_hashlib" in sys.modules or _builtin_sha256_left[0] <= 0:
            self._start_hashlib()

    def _hash_with(self, hasher: Any) -> None:
        """From now on hash with ``hasher``, fed first with the bytes kept so far."""
        for data in self._kept:
            hasher.update(data)
        self._kept = []
        self._hash = hasher

    def _start_hashlib(self) -> None:
        import hashlib  # noqa: PLC0415 - see the class docstring

        self._hash_with(hashlib.sha256())

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if self._hash is None:
            if len(data) <= _builtin_sha256_left[0]:
                self._kept.append(bytes(data))  # small: the copy is cheaper than OpenSSL
                _builtin_sha256_left[0] -= len(data)
                return
            self._start_hashlib()  # past the budget: what was kept, then ``data`` uncopied
        self._hash.update(data)

    @property
    def sha256(self) -> str:
        if self._hash is None:
            builtin = _builtin_sha256()
            if builtin is None:
                self._start_hashlib()
            else:
                self._hash_with(builtin())
        hashed: Any = self._hash  # set by now
        return str(hashed.hexdigest())


class _DigestingRaw(io.RawIOBase):
    """An unbuffered writer that owns ``fd`` and feeds a ``FileDigest`` as it writes."""

    def __init__(self, fd: int, digest: FileDigest | None, path: str | None = None) -> None:
        self._fd = fd
        self._digest = digest
        self._path = path

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        try:
            written = os.write(self._fd, view)
        except OSError as exc:  # ENOSPC/EIO from the caller's own handle.write(): name the file
            if self._path is None:
                raise
            _raise_named(exc, self._path)
        if self._digest is not None:
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


if TYPE_CHECKING:

    @overload
    def atomic_write(
        path: str | os.PathLike[str],
        mode: Literal["w", "wt"] = ...,
        *,
        encoding: str = ...,
        newline: str | None = ...,
        digest: FileDigest | None = ...,
    ) -> contextlib.AbstractContextManager[IO[str]]: ...
    @overload
    def atomic_write(
        path: str | os.PathLike[str],
        mode: Literal["wb"],
        *,
        encoding: str = ...,
        newline: str | None = ...,
        digest: FileDigest | None = ...,
    ) -> contextlib.AbstractContextManager[IO[bytes]]: ...


def atomic_write(
    path: str | os.PathLike[str],
    mode: str = "w",
    *,
    encoding: str = "utf-8",
    newline: str | None = "",
    digest: FileDigest | None = None,
) -> contextlib.AbstractContextManager[IO[Any]]:
    """Write ``path`` atomically; use as ``with atomic_write(path) as f: f.write(...)``.

    The file object streams to a temp file in the same directory (nothing is held in
    memory beyond a 128 KiB buffer). On a clean exit the temp file is flushed, fsynced,
    renamed over ``path`` and the directory is fsynced. On any exception, ``KeyboardInterrupt``
    included, the temp file is removed and ``path`` is untouched. Closing the file inside the
    block is allowed; the rename still happens when the block ends.

    An existing ``path`` keeps its permission bits (a symlink at ``path`` is replaced by a
    regular file); a new file gets ``0o666 & ~umask`` like ``open()`` would. ``digest``, if
    given, receives the size and sha256 of the bytes written. Text is written without
    newline translation (``newline=""``, what the csv module asks for); ``newline`` takes what
    ``open()`` takes. See the module docstring for what survives a crash.
    """
    if newline not in (None, "", "\n", "\r", "\r\n"):
        raise ValueError(f"illegal newline value: {newline!r}")
    return _atomic_write(_clean(path), _open_mode(mode), encoding, digest, newline)


def _lock_temp(fd: int) -> None:
    """Mark the temp file as live for ``sweep_temp_files`` (the OS drops the lock if we die)."""
    with contextlib.suppress(OSError):  # no flock on this filesystem: sweeps cannot tell
        try_flock(fd)  # a new file: nobody else can hold it


def _create_temp(path: str, new_mode: int = 0o666, *, shared: bool = True) -> tuple[str, int]:
    """Create the temp file beside ``path``, with ``path``'s permission bits if it exists
    (else ``new_mode & ~umask``); in a ``shared`` directory, also lock it against other
    processes' sweeps. Returns its path and a descriptor open for writing."""
    try:
        keep_mode: int | None = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        keep_mode = None
    # O_EXCL | O_NOFOLLOW: never reuse or follow anything already at the temp name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    directory, name = os.path.split(path)
    for _ in range(_CREATE_TRIES):
        tmp = os.path.join(directory, temp_name_for(name))
        try:
            fd = os.open(tmp, flags, new_mode)
        except FileExistsError:  # 32 random bits collided: draw again
            continue
        try:
            if shared:
                _lock_temp(fd)
                if os.fstat(fd).st_nlink == 0:  # a sweep removed it before we locked it
                    os.close(fd)
                    continue
            if keep_mode is not None:
                os.fchmod(fd, keep_mode)
        except BaseException:
            os.close(fd)
            _discard(tmp)
            raise
        return tmp, fd
    raise FileExistsError(errno.EEXIST, "could not create a unique temp file", str(path))


def _discard(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _abandon(tmp: str, fd: int | None, handle: IO[Any] | None) -> None:
    """Remove the temp file first (so an interrupt during cleanup leaves less), then close."""
    try:
        _discard(tmp)
    finally:
        try:
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()
        finally:
            if fd is not None:
                os.close(fd)


def _abandon_and_raise(
    exc: BaseException, tmp: str, fd: int | None, handle: IO[Any] | None, path: str
) -> NoReturn:
    """Remove the temp file and close what is open, then re-raise ``exc`` (an ``OSError``
    saying which destination it was about)."""
    _abandon(tmp, fd, handle)
    if isinstance(exc, OSError):
        _raise_named(exc, path)
    raise exc


def _naming(exc: OSError, path: str) -> OSError:
    """The same kind of OSError (same errno), saying which destination it was about."""
    if exc.errno is None or (exc.filename is not None and path in str(exc.filename)):
        return exc
    return OSError(exc.errno, f"{exc.strerror} (atomic write of {path})", path)


def _raise_named(exc: OSError, path: str) -> NoReturn:
    named = _naming(exc, path)
    if named is exc:
        raise exc
    raise named from exc


def _sync_parent(path: str) -> None:
    try:
        fsync_directory(os.path.dirname(path) or ".")
    except OSError as exc:
        _raise_named(exc, path)


def _open_handle(
    fd: int,
    binary: bool,
    encoding: str,
    digest: FileDigest | None,
    path: str,
    *,
    newline: str | None,
) -> IO[Any]:
    raw = _DigestingRaw(fd, digest, path)
    buffered = io.BufferedWriter(raw, buffer_size=1 << 17)  # big writes go straight through
    if binary:
        return buffered
    try:
        return io.TextIOWrapper(buffered, encoding=encoding, newline=newline)
    except BaseException:  # an unknown encoding: do not leak the descriptor
        buffered.close()
        raise


@contextlib.contextmanager
def _atomic_write(
    path: str, binary: bool, encoding: str, digest: FileDigest | None, newline: str | None = ""
) -> Iterator[IO[Any]]:
    try:
        tmp, fd = _create_temp(path)
    except OSError as exc:
        _raise_named(exc, path)
    # The caller's file object writes through its own descriptor (closing it is allowed);
    # ``fd`` keeps the temp file locked until it is renamed, and is what gets fsynced.
    try:
        handle = _open_handle(os.dup(fd), binary, encoding, digest, path, newline=newline)
    except BaseException:
        _abandon(tmp, fd, None)
        raise
    try:
        yield handle
    except BaseException:
        _abandon(tmp, fd, handle)
        raise
    try:
        handle.close()  # flushes what is buffered into the temp file
        os.fsync(fd)
        os.replace(tmp, path)
    except BaseException as exc:  # noqa: BLE001 - re-raised, after the cleanup
        _abandon_and_raise(exc, tmp, fd, handle, path)
    os.close(fd)
    _sync_parent(path)


def replace_bytes(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    durable: bool = True,
    new_mode: int = 0o666,
    shared: bool = True,
) -> None:
    """Replace ``path`` by ``data`` through a temp file and a rename (stalwart's own records).

    ``durable=False`` skips both fsyncs: a crash never leaves a partial file, but after a
    power cut the file may hold its old content. ``new_mode`` (masked by the umask) applies
    to a file that does not exist yet; an existing one keeps its permission bits.
    ``shared=False`` is for a directory this process holds alone (a run directory, under the
    run lock): the temp file is not ``flock``-ed, since no other process sweeps there. It is
    the per-step hot path (every output and every marker), and renaming a locked file is the
    costliest part of the protocol.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    target = _clean(path)
    try:
        tmp, fd = _create_temp(target, new_mode, shared=shared)
    except OSError as exc:
        _raise_named(exc, target)
    open_fd: int | None = fd
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
        if not shared:  # no lock to hold through the rename: close first
            open_fd = None
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as exc:  # noqa: BLE001 - re-raised, after the cleanup
        _abandon_and_raise(exc, tmp, open_fd, None, target)
    if open_fd is not None:
        os.close(open_fd)
    if durable:
        _sync_parent(target)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, digest: FileDigest | None = None
) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``).

    After it returns, ``path`` holds ``data`` durably; if it raises (or the process dies),
    ``path`` holds its complete old content or, if the rename already happened, ``data``.
    """
    replace_bytes(path, data)
    if digest is not None:
        digest.update(data)


def atomic_write_text(
    path: str | os.PathLike[str],
    data: str,
    *,
    encoding: str = "utf-8",
    digest: FileDigest | None = None,
) -> None:
    """Write the text ``data`` to ``path`` atomically (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, data.encode(encoding), digest=digest)


def atomic_write_json(
    path: str | os.PathLike[str], data: Any, *, digest: FileDigest | None = None
) -> None:
    """Write ``data`` as JSON (UTF-8, sorted keys, indented) to ``path`` atomically.

    Serialisation happens before anything touches the disk, so an unserialisable value
    raises ``TypeError`` (or ``ValueError``) and leaves ``path`` as it was, with no temp file.
    """
    atomic_write_bytes(path, json_dumps(data).encode("utf-8"), digest=digest)


def _remove_if_abandoned(path: str) -> bool:
    """Unlink the temp file at ``path`` unless a live writer holds its lock."""
    try:
        seen = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(seen.st_mode):  # only regular files: never a link, fifo or directory
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot check temp file %s (%s); leaving it", path, exc.strerror)
        return False
    try:
        try:
            if not try_flock(fd):
                return False  # a live writer: not debris
        except OSError:
            pass  # no flock on this filesystem: it cannot be told apart, treat it as debris
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)  # after the unlink: a writer that was waiting sees st_nlink == 0


def sweep_temp_files(directory: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Remove temp files a killed writer left (``.<name>.<random>.tmp``); return them.

    Only regular files with names of that exact shape are touched, so user files are never
    removed, and a temp file a live writer holds (in this or another process) is left alone.
    Safe to call while other processes write in ``directory``.
    """
    removed: list[Path] = []
    root = os.fspath(directory)
    if not os.path.isdir(root):
        return removed
    walker = os.walk(root) if recursive else [(root, [], os.listdir(root))]
    for dirpath, _dirs, files in walker:
        for name in files:
            if not is_temp_name(name):
                continue  # the common case: no system call
            victim = os.path.join(dirpath, name)
            if _remove_if_abandoned(victim):
                removed.append(lazy_path(victim))
    return removed
