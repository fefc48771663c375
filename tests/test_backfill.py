"""``backfill FROM TO``: every daily run ID in order, finished ones skipped, stopping at the
first failure unless ``--keep-going``, with a summary at the end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_python
from stalwart import Context, Pipeline
from stalwart._errors import UsageError
from stalwart._lock import RunLock
from stalwart.cli._backfill import backfill, daily_run_ids
from stalwart.testing import RecordingAlerter

SCRIPT = REPO / "tests" / "scripts" / "ops_pipeline.py"
DAYS = ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]


def ops(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python([str(SCRIPT), *args], env={"STALWART_ROOT": str(root), **env})


def run_dirs(root: Path) -> list[str]:
    runs = root / "nightly" / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


def test_four_days_stop_at_the_failing_one(root: Path) -> None:
    done = ops(root, "backfill", DAYS[0], DAYS[-1], OPS_FAIL=f"load@{DAYS[2]}")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"backfill {DAYS[0]}..{DAYS[-1]}: 2 succeeded, 0 skipped (already done), 1 failed, "
        "1 not run",
        f"  failed   {DAYS[2]}: ValueError: boom",
        f"  not run  {DAYS[3]} (stopped at the first failure; --keep-going runs the rest)",
    ]
    assert run_dirs(root) == DAYS[:3]  # the day after the failure never started

    # Fixed: the same command skips the finished days and runs the rest.
    again = ops(root, "backfill", DAYS[0], DAYS[-1])
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].endswith(
        "2 succeeded, 2 skipped (already done), 0 failed, 0 not run"
    )
    assert run_dirs(root) == DAYS


def test_keep_going_runs_every_day_and_still_exits_1(root: Path) -> None:
    done = ops(root, "backfill", DAYS[0], DAYS[-1], "--keep-going", OPS_FAIL=f"load@{DAYS[1]}")
    assert done.returncode == 1
    assert "3 succeeded, 0 skipped (already done), 1 failed, 0 not run" in done.stdout
    assert f"failed   {DAYS[1]}: ValueError: boom" in done.stdout
    assert run_dirs(root) == DAYS
    status = ops(root, "runs", "--json")
    assert '"state": "failed"' in status.stdout


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        ("2026-03-02", "2026-03-01", "range is reversed"),
        ("2026-3-1", "2026-03-02", "is not a date: use YYYY-MM-DD"),
        ("2026-02-30", "2026-03-02", "is not a date: day is out of range"),
        ("yesterday", "today", "is not a date"),
    ],
)
def test_a_reversed_or_malformed_range_is_a_usage_error(
    root: Path, first: str, last: str, message: str
) -> None:
    done = ops(root, "backfill", first, last)
    assert done.returncode == 2
    assert message in done.stderr
    assert run_dirs(root) == []


def test_the_days_of_a_range_cross_months_and_leap_days() -> None:
    assert daily_run_ids("2028-02-28", "2028-03-01") == ["2028-02-28", "2028-02-29", "2028-03-01"]
    assert daily_run_ids("2026-01-01", "2026-01-01") == ["2026-01-01"]
    with pytest.raises(UsageError, match="too long"):
        daily_run_ids("1000-01-01", "2999-01-01")


def test_params_reach_every_day_and_a_day_done_with_other_params_runs_again(
    root: Path,
) -> None:
    seen: list[tuple[str, dict[str, str]]] = []
    pipeline = Pipeline("p", root=root, alerters=[RecordingAlerter()])

    @pipeline.step()
    def only(ctx: Context) -> None:
        seen.append((ctx.run_id, dict(ctx.params)))

    assert backfill(pipeline, DAYS[:2], params={"region": "eu"}).succeeded == DAYS[:2]
    assert seen == [(DAYS[0], {"region": "eu"}), (DAYS[1], {"region": "eu"})]
    again = backfill(pipeline, DAYS[:2], params={"region": "eu"})
    assert again.skipped == DAYS[:2]
    other = backfill(pipeline, DAYS[:2], params={"region": "us"})
    assert other.succeeded == DAYS[:2]
    assert seen[-1] == (DAYS[1], {"region": "us"})


def test_a_param_without_a_value_is_a_usage_error(root: Path) -> None:
    bad = ops(root, "backfill", DAYS[0], DAYS[1], "--param", "region")
    assert bad.returncode == 2
    assert "expected KEY=VALUE" in bad.stderr
    assert run_dirs(root) == []


def test_a_run_locked_by_another_process_counts_as_failed(root: Path) -> None:
    pipeline = Pipeline("p", root=root, alerters=[RecordingAlerter()])
    pipeline.step(name="only")(lambda ctx: None)
    pipeline._prepare_state(DAYS[0])
    with RunLock(pipeline.run_dir(DAYS[0]) / ".lock"):
        result = backfill(pipeline, DAYS[:2], keep_going=True)
    assert [run_id for run_id, _ in result.failed] == [DAYS[0]]
    assert "RunLockedError" in result.failed[0][1]
    assert result.succeeded == [DAYS[1]]


def test_a_setting_to_fix_stops_the_backfill_as_a_usage_error(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "not a url")
    pipeline = Pipeline("p", root=root)
    pipeline.step(name="only")(lambda ctx: None)
    with pytest.raises(UsageError, match="SLACK_WEBHOOK_URL"):
        backfill(pipeline, DAYS[:2])


def test_a_usage_error_inside_a_step_fails_that_day_only(root: Path) -> None:
    pipeline = Pipeline("p", root=root, alerters=[RecordingAlerter()])

    @pipeline.step()
    def only(ctx: object) -> None:
        raise UsageError("a step misused the library")

    result = backfill(pipeline, DAYS[:2], keep_going=True)
    assert [run_id for run_id, _ in result.failed] == DAYS[:2]
