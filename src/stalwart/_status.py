"""``status``: what ran, what failed and why, how long, how many retries - for a person at
3 a.m. (a table) or a machine (``--json``, with a format version)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ._checkpoint import CheckpointStore
from ._flock_table import flock_held
from ._printable import printable
from ._state_files import open_regular

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["StepStatus", "collect", "print_status", "status_json"]

STATUS_FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStatus:
    step: str
    state: str
    """``done``, ``pending``, ``failed``, ``interrupted``, ``running``, ``stale`` (marker
    present but an output is missing or changed) or ``corrupt`` (unreadable marker)."""
    finished: str = ""
    duration_s: float | None = None
    runs: int = 0
    attempts: int = 0
    retries: int = 0
    outputs: tuple[dict[str, Any], ...] = ()
    error: str = ""
    dead_letter_id: str = ""
    note: str = ""


def lock_holder(run_dir: os.PathLike[str] | str) -> str | None:
    """Who holds the run's lock right now (``None`` if nobody). Creates nothing.

    A holder writes a note into the lock file and empties it on release, so an empty note
    means nobody (the lock is not even touched then); a note left by a killed holder is told
    apart from a live one by a non-blocking shared lock, held for microseconds."""
    path = os.path.join(run_dir, ".lock")
    try:  # O_NONBLOCK: a FIFO planted as the lock must not hang status
        fd = open_regular(path)
    except OSError:
        return None
    try:
        note = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if not note:
            return None
        held = flock_held(fd)  # the kernel's lock table: no lock taken, nothing to collide with
        if held is not None:
            return note if held else None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return note
            raise
        return None
    finally:
        os.close(fd)


def collect(pipeline: Pipeline, run_id: str) -> list[StepStatus]:
    store = CheckpointStore(pipeline.run_dir(run_id))
    holder = lock_holder(store.run_dir)
    rows = []
    for name in pipeline.step_names:
        decision = store.check(name, run_id=run_id)
        record = store.read_record(name)
        marker = decision.marker
        if decision.done and marker is not None:
            rows.append(
                StepStatus(
                    step=name,
                    state="done",
                    finished=marker.finished,
                    duration_s=marker.duration_s,
                    runs=marker.runs,
                    attempts=marker.attempts,
                    retries=marker.retries,
                    outputs=tuple(asdict(o) for o in marker.outputs),
                )
            )
            continue
        state = "pending"
        note = ""
        if decision.corrupt:
            state, note = "corrupt", decision.reason
        elif marker is not None:
            state, note = "stale", decision.reason
        elif record.outcome == "running" and holder:
            state, note = "running", holder
        elif record.outcome in ("failed", "interrupted"):
            state = record.outcome
        elif record.outcome == "running":
            state, note = "interrupted", "the process running it died"
        rows.append(
            StepStatus(
                step=name,
                state=state,
                finished=record.finished,
                runs=record.runs,
                attempts=record.attempts,
                retries=record.retries,
                error=f"{record.error_type}: {record.error}" if record.error_type else "",
                dead_letter_id=record.dead_letter_id,
                note=note,
            )
        )
    return rows


def status_json(pipeline: Pipeline, run_id: str) -> str:
    run_dir = pipeline.run_dir(run_id)
    return json.dumps(
        {
            "format": STATUS_FORMAT,
            "pipeline": pipeline.name,
            "run_id": run_id,
            "run_dir": str(run_dir),
            "exists": run_dir.is_dir(),
            "locked_by": lock_holder(run_dir),
            "steps": [asdict(row) for row in collect(pipeline, run_id)],
        },
        indent=2,
    )


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


def print_status(pipeline: Pipeline, run_id: str) -> None:
    run_dir = pipeline.run_dir(run_id)
    print(f"{pipeline.name}, run {run_id}  ({run_dir})")
    if not run_dir.is_dir():
        runs_dir = run_dir.parent
        others = sorted(p.name for p in runs_dir.iterdir()) if runs_dir.is_dir() else []
        print(
            "  this run has not started yet"
            + (f"; other runs: {printable(', '.join(others[-5:]))}" if others else "")
        )
    holder = lock_holder(run_dir)
    if holder:
        print(f"  running now: {printable(holder)}")
    print(
        f"  {'STEP':<16} {'STATE':<11} {'FINISHED (UTC)':<20} {'TOOK':>8} {'RUNS':>4} "
        f"{'ATTEMPTS':>8} {'RETRIES':>7}  DETAIL"
    )
    for row in collect(pipeline, run_id):
        took = f"{row.duration_s:.2f} s" if row.duration_s is not None else ""
        finished = row.finished[:19].replace("T", " ")
        if row.state == "done":
            detail = ", ".join(f"{o['name']} ({_size(int(o['size']))})" for o in row.outputs)
        else:
            detail = row.error or row.note
            if row.dead_letter_id:
                detail += f" [dead letter {row.dead_letter_id}]"
        detail = printable(detail)
        print(
            f"  {row.step:<16} {row.state:<11} {finished:<20} {took:>8} {row.runs or '':>4} "
            f"{row.attempts or '':>8} {row.retries if row.runs else '':>7}  {detail}"
        )
