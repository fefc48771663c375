"""Every ``fcntl.flock`` of stalwart, in one place: the run lock (one process at a time per
run ID, on ``<run>/.lock``), the dead-letter and textfile locks, the temp-file liveness locks
of atomic writes, and the peek of ``status`` at who holds a run.

One set of errnos means "someone else holds it" (``CONTENDED``). The kernel drops a lock when
its holder dies, however it dies, so there is never a stale lock to clean up. The holder
protocol of a run lock: the holder writes one line (pid, host, since) into the lock file and
empties it when it lets go, so an empty file means nobody, and a note left by a killed holder
is told apart from a live one by trying the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator

from ._errors import RunLockedError
from ._state_files import open_regular
from ._time import utc_now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["CONTENDED", "RunLock", "flock_held", "lock_holder", "locked_file", "try_flock"]

#: The errnos of a non-blocking ``flock`` that found the lock held by someone else.
CONTENDED = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})


def try_flock(fd: int, *, shared: bool = False) -> bool:
    """Take ``fd``'s lock without waiting: True if taken, False if someone else holds it.
    Any other failure (no ``flock`` on this filesystem...) raises ``OSError``."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in CONTENDED:
            return False
        raise
    return True


_TABLE = "/proc/locks"


def flock_held(fd: int) -> bool | None:
    """``True`` if some process holds a ``flock`` on the file open as ``fd``, ``False`` if
    none does, ``None`` if the kernel's table cannot tell (no ``/proc/locks``, or a file
    system whose inode numbers the table shows differently: an entry with this inode on
    another device)."""
    info = os.fstat(fd)
    ours = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    suffix = f":{info.st_ino}"
    try:
        with open(_TABLE, encoding="ascii", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    unsure = False
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5327269 0 EOF"; "1: -> FLOCK ..." is a waiter
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        where = fields[5]
        if where == ours:
            return True
        if where.endswith(suffix):
            unsure = True
    return None if unsure else False


def wait_flock(fd: int) -> None:
    """Take ``fd``'s exclusive lock, waiting for the holder to let go."""
    fcntl.flock(fd, fcntl.LOCK_EX)


@contextlib.contextmanager
def locked_file(path: str | os.PathLike[str], *, mode: int = 0o600) -> Iterator[int]:
    """Hold an exclusive lock on the file at ``path`` (created with ``mode``, never through a
    symlink) for the ``with`` block, waiting for it if need be; yields the descriptor. Closing
    it, or dying, releases the lock; the file itself is never deleted. Anything but a regular
    file there (a FIFO, a directory, a symlink) is ``NotRegularFile``, never a hang."""
    fd = open_regular(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        wait_flock(fd)
        yield fd
    finally:
        os.close(fd)


def lock_holder(run_dir: str | os.PathLike[str]) -> str | None:
    """Who holds the run's lock right now (``None`` if nobody). Creates nothing.

    Reads the holder's note; an empty note means nobody (the lock is not even touched then);
    a note left by a killed holder is told apart from a live one by a non-blocking shared
    lock, held for microseconds (``RunLock.acquire`` retries briefly when it meets one).

    It first asks the kernel's lock table (``flock_held``), which takes no lock at all: even a
    shared lock held for microseconds could make a run starting at that instant exit 75.
    A FIFO, a directory or a symlink planted as the lock is "nobody", never a hang."""
    path = os.path.join(run_dir, ".lock")
    try:
        fd = open_regular(path)
    except OSError:
        return None
    try:
        note = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if not note:
            return None
        held = flock_held(fd)
        if held is not None:
            return note if held else None
        return None if try_flock(fd, shared=True) else note
    finally:
        os.close(fd)


log = logging.getLogger("stalwart.checkpoint")

_PEEK_RETRIES = 5


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run_dir>/.lock``, released by the OS if we die.

    The lock file is never deleted (deleting a flock'ed file races with the next locker); it
    holds a line naming the holder (pid, host, start time) for the message of the loser.
    A child process that inherits no descriptor (they are close-on-exec) does not hold it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        from pathlib import Path  # noqa: PLC0415 - a run itself needs no pathlib

        return Path(self._path)

    def acquire(self) -> None:
        """Take the lock or raise ``RunLockedError`` at once (never waits)."""
        if self._fd is not None:
            raise RuntimeError(f"{self._path} is already locked by this RunLock")
        # A FIFO, a directory or a symlink planted as the lock is NotRegularFile, never a hang.
        fd = open_regular(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            taken = self._take(fd)
        except BaseException:
            os.close(fd)
            raise
        if not taken:
            try:
                holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
            finally:
                os.close(fd)
            raise RunLockedError(
                f"this run is already being worked on by another process "
                f"({holder or 'holder unknown'}); lock file {self._path}. Nothing was touched. "
                f"Wait for it to finish, or stop it first.",
                lock_path=self._path,
                holder=holder,
            )

        holder = f"pid {os.getpid()} on host {os.uname().nodename} since {utc_now()}\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode("utf-8"), 0)
        except OSError:  # disk full: the lock holds all the same, only the note is missing
            log.debug("could not note the lock holder in %s", self._path, exc_info=True)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @staticmethod
    def _take(fd: int) -> bool:
        """``try_flock``. A busy lock may be ``status`` peeking (a shared lock held for
        microseconds, where the kernel's lock table cannot be read), not a run - whatever the
        note says, since a killed holder leaves its note behind: try again a few times over
        about 0.1 s before calling it busy."""
        for _ in range(_PEEK_RETRIES):
            if try_flock(fd):
                return True
            time.sleep(0.02)
        return try_flock(fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
