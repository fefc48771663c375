"""``status``: what ran, what failed and why, how long, how many retries - for a person at
3 a.m. (a table) or a machine (``--json``, with a format version)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .._map import checkpoint_item_counts
from .._printable import printable

if TYPE_CHECKING:
    from .._pipeline import Pipeline

__all__ = ["StepStatus", "collect", "print_status", "status_json"]

STATUS_FORMAT = 1
_OTHER_RUNS = 5  # runs named when the one asked for has not started
_DETAIL_WIDTH = 60  # a longer list of outputs goes one per line


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
    params: dict[str, str] | None = None
    """The run parameters the step ran with (done steps only)."""
    items: dict[str, int] | None = None
    """A map step's items: ``total``, ``done``, ``failed``, ``skipped``, ``pending``."""


def collect(pipeline: Pipeline, run_id: str) -> list[StepStatus]:
    store = pipeline.checkpoints(run_id)
    holder = pipeline._holder(run_id)
    rows = []
    for name in pipeline.step_names:
        decision = store.check(name, run_id=run_id)
        record = store.read_record(name)
        marker = decision.marker
        counts = checkpoint_item_counts(store, name)
        items = {**counts._asdict(), "pending": counts.pending} if counts else None
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
                    outputs=tuple(o._asdict() for o in marker.outputs),
                    params=dict(marker.params),
                    items=items,
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
                items=items,
            )
        )
    return rows


def _exists(pipeline: Pipeline, run_id: str) -> bool:
    if pipeline._remote:
        return pipeline.checkpoints(run_id).exists()  # type: ignore[attr-defined, no-any-return]
    return pipeline.run_dir(run_id).is_dir()


def _shown(pipeline: Pipeline, run_id: str) -> str:
    return pipeline.checkpoints(run_id)._run_dir


def _other_runs(pipeline: Pipeline) -> list[str]:
    if pipeline._remote:
        prefix = f"{pipeline.name}/runs/"
        keys = pipeline._state_store().list_keys(prefix)
        return sorted({key[len(prefix) :].partition("/")[0] for key in keys})
    runs_dir = pipeline.state_dir / "runs"
    return sorted(p.name for p in runs_dir.iterdir()) if runs_dir.is_dir() else []


def run_params(rows: list[StepStatus]) -> dict[str, str]:
    """The parameters of the run, as its latest finished step recorded them."""
    done = [row for row in rows if row.params is not None]
    return dict(max(done, key=lambda row: row.finished).params or {}) if done else {}


def status_json(pipeline: Pipeline, run_id: str) -> str:
    rows = collect(pipeline, run_id)
    return json.dumps(
        {
            "format": STATUS_FORMAT,
            "pipeline": pipeline.name,
            "run_id": run_id,
            "run_dir": _shown(pipeline, run_id),
            "exists": _exists(pipeline, run_id),
            "locked_by": pipeline._holder(run_id),
            "params": run_params(rows),
            "steps": [asdict(row) for row in rows],
        },
        indent=2,
    )


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


def item_summary(items: dict[str, int]) -> str:
    """``items: 950 done / 30 failed / 20 pending of 1000`` (``, 2 skipped`` if any)."""
    shown = (
        f"items: {items['done']} done / {items['failed']} failed / {items['pending']} "
        f"pending of {items['total']}"
    )
    return shown + (f", {items['skipped']} skipped" if items["skipped"] else "")


def print_status(pipeline: Pipeline, run_id: str) -> None:
    print(f"{pipeline.name}, run {run_id}  ({_shown(pipeline, run_id)})")
    if not _exists(pipeline, run_id):
        others = _other_runs(pipeline)
        shown = others[-_OTHER_RUNS:]
        cut = f" (the last {len(shown)} of {len(others)})" if len(others) > len(shown) else ""
        print(
            "  this run has not started yet"
            + (f"; other runs{cut}: {printable(', '.join(shown))}" if others else "")
        )
    holder = pipeline._holder(run_id)
    if holder:
        print(f"  running now: {printable(holder)}")
    rows = collect(pipeline, run_id)
    params = run_params(rows)
    if params:
        print(printable("  params: " + ", ".join(f"{k}={v}" for k, v in sorted(params.items()))))
    print(
        f"  {'STEP':<16} {'STATE':<11} {'FINISHED (UTC)':<20} {'TOOK':>8} {'RUNS':>4} "
        f"{'ATTEMPTS':>8} {'RETRIES':>7}  DETAIL"
    )
    for row in rows:
        took = f"{row.duration_s:.2f} s" if row.duration_s is not None else ""
        finished = row.finished[:19].replace("T", " ")
        more: list[str] = []
        if row.state == "done":
            outputs = [f"{o['name']} ({_size(int(o['size']))})" for o in row.outputs]
            detail = ", ".join(outputs)
            if len(outputs) > 1 and len(detail) > _DETAIL_WIDTH:  # one per line, below
                detail, more = f"{len(outputs)} outputs:", outputs
        else:
            detail = row.error or row.note
            if row.dead_letter_id:
                detail += f" [dead letter {row.dead_letter_id}]"
        if row.items is not None:
            detail = f"{item_summary(row.items)}; {detail}" if detail else item_summary(row.items)
        detail = printable(detail)
        print(
            f"  {row.step:<16} {row.state:<11} {finished:<20} {took:>8} {row.runs or '':>4} "
            f"{row.attempts or '':>8} {row.retries if row.runs else '':>7}  {detail}"
        )
        for line in more:
            print(f"  {'':<16} {'':<11}   {printable(line)}")
