"""A run that fails before its first step (state directory, sweep, clearing markers) is
alerted like a failed step; a usage error or another process holding the run is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import stalwart
from stalwart import Alert, RunLockedError, UsageError
from stalwart._alerts import slack_payload
from stalwart._checkpoint import RunLock
from stalwart.cli._main import run_cli
from stalwart.testing import RecordingAlerter


def pipeline_with(root: Path | str, recorder: RecordingAlerter) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("early", root=root, alerters=[recorder])

    @pipeline.step()
    def only(ctx: stalwart.Context) -> None:
        ctx.write_text("out.txt", "x")

    return pipeline


def test_a_marker_that_cannot_be_cleared_alerts_before_any_step(root: Path) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_with(root, recorder)
    pipeline.run(run_id="r1")
    marker = pipeline.checkpoints("r1").marker_path("only")
    marker.unlink()
    marker.mkdir()  # `--force` must unlink it: EISDIR, for root too

    run = pipeline.start(run_id="r1", force=True)
    assert run.failure is not None
    assert isinstance(run.failure.error, IsADirectoryError)
    assert run.failure.step == ""
    assert run.failure.alert_sent
    with pytest.raises(IsADirectoryError):  # what run() raises for it
        pipeline.run(run_id="r1", force=True)
    # (the second failure repeats the first: one alert per streak)

    [alert] = recorder.alerts
    assert (alert.pipeline, alert.run_id, alert.step) == ("early", "r1", "")
    assert alert.error_type == "IsADirectoryError"
    assert alert.title == "stalwart: early failed before its first step (run r1)"
    assert "--run-id r1" in alert.resume_command
    assert "--run-id r1" in run.failure.resume_command


def test_a_state_root_that_cannot_be_made_alerts(tmp_path: Path) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_with("/proc/stalwart-cannot-be-here", recorder)

    with pytest.raises(OSError):  # noqa: PT011 - whichever errno /proc answers with
        pipeline.run(run_id="r1")

    [alert] = recorder.alerts
    assert alert.step == ""
    assert alert.error_type in ("FileNotFoundError", "PermissionError", "OSError")


def test_the_cli_says_no_step_ran_and_exits_1(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_with(root, recorder)
    pipeline.run(run_id="r1")
    marker = pipeline.checkpoints("r1").marker_path("only")
    marker.unlink()
    marker.mkdir()

    code = run_cli(["--run-id", "r1", "--force", "--log-format", "json"], pipeline=pipeline)

    assert code == 1
    assert len(recorder.alerts) == 1
    last = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert last["exit_code"] == 1
    assert "failed before its first step; no step ran" in last["message"]


def test_usage_errors_and_a_busy_run_are_not_alerted(root: Path) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_with(root, recorder)
    with pytest.raises(UsageError):
        pipeline.run(run_id="../x")
    (root / "file-not-dir").write_text("x")
    with pytest.raises(UsageError):
        pipeline_with(root / "file-not-dir", recorder).run(run_id="r1")
    pipeline.run(run_id="r1")  # creates the run directory
    with RunLock(pipeline.run_dir("r1") / ".lock"), pytest.raises(RunLockedError):
        pipeline.run(run_id="r1")
    assert recorder.alerts == []


def test_slack_and_text_forms_of_a_run_level_alert() -> None:
    alert = Alert(
        pipeline="early",
        run_id="r1",
        step="",
        error_type="PermissionError",
        error="[Errno 13] Permission denied: '/srv/state'",
        attempts=1,
        duration_s=0.01,
        host="h",
    )
    payload = slack_payload(alert)
    assert payload["blocks"][0]["text"]["text"] == alert.title
    fields = [f["text"] for f in payload["blocks"][2]["fields"]]
    assert "*Step*\n(before the first)" in fields
    assert alert.as_text().startswith("stalwart: early failed before its first step (run r1)\n")
