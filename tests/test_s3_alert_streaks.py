"""Alert hygiene on an ``s3://`` root (moto's S3 on loopback), as on a local root: a failure
that repeats alerts once per streak, the first success after it sends a recovery notice, an
unreadable streak means alert; the streak is versions created once each, never overwritten."""

from __future__ import annotations

import json

from s3support import S3Server, objects
from stalwart import Pipeline
from stalwart._remote_state import open_store
from stalwart.cli._backfill import backfill
from stalwart.testing import RecordingAlerter
from test_alert_streaks import pipeline_that_fails, run


def streak_versions(s3_server: S3Server, s3_root: str, pipeline: str) -> list[bytes]:
    """The streak's versions on the store, oldest first."""
    prefix = f"{pipeline}/.alert-streak/"
    found = objects(s3_server, s3_root)
    return [found[key] for key in sorted(found) if key.startswith(prefix)]


def test_three_failing_runs_on_s3_alert_once_and_a_success_sends_a_recovery(
    s3_server: S3Server, s3_root: str
) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_that_fails(s3_root, recorder)
    for run_id in ("r1", "r2", "r3"):
        run(pipeline, run_id, ValueError)
    assert [(a.kind, a.run_id) for a in recorder.alerts] == [("failure", "r1")]
    versions = streak_versions(s3_server, s3_root, "streaky")
    assert [json.loads(v)["count"] for v in versions] == [1, 2, 3]  # one version per failure

    run(pipeline, "r4", None)
    recovery = recorder.last
    assert (recovery.kind, recovery.streak, recovery.run_id) == ("recovery", 3, "r4")
    assert recovery.as_text().splitlines()[1] == (
        "run r4 succeeded after 3 failed runs in a row (runs r1 to r3; failing at step a with "
        "ValueError)"
    )
    assert streak_versions(s3_server, s3_root, "streaky")[-1] == b""  # closed
    run(pipeline, "r5", None)
    assert len(recorder) == 2  # a success after a success: nothing to say, nothing written
    assert len(streak_versions(s3_server, s3_root, "streaky")) == 4


def test_on_s3_a_different_failure_starts_a_new_streak_and_interrupts_change_nothing(
    s3_root: str,
) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_that_fails(s3_root, recorder)
    run(pipeline, "r1", ValueError)
    run(pipeline, "r2", KeyboardInterrupt)  # neither extends nor ends the streak
    run(pipeline, "r3", ValueError)
    run(pipeline, "r4", KeyError)  # another error type: a new streak, a new alert
    run(pipeline, "r5", KeyError)
    assert [(a.kind, a.error_type, a.run_id) for a in recorder.alerts] == [
        ("failure", "ValueError", "r1"),
        ("failure", "KeyError", "r4"),
    ]
    run(pipeline, "r6", None)
    assert (recorder.last.kind, recorder.last.streak) == ("recovery", 2)


def test_an_unreadable_streak_on_s3_means_alert(s3_root: str) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_that_fails(s3_root, recorder)
    run(pipeline, "r1", ValueError)
    open_store(s3_root).write("streaky/.alert-streak/000000000002", b"{torn")
    run(pipeline, "r2", ValueError)
    assert len(recorder) == 2  # when in doubt, alert
    open_store(s3_root).write("streaky/.alert-streak/000000000004", b'{"count": "x"}')
    run(pipeline, "r3", None)
    assert len(recorder) == 2  # no streak to recover from: no notice


def test_a_backfill_on_s3_failing_the_same_way_every_day_alerts_once(s3_root: str) -> None:
    recorder = RecordingAlerter()
    pipeline = Pipeline("daily", root=s3_root, alerters=[recorder])

    @pipeline.step()
    def load(ctx: object) -> None:
        raise ConnectionRefusedError("the warehouse is down")

    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    result = backfill(pipeline, days, keep_going=True)
    assert [run_id for run_id, _error in result.failed] == days
    assert [(a.kind, a.run_id) for a in recorder.alerts] == [("failure", "2026-11-01")]
