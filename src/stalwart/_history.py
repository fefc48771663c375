"""The history of a pipeline's runs (``runs``, ``report``, ``gc``), read from the one small
summary the runner keeps per run (``_run_summary``), so listing thousands of runs reads one
small object per run instead of every marker. A run killed with SIGKILL leaves ``running``
behind with nobody holding its lock: it is listed as ``interrupted``. A run without a summary
(started by an older stalwart) is described from its journal.

Where the runs are kept is a ``RunHistory``: ``LocalRunHistory`` (here) for a directory,
``_remote_history.StoreRunHistory`` for object storage; ``Pipeline.history()`` picks the one
of its root. Everything else here (what a summary says, the order, the table, the JSON) is
the same code for both. Reads only, but for ``RunHistory.remove`` (``gc``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from ._run_summary import SUMMARY_FILE

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._checkpoint import CheckpointStore
    from ._deadletter import DeadLetterStore

__all__ = [
    "LocalRunHistory",
    "RunHistory",
    "RunSummary",
    "as_history",
    "format_duration",
    "list_runs",
    "parse_summary",
    "read_summary",
    "run_time",
    "runs_json",
    "runs_table",
]

log = logging.getLogger("stalwart.history")

RUNS_FORMAT = 1
MAX_SUMMARY = 1024 * 1024
"""A summary larger than this is not one (it is not read)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """One run, as ``runs`` lists it."""

    run_id: str
    state: str
    """``running``, ``succeeded``, ``failed``, ``interrupted`` (or ``unknown``: no summary
    and nothing in the journal)."""
    started: str = ""
    finished: str = ""
    duration_s: float | None = None
    failed_step: str = ""
    error_type: str = ""
    error: str = ""
    ran: int = 0
    skipped: int = 0
    params: Mapping[str, str] = field(default_factory=dict)
    dead_letters_pending: int = 0
    note: str = ""


class RunHistory(Protocol):
    """A pipeline's runs where they are kept: what ``runs``, ``report`` and ``gc`` read (and
    ``gc`` deletes). Run IDs given to it are valid names (``_records.validate_name``)."""

    def location(self, run_id: str) -> str:
        """Where the run's state is, for people: a directory or a URL."""
        ...

    def run_ids(self) -> list[str]:
        """Every run that left state (any order)."""
        ...

    def exists(self, run_id: str) -> bool: ...

    def summaries(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Each run's summary as written (``parse_summary``), ``None`` where there is none."""
        ...

    def holder(self, run_id: str) -> str | None:
        """Who runs ``run_id`` now (pid, host, since), ``None`` if nobody."""
        ...

    def last_change(self, run_id: str) -> str:
        """When the run's state last changed (``YYYY-MM-DDTHH:MM:SS``, UTC), if known: for a
        run that recorded no start."""
        ...

    def checkpoints(self, run_id: str) -> CheckpointStore: ...

    def journal(self, run_id: str) -> bytes:
        """The run's step journal, every line (``b""`` if there is none)."""
        ...

    def marker(self, run_id: str, step: str) -> bytes | None:
        """The raw marker of ``step``, ``None`` if there is none."""
        ...

    def deadletters(self) -> DeadLetterStore: ...

    def remove(self, run_id: str, *, dry_run: bool) -> tuple[str | None, int]:
        """Delete the run's state holding its lock (without waiting); return ``(holder,
        0)`` instead if a process holds it, else ``(None, bytes deleted)``. ``dry_run``:
        delete nothing, say what would happen."""
        ...


class LocalRunHistory:
    """The runs of ``<root>/<pipeline>`` on a local directory."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self._state_dir = os.fspath(state_dir)

    def _run_dir(self, run_id: str) -> str:
        return os.path.join(self._state_dir, "runs", run_id)

    def location(self, run_id: str) -> str:
        return self._run_dir(run_id)

    def run_ids(self) -> list[str]:
        from ._records import is_name  # noqa: PLC0415

        try:
            entries = list(os.scandir(os.path.join(self._state_dir, "runs")))
        except FileNotFoundError:
            return []
        return [e.name for e in entries if is_name(e.name) and e.is_dir(follow_symlinks=False)]

    def exists(self, run_id: str) -> bool:
        return os.path.isdir(self._run_dir(run_id))

    def summaries(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        return {run_id: read_summary(self._run_dir(run_id)) for run_id in run_ids}

    def holder(self, run_id: str) -> str | None:
        from ._lock import lock_holder  # noqa: PLC0415 - only for a run not marked ended

        return lock_holder(self._run_dir(run_id))

    def last_change(self, run_id: str) -> str:
        try:  # the directory's change time
            import time  # noqa: PLC0415

            changed = os.stat(self._run_dir(run_id)).st_mtime
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(changed))
        except OSError:
            return ""

    def checkpoints(self, run_id: str) -> CheckpointStore:
        from ._checkpoint import CheckpointStore  # noqa: PLC0415

        return CheckpointStore(self._run_dir(run_id))

    def journal(self, run_id: str) -> bytes:
        try:
            with open(os.path.join(self._run_dir(run_id), ".journal.jsonl"), "rb") as handle:
                return handle.read()
        except OSError:
            return b""

    def marker(self, run_id: str, step: str) -> bytes | None:
        path = os.path.join(self._run_dir(run_id), ".checkpoints", f"{step}.done")
        try:
            with open(path, "rb") as handle:
                return handle.read(16 * 1024 * 1024)
        except OSError:
            return None

    def deadletters(self) -> DeadLetterStore:
        from ._deadletter import DeadLetterStore  # noqa: PLC0415

        return DeadLetterStore(os.path.join(self._state_dir, "deadletter"))

    def remove(self, run_id: str, *, dry_run: bool) -> tuple[str | None, int]:
        """The run directory goes with ``shutil.rmtree`` (which never follows a symbolic
        link), under the run's lock: a crash can leave part of it, which the next ``gc``
        deletes."""
        import shutil  # noqa: PLC0415

        from ._errors import RunLockedError  # noqa: PLC0415
        from ._lock import RunLock  # noqa: PLC0415

        run_dir = self._run_dir(run_id)
        if dry_run:
            holder = self.holder(run_id)
            return (holder, 0) if holder else (None, _disk_usage(run_dir))
        size = _disk_usage(run_dir)
        lock = RunLock(os.path.join(run_dir, ".lock"))
        try:
            lock.acquire()
        except RunLockedError as exc:
            return exc.holder or "another process", 0
        try:
            shutil.rmtree(run_dir)
        finally:
            lock.release()
        return None, size


def _disk_usage(path: str) -> int:
    """Bytes of the files under ``path`` (symbolic links counted as links, not followed)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*filenames, *dirnames):
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


