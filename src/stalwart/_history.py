"""The history of a pipeline's runs (``runs``), read from the one small summary file the
runner keeps per run (``_run_summary``), so listing thousands of runs reads one small file
per run instead of every marker. A run killed with SIGKILL leaves ``running`` behind with
nobody holding its lock: it is listed as ``interrupted``. A run without a summary (started
by an older stalwart) is described from its journal. Reads only: nothing here writes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ._run_summary import SUMMARY_FILE

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "RunSummary",
    "format_duration",
    "list_runs",
    "read_summary",
    "run_ids",
    "run_time",
    "runs_json",
    "runs_table",
]

log = logging.getLogger("stalwart.history")

RUNS_FORMAT = 1
_MAX_SUMMARY = 1024 * 1024


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


# -- reading -----------------------------------------------------------------------------------


def read_summary(run_dir: str) -> dict[str, Any] | None:
    """The run's summary as written, or ``None`` if it is missing or unreadable."""
    path = os.path.join(run_dir, SUMMARY_FILE)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_SUMMARY + 1)
    except OSError:
        return None
    if len(raw) > _MAX_SUMMARY:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        log.warning("ignoring the unreadable run summary %s", path)
        return None
    return data if isinstance(data, dict) else None


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


def _from_summary(run_id: str, run_dir: str, data: Mapping[str, Any]) -> RunSummary:
    state = _text(data, "state") or "unknown"
    note = ""
    if state == "running":
        from ._lock import lock_holder  # noqa: PLC0415 - only for a run not marked ended

        holder = lock_holder(run_dir)
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


def _from_journal(run_id: str, run_dir: str, step_names: Sequence[str]) -> RunSummary:
    """A run without a summary (an older stalwart wrote it): what its journal says."""
    from ._checkpoint import CheckpointStore  # noqa: PLC0415
    from ._lock import lock_holder  # noqa: PLC0415

    store = CheckpointStore(run_dir)
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
            state = "running" if lock_holder(run_dir) else "interrupted"
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


def _pending_dead_letters(state_dir: str) -> dict[str, int]:
    """Pending dead letters per run ID (an envelope records the run it belongs to)."""
    from ._deadletter import DeadLetterStore  # noqa: PLC0415

    counts: dict[str, int] = {}
    for envelope in DeadLetterStore(os.path.join(state_dir, "deadletter")).list():
        if envelope.state == "pending":
            counts[envelope.run_id] = counts.get(envelope.run_id, 0) + 1
    return counts


def run_ids(state_dir: str) -> list[str]:
    """The run IDs that have a directory under ``<state_dir>/runs`` (any order)."""
    from ._records import NAME_RE  # noqa: PLC0415

    runs_dir = os.path.join(state_dir, "runs")
    try:
        entries = list(os.scandir(runs_dir))
    except FileNotFoundError:
        return []
    return [e.name for e in entries if NAME_RE.match(e.name) and e.is_dir(follow_symlinks=False)]


def run_time(run: RunSummary, run_dir: str) -> str:
    """When the run started (RFC 3339), or its directory's last change if it has no record."""
    if run.started:
        return run.started
    try:  # no recorded start: the directory's change time, in the same format
        import time  # noqa: PLC0415

        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(os.stat(run_dir).st_mtime))
    except OSError:
        return ""


def list_runs(
    state_dir: str,
    step_names: Sequence[str],
    *,
    limit: int | None = None,
    dead_letters: bool = True,
) -> list[RunSummary]:
    """Every run under ``state_dir`` (``<root>/<pipeline>``), newest first; at most ``limit``.

    Reads one summary file per run (the journal for a run that has none) and, with
    ``dead_letters``, the pipeline's dead letters once to count the pending ones per run.
    """
    runs: list[tuple[str, RunSummary]] = []
    for run_id in run_ids(state_dir):
        run_dir = os.path.join(state_dir, "runs", run_id)
        data = read_summary(run_dir)
        run = (
            _from_summary(run_id, run_dir, data)
            if data is not None
            else _from_journal(run_id, run_dir, step_names)
        )
        runs.append((run_time(run, run_dir), run))
    runs.sort(key=lambda pair: (pair[0], pair[1].run_id), reverse=True)
    chosen = [run for _, run in runs[:limit] if limit is None or limit > 0]
    if dead_letters and chosen:
        pending = _pending_dead_letters(state_dir)
        if pending:
            from dataclasses import replace  # noqa: PLC0415

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
