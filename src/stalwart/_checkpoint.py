"""Checkpoints: one ``.done`` marker per completed step of a run, and the run's lock.

Layout under the run directory ``<root>/<pipeline>/runs/<run_id>/``::

    .checkpoints/<step>.done        JSON marker, written atomically after the step's outputs
    .journal.jsonl                  append-only: each step's starts, ends, failures (runs, error)
    .lock                           flock'ed while a process runs this run

Every disk access of this module goes through the few private methods of ``CheckpointStore``
(read, write atomically, list, delete) and ``RunLock``: the seam a second backend plugs into.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import TYPE_CHECKING

from ._atomic import fsync_directory, lazy_path, replace_bytes
from ._records import (
    NAME_RE,
    Marker,
    OutputRecord,
    SkipDecision,
    StepRecord,
    normalize_output_name,
    parse_record,
    record_fields,
    validate_name,
)
from ._state_files import iter_lines, open_regular, set_aside_non_file

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

# The records live in _records; they are re-exported here, where they were first.
__all__ = [
    "CheckpointStore",
    "Marker",
    "OutputRecord",
    "RunLock",
    "SkipDecision",
    "StepRecord",
    "normalize_output_name",
    "validate_name",
]

log = logging.getLogger("stalwart.checkpoint")

_MAX_MARKER = 16 * 1024 * 1024
_MAX_RECORD_LINE = 1024 * 1024  # a record is < 3 kB (its error is cut at 2,000 characters)
_JOURNAL = ".journal.jsonl"  # in the run directory, beside .checkpoints/ (markers only)


def _journal_lines(path: str) -> Iterator[bytes | None]:
    """The journal's lines, streamed; ``None`` for a line too long to be a record."""
    return iter_lines(path, max_line=_MAX_RECORD_LINE)


def _parse_line(line: bytes | None) -> tuple[str, StepRecord] | None:
    """One journal line as (step, record); ``None`` if it is not one."""
    if line is None:
        return None
    try:
        data = json.loads(line.decode("utf-8"))
        step = data.pop("step", None) if isinstance(data, dict) else None
        record = parse_record(data)
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError):
        return None
    if isinstance(step, str) and NAME_RE.match(step):
        return step, record
    return None


