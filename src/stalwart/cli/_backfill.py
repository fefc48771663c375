"""``backfill FROM TO``: run every daily run ID (``YYYY-MM-DD``) from FROM to TO, inclusive,
in order, in this process; a run whose steps are all done is skipped. It stops at the first
failure unless ``keep_going``; the result says what happened to each day.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING

from .._errors import RunLockedError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._pipeline import Pipeline

__all__ = ["BackfillResult", "backfill", "daily_run_ids"]

log = logging.getLogger("stalwart.backfill")

_DATE_RE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")
MAX_DAYS = 36600  # a hundred years: a typo, not a backfill, beyond this


def _day(text: str, what: str) -> date:
    if not _DATE_RE.match(text):
        raise UsageError(f"backfill {what} {text!r} is not a date: use YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"backfill {what} {text!r} is not a date: {exc}") from None


def daily_run_ids(first: str, last: str) -> list[str]:
    """``2026-11-01``, ``2026-11-02``, ... ``last``; ``UsageError`` for a malformed or
    reversed range."""
    start, end = _day(first, "FROM"), _day(last, "TO")
    if end < start:
        raise UsageError(f"backfill range is reversed: {first} is after {last} (FROM comes first)")
    days = (end - start).days + 1
    if days > MAX_DAYS:
        raise UsageError(f"backfill range {first}..{last} is {days} days long: too long")
    return [(start + timedelta(days=n)).isoformat() for n in range(days)]


@dataclass(slots=True)
class BackfillResult:
    """Each day's fate, in order."""

    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(run ID, ``ErrorType: message``)."""
    not_run: list[str] = field(default_factory=list)
    """Days after a failure, without ``keep_going``."""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run

    def summary(self, first: str, last: str) -> str:
        lines = [
            f"backfill {first}..{last}: {len(self.succeeded)} succeeded, "
            f"{len(self.skipped)} skipped (already done), {len(self.failed)} failed, "
            f"{len(self.not_run)} not run"
        ]
        lines += [f"  failed   {run_id}: {error}" for run_id, error in self.failed]
        if self.not_run:
            lines.append(
                f"  not run  {', '.join(self.not_run)} (stopped at the first failure; "
                "--keep-going runs the rest)"
            )
        return "\n".join(lines)


def _finished(pipeline: Pipeline, run_id: str, params: Mapping[str, str]) -> bool:
    """Every step has a valid marker, recorded with these parameters (else the run would
    run it again)."""
    store = pipeline.checkpoints(run_id)
    for name in pipeline.step_names:
        decision = store.check(name, run_id=run_id)
        if not decision.done or decision.marker is None or dict(decision.marker.params) != params:
            return False
    return True


def backfill(
    pipeline: Pipeline,
    run_ids: Sequence[str],
    *,
    params: Mapping[str, str] | None = None,
    keep_going: bool = False,
) -> BackfillResult:
    """Run ``pipeline`` for each of ``run_ids`` in order (see the module docstring), with
    ``params`` as each run's parameters. A setting to fix (``UsageError``) stops it all, as
    does an interrupt; a run locked by another process counts as failed."""
    result = BackfillResult()
    wanted = dict(params or {})
    for index, run_id in enumerate(run_ids):
        if _finished(pipeline, run_id, wanted):
            log.info("backfill: run %s is already done, skipping", run_id)
            result.skipped.append(run_id)
            continue
        try:
            run = pipeline.start(run_id=run_id, params=wanted)
        except RunLockedError as exc:
            result.failed.append((run_id, f"{type(exc).__name__}: {exc}"))
        else:
            if run.failure is None:
                result.succeeded.append(run_id)
                continue
            result.failed.append((run_id, f"{run.failure.error_type}: {run.failure.message}"))
        if not keep_going:
            result.not_run = list(run_ids[index + 1 :])
            break
    return result
