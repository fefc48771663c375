"""`stalwart demo`: the reference pipeline against a flaky local API, as a user first sees it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stalwart._clock import WaitRecorder
from stalwart.cli._demo import find_example
from stalwart.cli._main import run_cli
from stalwart.testing import FlakyServer, Reply


def test_demo_retries_then_succeeds_then_skips(
    tmp_path: Path, no_wait: WaitRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["demo", "--root", str(tmp_path), "--log-format", "json"], pipeline=None)
    assert code == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    retries = [r for r in records if "retrying in" in r["message"]]
    assert [r["step"] for r in retries] == ["fetch", "fetch", "upload"]
    assert no_wait.waits[-1] >= 1.0  # the sink's Retry-After: 1 was honoured
    skips = [r["message"] for r in records if "already done, skipping" in r["message"]]
    assert skips == [f"step {s} already done, skipping" for s in ("fetch", "transform", "upload")]
    report = tmp_path / "daily-report" / "runs" / "demo" / "report.csv"
    assert report.read_text().splitlines()[0] == "id,customer,amount"
    assert "requests the flaky API saw: 5" in out
    assert "done" in out  # the status table


def test_demo_fail_posts_the_alert_to_the_local_receiver(
    tmp_path: Path, no_wait: WaitRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["demo", "--fail", "transform", "--root", str(tmp_path)], pipeline=None)
    assert code == 1
    out = capsys.readouterr().out
    payload = json.loads(
        out.split("Slack payload received by the local webhook receiver:\n")[1].split(
            "\n\nexit code"
        )[0]
    )
    assert "transform" in payload["text"]
    assert payload["blocks"][0]["type"] == "header"
    assert "exit code: 1" in out


def test_demo_interrupt_exits_130_without_alert(
    tmp_path: Path, no_wait: WaitRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["demo", "--interrupt", "transform", "--root", str(tmp_path)], pipeline=None)
    assert code == 130
    out = capsys.readouterr().out
    assert "no alert was sent" in out
    markers = tmp_path / "daily-report" / "runs" / "demo" / ".checkpoints"
    assert sorted(p.name for p in markers.glob("*.done")) == ["fetch.done"]


def test_demo_with_a_real_webhook_does_not_print_a_local_payload(
    tmp_path: Path,
    no_wait: WaitRecorder,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FlakyServer() as slack:
        slack.route("POST", "/hook", Reply(body="ok"))
        monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url("/hook"))
        assert run_cli(["demo", "--fail", "fetch", "--root", str(tmp_path)], pipeline=None) == 1
        assert slack.count("POST", "/hook") == 1
    assert "alerts went to your SLACK_WEBHOOK_URL" in capsys.readouterr().out


def test_demo_unknown_step_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no step 'nope'"):
        run_cli(["demo", "--fail", "nope", "--root", str(tmp_path)], pipeline=None)


def test_the_example_ships_with_the_package() -> None:
    assert find_example().name == "daily_report.py"