class CheckpointStore:
    """The ``.done`` markers of one run (``run_dir`` = ``<root>/<pipeline>/runs/<run_id>``).

    Crash safety: markers are written with ``atomic_write`` (temp, fsync, rename, fsync of the
    directory), so a marker on disk is always complete; a marker that is not (edited by hand,
    disk corruption) is reported as corrupt and its step runs again. Clearing markers fsyncs
    the directory, so a cleared marker does not come back after a power cut.

    Step records (starts, ends, failures: what ``status`` shows) are appended to
    ``.journal.jsonl`` (beside ``.checkpoints/``) without fsync, one JSON line each, by the
    process holding the run lock:
    after a power cut the journal may lack its last lines; a torn last line is ignored. They
    are statistics, never the source of truth about what is done (the markers are).
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self._run_dir = os.fspath(run_dir)
        self._directory = os.path.join(self._run_dir, ".checkpoints")
        self._records: dict[str, StepRecord] | None = None
        self._directory_ready = False
        self._journal_fd: int | None = None

    @property
    def run_dir(self) -> Path:
        return lazy_path(self._run_dir)

    @property
    def directory(self) -> Path:
        """``<run_dir>/.checkpoints``, where the markers are."""
        return lazy_path(self._directory)

    # -- the storage seam --------------------------------------------------------------------

    def _read(self, name: str) -> bytes | None:
        """The whole file ``.checkpoints/<name>``, ``None`` if it does not exist; ``OSError``
        if it cannot be read."""
        return self._read_path(os.path.join(self._directory, name))

    def _read_path(self, path: str) -> bytes | None:
        try:  # a FIFO, a directory or a symlink planted here is NotRegularFile, never a hang
            fd = open_regular(path)
        except FileNotFoundError:
            return None
        try:
            # Read what is there, at most one byte past the limit (so callers can tell it is
            # too big) - without allocating the limit up front: markers are read on every skip.
            want = min(os.fstat(fd).st_size, _MAX_MARKER) + 1
            chunks = []
            while want > 0:
                chunk = os.read(fd, want)
                if not chunk:
                    break
                chunks.append(chunk)
                want -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _write(self, name: str, data: bytes) -> None:
        self._ensure_directory()
        path = os.path.join(self._directory, name)
        set_aside_non_file(path)  # a directory planted as a marker must not fail every run
        # Markers live in the run directory, which the run lock makes ours alone.
        replace_bytes(path, data, new_mode=0o600, shared=False)

    def _list(self) -> list[str]:
        try:
            return sorted(os.listdir(self._directory))
        except FileNotFoundError:
            return []

    def _delete(self, names: list[str]) -> list[str]:
        """Unlink ``names``; return those that existed. Durable once it returns."""
        deleted = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._directory, name))
                deleted.append(name)
        if deleted:
            fsync_directory(self._directory)
        return deleted

    def _size(self, output: str) -> int:
        """The size of output ``output`` (a name relative to the run); ``OSError`` if none."""
        return os.stat(os.path.join(self._run_dir, output)).st_size

    def _journal_stream(self) -> Iterable[bytes | None]:
        """The journal's lines (``None`` for one too long to be a record); ``OSError`` if it
        cannot be read."""
        return _journal_lines(os.path.join(self._run_dir, _JOURNAL))

    def _ensure_directory(self) -> None:
        if self._directory_ready:
            return
        try:
            os.mkdir(self._directory, 0o700)
        except FileExistsError:
            self._directory_ready = True
            return
        fsync_directory(self._run_dir)
        self._directory_ready = True  # the new directory entry must survive a power cut too

    # -- markers -----------------------------------------------------------------------------

    def marker_path(self, step: str) -> Path:
        return lazy_path(os.path.join(self._directory, f"{validate_name(step, 'step name')}.done"))

    def read_marker(self, step: str) -> Marker | None:
        """The step's marker, ``None`` if there is none; ``ValueError`` if it is corrupt or
        cannot be read."""
        try:
            raw = self._read(f"{validate_name(step, 'step name')}.done")
        except OSError as exc:
            raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
        if raw is None:
            return None
        if len(raw) > _MAX_MARKER:
            raise ValueError(f"larger than {_MAX_MARKER} bytes")
        return Marker.from_json(raw)

    def check(self, step: str, *, run_id: str) -> SkipDecision:
        """Is ``step`` done? Only if its marker parses, names this step and run, and every
        recorded output still exists with the recorded size (no rehashing: it is fast)."""
        try:
            marker = self.read_marker(step)
        except ValueError as exc:
            return SkipDecision(
                False, f"its marker {self.marker_path(step)} is corrupt ({exc})", corrupt=True
            )
        if marker is None:
            return SkipDecision(False, "not done yet")
        if marker.step != step or marker.run_id != run_id:
            return SkipDecision(
                False,
                f"its marker belongs to step {marker.step!r} of run {marker.run_id!r}",
                corrupt=True,
            )
        for output in marker.outputs:
            try:
                size = self._size(output.name)
            except OSError:
                return SkipDecision(False, f"its output {output.name} is missing", marker)
            if size != output.size:
                return SkipDecision(
                    False,
                    f"its output {output.name} changed size ({output.size} -> {size} bytes)",
                    marker,
                )
        return SkipDecision(True, "", marker)

    def is_done(self, step: str, *, run_id: str | None = None) -> bool:
        return self.check(step, run_id=run_id or os.path.basename(self._run_dir)).done

    def write_marker(self, marker: Marker) -> None:
        """Write the marker atomically and durably. Call only after every output is durable:
        a crash before it returns leaves no marker (the step runs again), never half of one."""
        self._write(f"{validate_name(marker.step, 'step name')}.done", marker.to_json())

    def clear(self, steps: list[str] | tuple[str, ...]) -> list[str]:
        """Remove the markers of ``steps`` (and the item journals of map steps); return the
        steps that had one."""
        names = [f"{validate_name(step, 'step name')}{end}" for step in steps for end in _ENDS]
        return _steps_of(self._delete(names))

    def clear_all(self) -> list[str]:
        """Remove every marker (and item journal) of the run; return the steps that had one."""
        names = [name for name in self._list() if name.endswith(_ENDS)]
        return _steps_of(self._delete(names))

    # -- step records ------------------------------------------------------------------------

    def _load_journal(self) -> dict[str, StepRecord]:
        """The latest record of each step, read once from the journal (then kept current).
        The journal is streamed, so one of any size is read whole."""
        if self._records is not None:
            return self._records
        records: dict[str, StepRecord] = {}
        skipped = 0
        journal = os.path.join(self._run_dir, _JOURNAL)
        try:
            for line in self._journal_stream():
                if line is not None and not line.strip():
                    continue
                parsed = _parse_line(line)
                if parsed is None:
                    skipped += 1
                else:
                    records[parsed[0]] = parsed[1]
        except OSError as exc:
            log.warning("ignoring the unreadable journal in %s (%s)", self._run_dir, exc)
        if skipped:
            log.warning("ignored %d unreadable line(s) of %s", skipped, journal)
        self._records = records
        return records

    def read_record(self, step: str) -> StepRecord:
        """The step's latest record (an empty one if it never started)."""
        return self._load_journal().get(validate_name(step, "step name"), StepRecord())

    def write_record(self, step: str, record: StepRecord) -> None:
        """Append ``record`` to the journal (no fsync; see the class docstring)."""
        validate_name(step, "step name")
        records = self._load_journal()
        line = json.dumps({"step": step, **record_fields(record)}, separators=(",", ":"))
        records[step] = record
        try:
            if self._journal_fd is None:
                self._ensure_directory()
                fd = open_regular(
                    os.path.join(self._run_dir, _JOURNAL),
                    os.O_RDWR | os.O_APPEND | os.O_CREAT,
                    0o600,
                )
                try:  # a torn last line (killed mid-append) must not swallow the next record
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = "\n" + line
                except BaseException:
                    os.close(fd)
                    raise
                self._journal_fd = fd
            os.write(self._journal_fd, (line + "\n").encode("utf-8"))
        except OSError as exc:  # statistics, not state: a full disk must not fail the run here
            self.close()  # the next append re-opens and steps over a torn line
            log.warning(
                "could not append step %s's record to %s (%s); status may lag for this run",
                step,
                os.path.join(self._run_dir, _JOURNAL),
                exc.strerror or exc,
            )

    def close(self) -> None:
        """Close the journal (the runner calls it when the run ends)."""
        if self._journal_fd is not None:
            fd, self._journal_fd = self._journal_fd, None
            os.close(fd)


_ENDS = (".done", ".items")  # a step's marker; a map step's item journal (``_map``)


def _steps_of(names: list[str]) -> list[str]:
    """``["a.done", "a.items", "b.items"]`` -> ``["a", "b"]``."""
    return list(dict.fromkeys(name.rpartition(".")[0] for name in names))


from ._lock import RunLock  # noqa: E402 - re-exported: the lock lived here first
