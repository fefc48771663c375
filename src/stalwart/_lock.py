"""The run lock: one process at a time per run ID (``fcntl.flock`` on ``<run>/.lock``).

A second process exits 75 at once with a message naming the holder; the kernel drops the lock
when the holder dies, however it dies, so there is never a stale lock to clean up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from typing import TYPE_CHECKING

from ._errors import RunLockedError
from ._records import utc_now
from ._state_files import open_regular

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["RunLock"]

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
        from ._atomic import lazy_path  # noqa: PLC0415 - _atomic imports more than a lock needs

        return lazy_path(self._path)

    def acquire(self) -> None:
        """Take the lock or raise ``RunLockedError`` at once (never waits)."""
        if self._fd is not None:
            raise RuntimeError(f"{self._path} is already locked by this RunLock")
        # A FIFO, a directory or a symlink planted as the lock is NotRegularFile, never a hang.
        fd = open_regular(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._take(fd)
        except OSError as exc:
            try:
                holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
            finally:
                os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(
                f"this run is already being worked on by another process "
                f"({holder or 'holder unknown'}); lock file {self._path}. Nothing was touched. "
                f"Wait for it to finish, or stop it first.",
                lock_path=self._path,
                holder=holder,
            ) from None
        except BaseException:
            os.close(fd)
            raise

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
    def _take(fd: int) -> None:
        """``LOCK_EX | LOCK_NB``. A busy lock may be ``status`` peeking (a shared lock held for
        microseconds, where the kernel's lock table cannot be read), not a run - whatever the
        note says, since a killed holder leaves its note behind: try again a few times over
        about 0.1 s before calling it busy."""
        for _ in range(_PEEK_RETRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                time.sleep(0.02)
            else:
                return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

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
