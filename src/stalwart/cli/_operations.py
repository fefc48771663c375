"""The commands for operating many runs: ``runs``, ``report``, ``gc`` and ``backfill``, on
any state root: where the runs are is the pipeline's ``history()`` (``_history.RunHistory``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import UsageError

if TYPE_CHECKING:
    import argparse
    from typing import TextIO

    from .._pipeline import Pipeline

__all__ = ["OPERATIONS", "operations_command"]

OPERATIONS = ("runs", "report", "gc", "backfill")
EXIT_OK = 0
EXIT_FAILED = 1


def operations_command(args: argparse.Namespace, pipeline: Pipeline, err: TextIO) -> int:
    """Do ``runs``, ``report``, ``gc`` or ``backfill``; return the exit code."""
    if args.command == "runs":
        return _runs(args, pipeline)
    if args.command == "report":
        return _report(args, pipeline)
    if args.command == "gc":
        return _gc(args, pipeline)
    return _backfill(args, pipeline)


def _runs(args: argparse.Namespace, pipeline: Pipeline) -> int:
    from .._history import list_runs, runs_json, runs_table  # noqa: PLC0415

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be 1 or more, not {args.limit}")
    runs = list_runs(pipeline.history(), pipeline.step_names, limit=args.limit)
    print(runs_json(pipeline.name, runs) if args.json else runs_table(pipeline.name, runs))
    return EXIT_OK


def _report(args: argparse.Namespace, pipeline: Pipeline) -> int:
    from .._history import list_runs  # noqa: PLC0415
    from .._records import validate_name  # noqa: PLC0415
    from ._report import write_report  # noqa: PLC0415

    history = pipeline.history()
    run_id = args.run_id
    if run_id is None:
        newest = list_runs(history, pipeline.step_names, limit=1, dead_letters=False)
        if not newest:
            raise UsageError(f"{pipeline.name} has no runs yet: nothing to report")
        run_id = newest[0].run_id
    validate_name(run_id, "run ID")
    if not history.exists(run_id):
        raise UsageError(f"{pipeline.name} has no run {run_id!r} (see 'runs')")
    output = args.output or f"{pipeline.name}-{run_id}.html"
    write_report(pipeline, run_id, output)
    print(f"wrote the report of run {run_id} to {output}")
    return EXIT_OK


def _gc(args: argparse.Namespace, pipeline: Pipeline) -> int:
    from .._retention import collect_garbage, gc_report  # noqa: PLC0415

    result = collect_garbage(
        pipeline.history(),
        pipeline.step_names,
        keep_last=args.keep_last,
        older_than_days=args.older_than,
        dry_run=args.dry_run,
    )
    print(gc_report(result))
    return EXIT_OK


def _backfill(args: argparse.Namespace, pipeline: Pipeline) -> int:
    from ._backfill import backfill, daily_run_ids  # noqa: PLC0415

    run_ids = daily_run_ids(args.first, args.last)
    result = backfill(pipeline, run_ids, params=dict(args.param), keep_going=args.keep_going)
    print(result.summary(args.first, args.last))
    return EXIT_OK if result.ok else EXIT_FAILED
