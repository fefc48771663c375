"""An append-only journal: one line per event, ``<id> <state> <detail>``, group-committed.

What a run appends to learn later what happened, cheaply: a step's starts and ends now, a
map step's items later (one line each, no file per item). The format is fixed so that
deciding needs no JSON parse::

    fetch running {"runs":2,"started":"..."}
    fetch done {"runs":2,...}
    item-0017 done

- ``id``: 1 to 256 printable ASCII characters, no space; ``state``: ``[a-z][a-z_-]*``;
  ``detail``: any text without a line break (often compact JSON), may be empty. The run's
  step journal keeps its older format, one JSON object per line, and is appended to with
  ``append_line``: the same appender, commit and torn-tail cut, its own reader.
- **Appending.** One ``write`` per line (``O_APPEND``), to a file opened only if it is a
  regular file (``open_regular``: no symlink, FIFO or directory in its place). A write that
  fails or is short abandons the file; the next append re-opens it.
- **Group commit.** ``append(..., durable=True)`` asks for the line to be made durable. The
  journal calls ``fdatasync`` once per batch: when ``max_batch`` durable lines are waiting,
  or when the oldest waiting one is ``max_delay`` seconds old (checked at each append; no
  thread), and on ``commit()``/``close()``. ``max_batch=1`` (the default) commits each
  durable line before ``append`` returns. Lines appended without ``durable`` ride along with
  the next commit, or wait for the kernel.
- **Torn or garbage tail.** A crash can leave the last line cut short, and a power cut can
  leave garbage (zeros) at the end. ``replay`` ignores every line that is not complete and
  well-formed (a line without its newline is not complete) and counts it: a caller must
  treat an ignored line as "unknown" - a warning and a re-run, never a skip. Before the
  next append the torn tail is cut off (truncated after the last newline), so a later
  newline can never complete it into a line that looks whole.
- **Compaction.** ``compact`` rewrites the journal as its latest line per id (temp file,
  fsync, rename, fsync of the directory): the old journal or the new one, never a mix.
  Only the process that appends (under the run lock) compacts.

The journal is never the only proof that work is done: steps keep their ``.done`` markers
(docs/crash-safety.md), and the journal may only confirm what a marker says.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable

from ._atomic import fsync_directory, replace_bytes
from ._records import record_type
from ._state_files import open_regular

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

__all__ = ["Entry", "GroupCommit", "Journal", "Replay", "parse_journal", "worth_compacting"]

_STATE_CHARACTERS = "abcdefghijklmnopqrstuvwxyz_-"


def _is_id(text: str) -> bool:
    """1 to 256 printable ASCII characters, no space (no regex: compiling one at import
    costs more than this module's other work)."""
    return 0 < len(text) <= 256 and text.isascii() and text.isprintable() and " " not in text


def _is_state(text: str) -> bool:
    """``[a-z][a-z_-]{0,31}``."""
    return 0 < len(text) <= 32 and "a" <= text[0] <= "z" and not text.strip(_STATE_CHARACTERS)


def _fdatasync(fd: int) -> None:
    """``fdatasync`` where there is one (Linux), else ``fsync`` (macOS)."""
    sync = getattr(os, "fdatasync", None)
    (sync or os.fsync)(fd)


if TYPE_CHECKING:

    class _EntryFields(NamedTuple):
        id: str
        state: str
        detail: str = ""

else:

    def _new_entry(_cls, id, state, detail=""):
        return tuple.__new__(_cls, (id, state, detail))

    _EntryFields = record_type("Entry", _new_entry)


class Entry(_EntryFields):
    """One line of a journal."""

    __slots__ = ()


if TYPE_CHECKING:

    class _ReplayFields(NamedTuple):
        entries: list[Entry]
        bad: int

else:

    def _new_replay(_cls, entries, bad):
        return tuple.__new__(_cls, (entries, bad))

    _ReplayFields = record_type("Replay", _new_replay)


class Replay(_ReplayFields):
    """What a journal holds: its well-formed lines in order, and how many were not."""

    __slots__ = ()

    def latest(self) -> dict[str, Entry]:
        """The last line of each id (in the order ids first appeared)."""
        return {entry.id: entry for entry in self.entries}


def _line(entry: Entry) -> bytes:
    """``entry`` as one journal line; ``ValueError`` if it would not read back the same."""
    if not _is_id(entry.id):
        raise ValueError(f"journal id {entry.id!r}: use 1-256 printable characters, no space")
    if not _is_state(entry.state):
        raise ValueError(f"journal state {entry.state!r}: use [a-z][a-z_-]*, at most 32")
    if "\n" in entry.detail or "\r" in entry.detail:
        raise ValueError("a journal detail must be on one line")
    text = (
        f"{entry.id} {entry.state} {entry.detail}" if entry.detail else f"{entry.id} {entry.state}"
    )
    return text.encode("utf-8") + b"\n"


_WHOLE_LINE = r"^([!-~]{1,256}) ([a-z][a-z_-]{0,31})(?: ([^\n]*))?$"
"""One line of the grammar above (``_is_id``, ``_is_state``), for ``re.findall``: compiled on
first use (``re``'s own cache), so importing this module compiles nothing."""


def parse_journal(data: bytes) -> Replay:
    """The well-formed lines of ``data``; a line that is not (torn, garbage, not UTF-8, no
    newline at the end of the data) is counted in ``bad``, never guessed at.

    Data whose every line is well-formed (what stalwart writes) is read by one regular
    expression, about twice as fast as line by line; anything else - a torn end, an empty
    line, bytes that are not UTF-8, one line the expression does not take - is read line by
    line (``_parse_lines``), so both always agree."""
    if not data.endswith(b"\n") or data.startswith(b"\n") or b"\n\n" in data:
        return _parse_lines(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _parse_lines(data)
    found = re.findall(_WHOLE_LINE, text, re.M)
    if len(found) != data.count(b"\n"):
        return _parse_lines(data)
    return Replay(list(map(Entry._make, found)), 0)


def _parse_lines(data: bytes) -> Replay:
    """``parse_journal``, line by line."""
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a line cut short
    bad = 1 if tail.strip(b"\x00") else 0
    entries = []
    for raw in lines:
        if not raw:
            continue  # the newline a writer adds before appending after a torn tail
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
            continue
        parts = text.split(" ", 2)
        if len(parts) < 2 or not _is_id(parts[0]) or not _is_state(parts[1]):
            bad += 1
            continue
        entries.append(Entry(parts[0], parts[1], parts[2] if len(parts) == 3 else ""))
    return Replay(entries, bad)


def _cut_torn_tail(fd: int) -> None:
    """Truncate the file after its last newline: a torn last line (or a power cut's garbage)
    is removed before anything is appended, so that no later newline can complete it into
    a line that looks whole (``b do`` + ``\n`` would read as state ``do``). Readers that
    came before have already counted it as bad."""
    end = size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return
    keep = 0
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    os.ftruncate(fd, keep)


class GroupCommit:
    """The group commit of a journal (see the module): durable lines wait until
    ``max_batch`` of them do, or the oldest is ``max_delay`` seconds old; then ``sync``.
    ``Journal`` (a file) and, on object storage, ``_remote_state.RemoteItemJournal`` (segment
    objects) share it; each says what ``sync`` writes."""

    def __init__(self, *, max_batch: int, max_delay: float, clock: Callable[[], float]) -> None:
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be at least 1 and max_delay not negative")
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._clock = clock
        self._waiting = 0
        self._oldest = 0.0
        self.commits = 0
        """How many times lines were made durable (``fdatasync`` calls, objects written)."""

    @property
    def waiting(self) -> int:
        """Durable lines appended but not yet committed."""
        return self._waiting

    def _appended_durable(self, lines: int = 1) -> None:
        """``lines`` durable lines were appended: commit if a bound is reached."""
        now = self._clock()
        if not self._waiting:
            self._oldest = now
        self._waiting += lines
        if self._waiting >= self.max_batch or now - self._oldest >= self.max_delay:
            self.commit()

    def commit(self) -> None:
        """Make the durable lines appended so far durable (nothing if no such line waits)."""
        if self._waiting:
            self.sync()

    def sync(self) -> None:
        """Make every line appended so far durable now."""
        raise NotImplementedError


class Journal(GroupCommit):
    """The journal at ``path``, opened for appending on first use (``O_APPEND``, one
    ``write`` per line). One process appends at a time (the caller's lock)."""

    def __init__(
        self,
        path: str,
        *,
        max_batch: int = 1,
        max_delay: float = 0.0,
        mode: int = 0o600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_batch=max_batch, max_delay=max_delay, clock=clock)
        self.path = path
        self._mode = mode
        self._fd: int | None = None
        self._created = False

    def replay(self) -> Replay:
        """Read the whole journal (empty if there is none). ``OSError`` if it cannot be read."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return Replay([], 0)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return parse_journal(b"".join(chunks))

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        flags = os.O_RDWR | os.O_APPEND  # open_regular: no symlink, FIFO or directory
        try:
            fd = open_regular(self.path, flags | os.O_CREAT | os.O_EXCL, self._mode)
            self._created = True
        except FileExistsError:
            fd = open_regular(self.path, flags)
        try:
            _cut_torn_tail(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    def append(self, id: str, state: str, detail: str = "", *, durable: bool = False) -> None:
        """Append one line; with ``durable``, commit per the batch bounds (see the module).
        ``ValueError`` for a malformed line, ``OSError`` if the disk refuses."""
        self._append(_line(Entry(id, state, detail)), durable)

    def append_line(self, line: bytes, *, durable: bool = False) -> None:
        """Append ``line`` as it is, for a journal whose lines have another format (the
        run's step journal: JSON lines), with the same torn-tail cut, group commit and
        failure handling as ``append``. ``ValueError`` unless ``line`` is one line ending in
        a newline."""
        if not line.endswith(b"\n") or b"\n" in line[:-1]:
            raise ValueError("a journal line must be one line, ending in a newline")
        self._append(line, durable)

    def _append(self, data: bytes, durable: bool, lines: int = 1) -> None:
        """One ``write`` of ``data`` (``lines`` whole lines), then the group commit. A write
        that fails (or writes only part of ``data``: a full disk) abandons the journal and
        raises ``OSError``; the next append re-opens it and cuts what a short write left. A
        failed commit raises and leaves the journal open: the caller abandons it (what
        waited is not durable)."""
        fd = self._open()
        try:
            written = os.write(fd, data)
        except OSError:
            self.abandon()
            raise
        if written != len(data):  # a full disk part-way: the next open cuts the torn line
            self.abandon()
            raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
        if durable:
            self._appended_durable(lines)

    def append_many(self, entries: Iterable[Entry], *, durable: bool = False) -> None:
        """Append several lines, as ``append`` would one after another, in as few ``write``
        calls as the group commit allows: with ``durable``, a batch is committed as soon as
        it holds ``max_batch`` lines (never more lines per ``fdatasync`` than ``append``
        would leave). ``ValueError`` (nothing written) if any line is malformed."""
        lines = [_line(entry) for entry in entries]
        start = 0
        while start < len(lines):
            end = len(lines)
            if durable:
                end = min(end, start + self.max_batch - self._waiting)
            self._append(b"".join(lines[start:end]), durable, end - start)
            start = end

    def sync(self, *, reopen: bool = False) -> None:
        """Make every line appended so far durable now: one ``fdatasync`` (and the
        directory's ``fsync`` the first time, if this journal created the file). A journal
        that is closed (never opened, or abandoned after a failed append) has nothing to
        sync, unless ``reopen``: then its file is opened (the torn tail cut) and synced, for
        a caller whose lines were appended before it was closed."""
        fd = self._fd
        if fd is None:
            if not reopen:
                return
            fd = self._open()
        _fdatasync(fd)
        if self._created:
            fsync_directory(os.path.dirname(self.path) or ".")
            self._created = False
        self._waiting = 0
        self.commits += 1

    def close(self) -> None:
        """Commit what waits, then close. Idempotent."""
        if self._fd is None:
            return
        try:
            self.commit()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    def abandon(self) -> None:
        """Close without committing (after a failed append: the next one re-opens and
        starts on a fresh line). What waited is left to the kernel."""
        self._waiting = 0
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def compact(self, entries: Iterable[Entry]) -> None:
        """Replace the journal by ``entries`` (usually ``replay().latest().values()``),
        atomically and durably. The journal is closed first; the next append re-opens it."""
        self.close()
        data = b"".join(_line(entry) for entry in entries)
        replace_bytes(self.path, data, new_mode=self._mode, shared=False)


def worth_compacting(replay: Replay, *, minimum: int = 4096) -> bool:
    """Whether rewriting ``replay`` as its latest lines would drop most of it: at least
    ``minimum`` lines, three quarters of them superseded or bad."""
    total = len(replay.entries) + replay.bad
    return total >= minimum and len(replay.latest()) * 4 <= total