# -- reading -----------------------------------------------------------------------------------


def parse_summary(raw: bytes | None, where: str) -> dict[str, Any] | None:
    """A summary as written, or ``None`` if ``raw`` is missing, too large or not a JSON
    object (``where`` names it in the warning)."""
    if raw is None or len(raw) > MAX_SUMMARY:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        log.warning("ignoring the unreadable run summary %s", where)
        return None
    return data if isinstance(data, dict) else None


def read_summary(run_dir: str) -> dict[str, Any] | None:
    """The summary in a local run directory as written, or ``None`` if it is missing or
    unreadable."""
    path = os.path.join(run_dir, SUMMARY_FILE)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SUMMARY + 1)
    except OSError:
        return None
    return parse_summary(raw, path)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _count(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _params(data: Mapping[str, Any]) -> dict[str, str]:
    value = data.get("params")
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _from_summary(history: RunHistory, run_id: str, data: Mapping[str, Any]) -> RunSummary:
    state = _text(data, "state") or "unknown"
    note = ""
    if state == "running":  # its summary says so: is a process still holding it?
        holder = history.holder(run_id)
        if holder:
            note = holder
        else:
            state, note = "interrupted", "the process running it died"
    duration = data.get("duration_s")
    return RunSummary(
        run_id=run_id,
        state=state,
        started=_text(data, "started"),
        finished=_text(data, "finished"),
        duration_s=float(duration)
        if isinstance(duration, int | float) and not isinstance(duration, bool)
        else None,
        failed_step=_text(data, "failed_step"),
        error_type=_text(data, "error_type"),
        error=_text(data, "error"),
        ran=_count(data, "ran"),
        skipped=_count(data, "skipped"),
        params=_params(data),
        note=note,
    )


def _from_journal(history: RunHistory, run_id: str, step_names: Sequence[str]) -> RunSummary:
    """A run without a summary (an older stalwart wrote it): what its journal says."""
    store = history.checkpoints(run_id)
    records = {name: store.read_record(name) for name in step_names}
    started = min((r.started for r in records.values() if r.started), default="")
    finished = max((r.finished for r in records.values() if r.finished), default="")
    state, failed_step, error_type, error = "unknown", "", "", ""
    for name in step_names:
        record = records[name]
        if record.outcome == "failed":
            state, failed_step, error_type, error = "failed", name, record.error_type, record.error
            break
        if record.outcome in ("running", "interrupted"):
            state = "running" if history.holder(run_id) else "interrupted"
            break
    else:
        if step_names and all(records[n].outcome == "done" for n in step_names):
            state = "succeeded"
    return RunSummary(
        run_id=run_id,
        state=state,
        started=started,
        finished=finished,
        failed_step=failed_step,
        error_type=error_type,
        error=error[:500],
        note="no run summary (an older stalwart ran it); from its journal",
    )


def _pending_dead_letters(history: RunHistory) -> dict[str, int]:
    """Pending dead letters per run ID (an envelope records the run it belongs to)."""
    counts: dict[str, int] = {}
    for envelope in history.deadletters().list():
        if envelope.state == "pending":
            counts[envelope.run_id] = counts.get(envelope.run_id, 0) + 1
    return counts


def run_time(history: RunHistory, run: RunSummary) -> str:
    """When the run started (RFC 3339), or when its state last changed if it has no record."""
    return run.started or history.last_change(run.run_id)


def as_history(where: RunHistory | str | os.PathLike[str]) -> RunHistory:
    """``where`` itself, or the ``LocalRunHistory`` of a ``<root>/<pipeline>`` directory."""
    if isinstance(where, str | os.PathLike):
        return LocalRunHistory(where)
    return where


def list_runs(
    where: RunHistory | str | os.PathLike[str],
    step_names: Sequence[str],
    *,
    limit: int | None = None,
    dead_letters: bool = True,
) -> list[RunSummary]:
    """Every run of ``where`` (a ``RunHistory``, or a ``<root>/<pipeline>`` directory),
    newest first; at most ``limit``.

    Reads one summary per run (the journal for a run that has none; the lock of a run whose
    summary says it is running) and, with ``dead_letters``, the pipeline's dead letters once
    to count the pending ones per run.
    """
    history = as_history(where)
    ids = history.run_ids()
    summaries = history.summaries(ids)
    runs: list[tuple[str, RunSummary]] = []
    for run_id in ids:
        data = summaries.get(run_id)
        run = (
            _from_summary(history, run_id, data)
            if data is not None
            else _from_journal(history, run_id, step_names)
        )
        runs.append((run_time(history, run), run))
    runs.sort(key=lambda pair: (pair[0], pair[1].run_id), reverse=True)
    chosen = [run for _, run in runs[:limit] if limit is None or limit > 0]
    if dead_letters and chosen:
        pending = _pending_dead_letters(history)
        if pending:
            chosen = [
                replace(run, dead_letters_pending=pending.get(run.run_id, 0)) for run in chosen
            ]
    return chosen


def runs_json(pipeline: str, runs: Sequence[RunSummary]) -> str:
    """``runs --json``: a format version, the pipeline and one object per run."""
    return json.dumps(
        {
            "format": RUNS_FORMAT,
            "pipeline": pipeline,
            "runs": [{**asdict(run), "params": dict(run.params)} for run in runs],
        },
        indent=2,
    )


def format_duration(seconds: float | None) -> str:
    """``0.25 s``, ``42.0 s``, ``3m05s``, ``2h03m``; empty for ``None``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def runs_table(pipeline: str, runs: Sequence[RunSummary]) -> str:
    """``runs``: one line per run, for a person."""
    if not runs:
        return f"{pipeline}: no runs yet"
    lines = [
        f"{'RUN ID':<24} {'STATE':<12} {'STARTED (UTC)':<20} {'TOOK':>9}  "
        f"{'FAILED STEP':<16} {'DEAD LETTERS':>12}  DETAIL"
    ]
    for run in runs:
        failed = run.failed_step or ("(before steps)" if run.state == "failed" else "")
        detail = run.error_type or run.note
        if run.error_type and run.error:
            detail = f"{run.error_type}: {run.error}"
        lines.append(
            f"{run.run_id:<24} {run.state:<12} {run.started[:19].replace('T', ' '):<20} "
            f"{format_duration(run.duration_s):>9}  {failed:<16} "
            f"{run.dead_letters_pending or '':>12}  {' '.join(detail.split())[:100]}"
        )
    return "\n".join(lines)
