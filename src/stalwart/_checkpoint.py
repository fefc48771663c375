"""Checkpoints: one ``.done`` marker per completed step of a run, and the run's lock.

Layout under the run directory ``<root>/<pipeline>/runs/<run_id>/``::

    .checkpoints/<step>.done        JSON marker, renamed into place after the step's outputs
    .journal.jsonl                  append-only (``_journal``): each step's starts, ends,
                                    failures (runs, error); a ``done`` record commits a step
    .lock                           flock'ed while a process runs this run

Every disk access of this module goes through the few private methods of ``CheckpointStore``
(read, write atomically, list, delete), its ``commit`` and ``RunLock``: the seam a second
backend plugs into (``_remote_state``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

from ._atomic import fsync_directory, lazy_path, replace_bytes
from ._journal import Journal
from ._records import (
    Marker,
    OutputRecord,
    SkipDecision,
    StepRecord,
    is_name,
    normalize_output_name,
    parse_record,
    record_fields,
    validate_name,
)
from ._state_files import iter_lines, open_regular, set_aside_non_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path
    from typing import NoReturn

# The records live in _records; they are re-exported here, where they were first.
__all__ = [
    "CheckpointStore",
    "CommitError",
    "Marker",
    "OutputRecord",
    "RunLock",
    "SkipDecision",
    "StepRecord",
    "normalize_output_name",
    "validate_name",
]

log = logging.getLogger("stalwart.checkpoint")

COMMIT_EVERY = 1.0
"""Seconds (docs/crash-safety.md, "The step commit"): a step's "done" record is made durable
at once if the step journal's last sync is this old, else with the next commit that comes
this long after it, at the ``COMMIT_BATCH``-th record waiting, or when the run ends."""
COMMIT_BATCH = 32
"""Done records that may wait for one sync."""
_now = time.monotonic  # the clock of the group commit (a test moves it)


class CommitError(OSError):
    """A step commit failed (the disk failed) and withdrew the markers of ``withdrawn``
    (step names, in the order they ran): they run again. The ``errno`` is the disk's."""

    withdrawn: tuple[str, ...] = ()


_MAX_MARKER = 16 * 1024 * 1024
_MAX_RECORD_LINE = 1024 * 1024  # a record is < 3 kB (its error is cut at 2,000 characters)
_JOURNAL = ".journal.jsonl"  # in the run directory, beside .checkpoints/ (markers only)
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # a journal line; built once, it is hot


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
    if is_name(step):
        return step, record
    return None


