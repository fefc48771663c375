"""``gc``: delete old runs' state and their settled dead letters, to keep a state root that
runs every night from growing forever. The same code for a directory and for object storage:
where the runs are is a ``_history.RunHistory``.

Never deleted: a run whose lock is held (it is running now: the lock - ``flock``, or the lease
on object storage - is taken, without waiting, for the time of the deletion, so no run can
start in it meanwhile), and a pending dead letter (it still needs a replay or a discard; its
envelope holds all a replay needs, so it outlives its run). Settled dead letters
(``replayed``, ``discarded``, ``superseded``) of a deleted run go with it; an unreadable one
stays.

What survives a crash: a run is deleted file by file (``shutil.rmtree``, which never follows a
symbolic link) or object by object (batches of up to 1000; the summary, then the lease, last),
so a crash can leave part of an old run behind - a run that ``runs`` then lists, and that the
next ``gc`` deletes. A dead letter is one file or object, deleted under the dead-letter lock
after reading it again, so a replay in progress is never raced.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._errors import UsageError
from ._history import as_history, list_runs, run_time

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from ._history import RunHistory

__all__ = ["SETTLED", "GcResult", "collect_garbage", "format_size", "gc_report"]

log = logging.getLogger("stalwart.gc")

SETTLED = frozenset({"replayed", "discarded", "superseded"})


@dataclass(slots=True)
class GcResult:
    """What ``gc`` deleted (or, with ``dry_run``, would delete) and what it kept, and why."""

    dry_run: bool
    runs: list[tuple[str, int]] = field(default_factory=list)
    """(run ID, bytes) of each run directory deleted."""
    dead_letters: list[tuple[str, str, int]] = field(default_factory=list)
    """(envelope id, run ID, bytes) of each settled dead letter deleted."""
    locked: list[tuple[str, str]] = field(default_factory=list)
    """(run ID, holder) of each old run kept because a process holds it."""
    pending: list[tuple[str, str]] = field(default_factory=list)
    """(envelope id, run ID) of each pending dead letter of a deleted run, kept."""

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.runs) + sum(size for *_, size in self.dead_letters)


def format_size(n: float) -> str:
    """``512 B``, ``1.2 kB``, ``3.4 MB`` (powers of 1000)."""
    units = ("B", "kB", "MB", "GB", "TB")
    index = 0
    while n >= 1000 and index < len(units) - 1:
        n /= 1000
        index += 1
    return f"{int(n)} B" if index == 0 else f"{n:.1f} {units[index]}"


def _select(
    history: RunHistory,
    step_names: Sequence[str],
    keep_last: int | None,
    older_than_days: float | None,
    now: float,
) -> list[str]:
    """The run IDs old enough to delete, newest first."""
    runs = list_runs(history, step_names, dead_letters=False)
    if keep_last is not None:
        return [run.run_id for run in runs[keep_last:]]
    assert older_than_days is not None  # noqa: S101 - collect_garbage checked it
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - older_than_days * 86400))
    old = []
    for run in runs:
        when = run.finished or run_time(history, run)
        if when and when < cutoff:
            old.append(run.run_id)
    return old


def collect_garbage(
    where: RunHistory | str | os.PathLike[str],
    step_names: Sequence[str],
    *,
    keep_last: int | None = None,
    older_than_days: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> GcResult:
    """Delete the runs of ``where`` (a ``RunHistory``, or a ``<root>/<pipeline>`` directory)
    beyond the newest ``keep_last``, or finished more than ``older_than_days`` ago, and their
    settled dead letters; see the module docstring for what is never deleted."""
    if (keep_last is None) == (older_than_days is None):
        raise UsageError("gc needs exactly one of --keep-last N and --older-than DAYS")
    if keep_last is not None and keep_last < 0:
        raise UsageError(f"--keep-last must be 0 or more, not {keep_last}")
    if older_than_days is not None and not older_than_days >= 0:
        raise UsageError(f"--older-than must be 0 or more days, not {older_than_days}")
    history = as_history(where)
    result = GcResult(dry_run=dry_run)
    chosen = _select(
        history, step_names, keep_last, older_than_days, time.time() if now is None else now
    )
    deleted: set[str] = set()
    for run_id in chosen:
        holder, size = history.remove(run_id, dry_run=dry_run)
        if holder:
            result.locked.append((run_id, holder))
            continue
        result.runs.append((run_id, size))
        deleted.add(run_id)
        if not dry_run:
            log.info("gc: deleted run %s (%s)", run_id, format_size(size))
    if deleted:
        _delete_dead_letters(history, deleted, result)
    return result


def _delete_dead_letters(history: RunHistory, runs: set[str], result: GcResult) -> None:
    store = history.deadletters()
    for envelope in store.list():
        if envelope.run_id not in runs:
            continue
        if envelope.state == "pending":
            result.pending.append((envelope.id, envelope.run_id))
            continue
        if envelope.state not in SETTLED:
            continue  # unreadable: a person should look at it
        if result.dry_run:
            size = store.stored_size(envelope.id)
            result.dead_letters.append((envelope.id, envelope.run_id, size))
            continue
        freed = store.remove_settled(envelope.id, SETTLED)
        if freed is None:  # pragma: no cover - replayed or discarded since it was listed
            continue
        result.dead_letters.append((envelope.id, envelope.run_id, freed))
        log.info("gc: deleted settled dead letter %s of run %s", envelope.id, envelope.run_id)


def gc_report(result: GcResult) -> str:
    """What ``gc`` prints: each deletion, each thing kept and why, and the bytes freed."""
    verb = "would delete" if result.dry_run else "deleted"
    lines = [f"{verb} run {run_id} ({format_size(size)})" for run_id, size in result.runs]
    lines += [
        f"{verb} dead letter {envelope_id} of run {run_id} ({format_size(size)})"
        for envelope_id, run_id, size in result.dead_letters
    ]
    lines += [
        f"kept run {run_id}: it is running now ({holder})" for run_id, holder in result.locked
    ]
    lines += [
        f"kept dead letter {envelope_id} of run {run_id}: pending (replay or discard it)"
        for envelope_id, run_id in result.pending
    ]
    freed = format_size(result.bytes_freed)
    lines.append(
        f"{'would free' if result.dry_run else 'freed'} {freed}: {len(result.runs)} run(s), "
        f"{len(result.dead_letters)} dead letter(s)"
        + (" (dry run: nothing was deleted)" if result.dry_run else "")
    )
    return "\n".join(lines)
