"""Opening stalwart's own state files (markers, the journal, ``.lock``, envelopes) so that
nothing planted in their place can hang or redirect a command.

Every open is ``O_NOFOLLOW`` (a symlink is refused, never followed out of the state root)
and ``O_NONBLOCK`` (a FIFO planted as a marker opens at once instead of waiting for a writer
forever); the file type is then checked, and anything but a regular file - a FIFO, a
directory, a socket, a device - is ``NotRegularFile``: the caller reports it as corrupt.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator

__all__ = [
    "NotRegularFile",
    "describe_type",
    "iter_lines",
    "open_regular",
    "refuse_planted_links",
    "set_aside_non_file",
]

log = logging.getLogger("stalwart.checkpoint")


class NotRegularFile(OSError):
    """A state file that is a FIFO, a directory, a socket or a device: never read or used."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror} (not made by stalwart: move it away, then re-run)"


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFREG: "a regular file",
}


def describe_type(mode: int) -> str:
    """``a FIFO``, ``a directory``... for the type bits of ``mode``."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """``os.open`` with ``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC``; the descriptor of a regular
    file, or ``NotRegularFile`` for anything else, a symlink included (``FileNotFoundError``
    and other ``OSError`` pass through). Opening creates nothing unless ``flags`` say so."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except IsADirectoryError:
        raise NotRegularFile(
            errno.EISDIR, "it is a directory, not a file", os.fspath(path)
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ELOOP):  # a FIFO with no reader; a symlink
            kind = "a symbolic link" if exc.errno == errno.ELOOP else "a FIFO"
            raise NotRegularFile(exc.errno, f"it is {kind}, not a file", os.fspath(path)) from None
        raise
    info = os.fstat(fd)  # of a descriptor just opened: does not fail
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotRegularFile(
            errno.EINVAL, f"it is {describe_type(info.st_mode)}, not a file", os.fspath(path)
        )
    return fd


def iter_lines(path: str | os.PathLike[str], *, max_line: int) -> Iterator[bytes | None]:
    """The lines of the regular file ``path``, streamed (whatever its size); a line longer
    than ``max_line`` bytes is yielded as ``None`` (unreadable) and skipped, never held
    whole. Nothing if the file does not exist."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb") as handle:
        skipping = False
        while line := handle.readline(max_line + 1):
            ended = line.endswith(b"\n")
            if skipping:
                skipping = not ended
                continue
            if len(line) > max_line and not ended:
                skipping = True
                yield None
                continue
            yield line


def set_aside_non_file(path: str) -> None:
    """If something that is not a file or a symlink (a directory, a FIFO...) sits at ``path``,
    rename it to ``<path>.not-a-file-<random>`` (kept, never deleted) so a file can be
    written there; a warning names both. Nothing is done if ``path`` is a file or absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
        return
    import secrets  # noqa: PLC0415 - rare path; secrets imports hmac and random

    aside = f"{path}.not-a-file-{secrets.token_hex(4)}"
    os.rename(path, aside)
    log.warning(
        "%s was %s, not a file: moved it to %s to write the file there",
        path,
        describe_type(info.st_mode),
        aside,
    )


def real_directories(base: str, relative: str, *, mode: int = 0o700, create: bool = True) -> None:
    """Check that every part of ``relative`` (``a/b/c``) below ``base`` is a real directory,
    making the missing ones with ``mode`` (with ``create=False``, creating nothing and
    stopping at the first missing one); ``UsageError`` naming the first symlink or
    non-directory, so nothing planted in the state root can redirect stalwart's writes
    outside it. ``run`` creates its directories this way; ``reset`` and ``deadletter`` only
    check before touching anything (``refuse_planted_links``)."""
    from ._errors import UsageError  # noqa: PLC0415 - only when a directory is checked

    current = base
    for part in relative.split("/"):
        if not part:
            continue
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            if not create:
                return
            with contextlib.suppress(FileExistsError):
                os.mkdir(current, mode)
            info = os.lstat(current)
        if not stat.S_ISDIR(info.st_mode):
            raise UsageError(
                f"refusing to use {current}: it is {describe_type(info.st_mode)}; stalwart's "
                f"state must be made of real directories inside {base}"
            )


def refuse_planted_links(base: str, relative: str) -> None:
    """``real_directories`` that creates nothing: what ``reset`` and ``deadletter`` call."""
    real_directories(base, relative, create=False)