class CheckpointStore:
    """The ``.done`` markers of one run (``run_dir`` = ``<root>/<pipeline>/runs/<run_id>``).

    Crash safety: a marker is written to a temp file and renamed into place, so to any
    process it is complete or absent; a marker that is not complete (edited by hand, a power
    cut before the kernel wrote it, disk corruption) is reported as corrupt and its step runs
    again. ``commit`` (the runner's) gives the marker no fsync of its own - the step's
    durable ``done`` record commits it, and a marker a power cut loses only re-runs its step;
    ``write_marker`` syncs it. Clearing markers fsyncs the directory, so a cleared marker
    does not come back after a power cut.

    Step records (starts, ends, failures: what ``status`` shows) are appended to
    ``.journal.jsonl`` (beside ``.checkpoints/``), one JSON line each, by the process holding
    the run lock, without fsync except the ``done`` record of ``commit``: after a power cut
    the journal may lack its last lines; a torn or garbage last line is ignored with a
    warning (and cut off before the next append). They are statistics, never the source of
    truth about what is done: the markers are, and a record never makes a step skip.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self._run_dir = os.fspath(run_dir)
        self._directory = os.path.join(self._run_dir, ".checkpoints")
        self._records: dict[str, StepRecord] | None = None
        self._directory_ready = False
        self._steps = Journal(os.path.join(self._run_dir, _JOURNAL))
        """The step journal, appended to by this process (it holds the run lock)."""
        self._waiting: list[str] = []
        """Markers whose "done" records are in the journal, not yet synced (``commit``)."""
        self._synced_at: float | None = None

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

    def commit(self, marker: Marker, record: StepRecord) -> None:
        """Commit a step that returned: rename its marker into place without fsyncs of its
        own, then append its ``done`` ``record`` to the journal, made durable by one
        ``fdatasync`` shared by the records that wait for it: at once if the journal was
        last synced ``COMMIT_EVERY`` (1 s) ago or more, else with a later commit, the
        ``COMMIT_BATCH``-th waiting record, or ``commit_waiting`` when the run ends
        (docs/crash-safety.md, "The step commit"). Call only after every output is durable.

        What a crash leaves: before the rename, no marker (the step runs again); after it,
        a complete marker to any process, so after a process crash the step is skipped.
        After a power cut the marker may be missing or empty until the kernel wrote it:
        the step runs again, never skips on something its outputs do not back (they were
        durable before the marker existed). If the journal cannot take the line (a full
        disk, something planted in its place) the marker syncs itself instead (fsync of it
        and of ``.checkpoints/``), with a warning. If the journal's sync fails, or the
        marker cannot sync itself, the disk is failing: the markers that sync would have
        committed are withdrawn (unlinked) and ``OSError`` raised, naming them - the step
        failed, and they run again."""
        step = validate_name(marker.step, "step name")
        self._ensure_directory()
        path = os.path.join(self._directory, f"{step}.done")
        set_aside_non_file(path)  # a directory planted as a marker must not fail every run
        replace_bytes(path, marker.to_json(), durable=False, new_mode=0o600, shared=False)
        if self._append(step, record):
            self._waiting.append(path)
            synced = self._synced_at
            if (
                synced is None
                or _now() - synced >= COMMIT_EVERY
                or len(self._waiting) >= COMMIT_BATCH
            ):
                self.commit_waiting()
            return
        try:  # no journal line to commit it: the marker syncs itself
            _sync_file(path)
            fsync_directory(self._directory)
        except OSError as exc:
            doing = "syncing its marker itself: the journal could not take its record"
            _withdraw([path], exc, doing)

    def commit_waiting(self) -> None:
        """Make the "done" records that wait durable: one ``fdatasync`` of the journal (the
        commit point of their steps). If it fails, the markers of those steps are withdrawn
        and ``OSError`` raised, naming them (the runner calls it when a run's steps are
        done, so that a run succeeds only once they are committed)."""
        waiting = self._waiting
        if not waiting:
            return
        try:  # a journal closed by a failed append since is re-opened: its lines are there
            self._steps.sync(reopen=True)
        except OSError as exc:
            self._waiting = []
            self._steps.abandon()  # what it held is not durable: re-opened on next use
            try:
                _withdraw(waiting, exc, f"through {self._steps.path}")
            except CommitError as error:
                self._record_withdrawn(error)
                raise
        self._waiting = []  # only now: an interrupt during the sync leaves them to close()
        self._synced_at = _now()

    def _record_withdrawn(self, error: CommitError) -> None:
        """Best effort, a ``failed`` record for each step whose marker ``error`` withdrew, so
        that ``status`` says why a step that had finished is pending again."""
        records = self._load_journal()
        for step in error.withdrawn:
            done = records.get(step, StepRecord())
            failed = done._replace(outcome="failed", error_type="CommitError", error=str(error))
            self._append(step, failed)

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
        """Append ``record`` to the journal (no fsync; see the class docstring). A record the
        journal cannot take is a warning: statistics must not fail a run."""
        self._append(validate_name(step, "step name"), record)

    def _append(self, step: str, record: StepRecord) -> bool:
        """One JSON line for ``record`` appended to the journal (not synced); False, with a
        warning naming the file, if the journal could not take it."""
        records = self._load_journal()
        line = _COMPACT.encode({"step": step, **record_fields(record)})
        records[step] = record
        try:
            self._ensure_directory()
            # A torn last line (killed mid-append, a power cut's zeros) is cut off first.
            self._steps.append_line(f"{line}\n".encode())
        except OSError as exc:  # statistics, not state: a full disk must not fail the run here
            log.warning(  # the journal was abandoned: the next append re-opens it
                "could not append step %s's record to %s (%s); status may lag for this run",
                step,
                self._steps.path,
                exc.strerror or exc,
            )
            return False
        return True

    def close(self) -> None:
        """Commit what waits, then close the journal (the runner calls it when the run
        ends, whatever the outcome; on success it called ``commit_waiting`` first). A sync
        that fails here withdraws those markers, with a warning: the run already failed or
        was interrupted, and its own error stands."""
        try:
            self.commit_waiting()
        except OSError as exc:
            log.warning("%s", exc, extra={"error": str(exc)[:500]})
        finally:
            self._steps.abandon()


def _withdraw(markers: list[str], exc: OSError, doing: str) -> NoReturn:
    """Unlink markers that could not be made durable (the disk is failing: nothing may claim
    their steps done), then raise ``CommitError``, saying which steps and where."""
    for marker in markers:
        with contextlib.suppress(OSError):
            os.unlink(marker)
    steps = [os.path.basename(m).removesuffix(".done") for m in markers]
    if len(markers) == 1:
        said = f"its marker was withdrawn and the step will run again: {markers[0]}"
        what = f"committing step {steps[0]}"
    else:
        said = (
            f"their markers were withdrawn and they will run again: "
            f"{', '.join(os.path.basename(m) for m in markers)} in {os.path.dirname(markers[0])}"
        )
        what = f"committing steps {', '.join(steps)}"
    error = CommitError(exc.errno, f"{exc.strerror or exc} ({what} {doing}); {said}")
    error.withdrawn = tuple(steps)
    raise error from None


def _sync_file(path: str) -> None:
    """``fsync`` the regular file at ``path``."""
    fd = open_regular(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_ENDS = (".done", ".items")  # a step's marker; a map step's item journal (``_map``)


def _steps_of(names: list[str]) -> list[str]:
    """``["a.done", "a.items", "b.items"]`` -> ``["a", "b"]``."""
    return list(dict.fromkeys(name.rpartition(".")[0] for name in names))


from ._lock import RunLock  # noqa: E402 - re-exported: the lock lived here first
