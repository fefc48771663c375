"""Alert hygiene: a failure that repeats (same step, same error type) in consecutive runs
alerts once per streak; the first success after it sends a recovery notice; a malformed
``SLACK_WEBHOOK_URL`` is a usage error before any step."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_python
from stalwart import Pipeline
from stalwart._alerts import SlackWebhook, slack_payload
from stalwart._errors import UsageError
from stalwart.testing import FlakyServer, RecordingAlerter, Reply

SCRIPT = REPO / "tests" / "scripts" / "ops_pipeline.py"


def ops(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python([str(SCRIPT), *args], env={"STALWART_ROOT": str(root), **env})


def test_three_failing_runs_alert_once_and_the_next_success_sends_a_recovery(
    root: Path,
) -> None:
    with FlakyServer() as slack:
        slack.route("POST", "/hook", Reply(body="ok"))
        hook = {"SLACK_WEBHOOK_URL": slack.url("/hook")}
        for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
            failed = ops(root, "--run-id", day, OPS_FAIL="load", **hook)
            assert failed.returncode == 1
        [alert] = slack.requests_for("POST", "/hook")
        assert "failed at step load (run 2026-11-01)" in alert.json()["text"]
        assert "will not alert again until a run succeeds" in json.dumps(alert.json())
        assert "the 3rd failed run in a row" in failed.stderr  # said in the log instead

        assert ops(root, "--run-id", "2026-11-04", **hook).returncode == 0
        alert, recovery = slack.requests_for("POST", "/hook")
        text = recovery.json()["text"]
        assert text.startswith(":white_check_mark: stalwart: nightly recovered (run 2026-11-04)")
        assert "after 3 failed runs in a row (runs 2026-11-01 to 2026-11-03" in text
        assert "failing at step load with ValueError" in text

        assert ops(root, "--run-id", "2026-11-05", **hook).returncode == 0
        assert slack.count("POST", "/hook") == 2  # a success after a success: nothing to say
        assert not (root / "nightly" / ".alert-streak.json").exists()


def pipeline_that_fails(root: Path | str, recorder: RecordingAlerter) -> Pipeline:
    """Step ``a`` raises the exception class named in ``plan`` for each run, if any."""
    pipeline = Pipeline("streaky", root=root, alerters=[recorder])

    @pipeline.step()
    def a(ctx: object) -> None:
        error = PLAN.pop(0)
        if error is not None:
            raise error("it broke")

    return pipeline


PLAN: list[type[BaseException] | None] = []


def run(pipeline: Pipeline, run_id: str, error: type[BaseException] | None) -> None:
    PLAN[:] = [error]
    if error is None:
        pipeline.run(run_id=run_id)
    else:
        with pytest.raises(error):
            pipeline.run(run_id=run_id)


def test_a_different_failure_starts_a_new_streak_and_interrupts_change_nothing(
    root: Path,
) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_that_fails(root, recorder)
    run(pipeline, "r1", ValueError)
    run(pipeline, "r2", KeyboardInterrupt)  # neither extends nor ends the streak
    run(pipeline, "r3", ValueError)
    assert [a.error_type for a in recorder.alerts] == ["ValueError"]
    run(pipeline, "r4", KeyError)  # another error type: a new streak, a new alert
    run(pipeline, "r5", KeyError)
    assert [(a.kind, a.error_type, a.run_id) for a in recorder.alerts] == [
        ("failure", "ValueError", "r1"),
        ("failure", "KeyError", "r4"),
    ]
    run(pipeline, "r6", None)
    recovery = recorder.last
    assert (recovery.kind, recovery.streak, recovery.run_id) == ("recovery", 2, "r6")
    assert recovery.title == "stalwart: streaky recovered (run r6)"
    assert recovery.as_text().splitlines()[1] == (
        "run r6 succeeded after 2 failed runs in a row (runs r4 to r5; failing at step a with "
        "KeyError)"
    )
    payload = slack_payload(recovery)
    assert payload["blocks"][0]["text"]["text"] == recovery.title


def test_a_resumed_run_that_fails_the_same_way_is_part_of_the_streak(root: Path) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_that_fails(root, recorder)
    run(pipeline, "r1", ValueError)
    run(pipeline, "r1", ValueError)
    assert len(recorder) == 1
    run(pipeline, "r1", None)
    assert (
        recorder.last.as_text()
        .splitlines()[1]
        .startswith("run r1 succeeded after 2 failed runs in a row (run r1;")
    )


def test_an_unreadable_streak_state_means_alert(root: Path) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_that_fails(root, recorder)
    run(pipeline, "r1", ValueError)
    (root / "streaky" / ".alert-streak.json").write_text("{torn")
    run(pipeline, "r2", ValueError)
    assert len(recorder) == 2  # when in doubt, alert
    (root / "streaky" / ".alert-streak.json").write_text("[]")
    run(pipeline, "r3", None)
    assert len(recorder) == 2  # no streak to recover from: no notice


def test_a_run_that_fails_before_its_first_step_has_its_own_streak(root: Path) -> None:
    recorder = RecordingAlerter()
    pipeline = pipeline_that_fails(root, recorder)
    run(pipeline, "r1", None)
    marker = pipeline.checkpoints("r1").marker_path("a")
    marker.unlink()
    marker.mkdir()  # --force cannot clear it: fails before any step
    for _ in range(2):
        with pytest.raises(IsADirectoryError):
            pipeline.run(run_id="r1", force=True)
    assert [(a.step, a.error_type) for a in recorder.alerts] == [("", "IsADirectoryError")]
    marker.rmdir()
    run(pipeline, "r1", None)
    assert recorder.last.as_text().endswith(
        "(run r1; failing before its first step with IsADirectoryError)"
    )


@pytest.mark.parametrize(
    "url",
    [
        "hooks.slack.com/services/T0/B0/secret-part",
        "ftp://hooks.slack.com/services/secret-part",
        "https:///services/secret-part",
        "https://hooks.slack.com:port/secret-part",
        "https://hooks.slack.com/services/secret part",
    ],
)
def test_a_malformed_webhook_url_is_exit_2_before_any_step(root: Path, url: str) -> None:
    done = ops(root, "--run-id", "r1", SLACK_WEBHOOK_URL=url)
    assert done.returncode == 2
    assert "SLACK_WEBHOOK_URL is set but is not an http(s) URL" in done.stderr
    assert "secret-part" not in done.stderr
    assert not (root / "nightly").exists()  # no step ran, nothing was made


def test_well_formed_or_unset_webhook_settings_pass() -> None:
    assert SlackWebhook.from_env({}) is None
    assert SlackWebhook.from_env({"SLACK_WEBHOOK_URL": "  "}) is None
    assert SlackWebhook.from_env({"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x"})
    assert SlackWebhook.from_env({"SLACK_WEBHOOK_URL": "http://127.0.0.1:8080/hook"})
    with pytest.raises(UsageError, match="no host name"):
        SlackWebhook.from_env({"SLACK_WEBHOOK_URL": "https://"})


def test_explicit_alerters_ignore_the_variable(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "not-a-url")
    recorder = RecordingAlerter()
    pipeline = pipeline_that_fails(root, recorder)
    run(pipeline, "r1", None)  # alerters= replaces the defaults: the variable is not read
