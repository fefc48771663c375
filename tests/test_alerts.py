"""Alerts: the Slack payload, a webhook that is down/slow/rate-limited, and who gets alerted.

The webhook is a ``FlakyServer`` route; a dead webhook must never change the exit code (1)
nor hide the step's own error; an interrupt (Ctrl-C, SIGTERM) must never alert.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stalwart
from stalwart import Alert, SlackWebhook, UsageError
from stalwart._alerts import LogAlerter, send_all, slack_payload
from stalwart._clock import WaitRecorder
from stalwart.cli._main import run_cli
from stalwart.testing import FlakyServer, RecordingAlerter, Reply

HOOK = "/services/T0001/B0001/hooksecret0001"


def make_alert(**changes: object) -> Alert:
    fields: dict[str, object] = {
        "pipeline": "daily-report",
        "run_id": "2026-11-28",
        "step": "upload",
        "error_type": "HttpStatusError",
        "error": "POST http://sink/reports -> 503 Service Unavailable: 'busy'",
        "attempts": 5,
        "duration_s": 7.25,
        "host": "batch-1",
        "resume_command": "python daily_report.py --run-id 2026-11-28",
    }
    fields.update(changes)
    return Alert(**fields)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    with FlakyServer() as flaky:
        yield flaky


# -- the payload -------------------------------------------------------------------------------


def test_payload_content_and_block_types() -> None:
    payload = slack_payload(make_alert(dead_letter_id="dl-1", replay_command="replay dl-1"))
    assert set(payload) == {"text", "blocks"}
    blocks = payload["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "section", "section"]
    assert blocks[0]["text"] == {
        "type": "plain_text",
        "text": "stalwart: daily-report failed at step upload (run 2026-11-28)",
    }
    error = blocks[1]["text"]["text"]
    assert blocks[1]["text"]["type"] == "mrkdwn"
    assert error == (
        "*HttpStatusError*\n```POST http://sink/reports -&gt; 503 Service Unavailable: 'busy'```"
    )
    facts = [f["text"] for f in blocks[2]["fields"]]
    assert facts == [
        "*Pipeline*\ndaily-report",
        "*Run*\n2026-11-28",
        "*Step*\nupload",
        "*Attempts*\n5",
        "*Duration*\n7.2 s",
        "*Host*\nbatch-1",
    ]
    actions = blocks[3]["text"]["text"]
    assert "*Dead letter* `dl-1`: replay with `replay dl-1`" in actions
    assert "*Resume* with `python daily_report.py --run-id 2026-11-28`" in actions
    assert payload["text"].startswith(":rotating_light: stalwart: daily-report failed at step")
    assert "503 Service Unavailable" in payload["text"]
    json.dumps(payload)  # serialisable as is


def test_payload_without_resume_or_dead_letter_has_three_blocks() -> None:
    payload = slack_payload(make_alert(resume_command="", error=""))
    assert [b["type"] for b in payload["blocks"]] == ["header", "section", "section"]
    assert "(no message)" in payload["blocks"][1]["text"]["text"]


def test_payload_respects_slack_limits_with_a_huge_error() -> None:
    huge = "Traceback <frame> & more " * 2000  # 50,000 characters that all need escaping
    payload = slack_payload(make_alert(error=huge, pipeline="p" * 300, error_type="E" * 500))
    header = payload["blocks"][0]["text"]["text"]
    assert len(header) <= 150
    assert header.endswith("…")
    for block in payload["blocks"][1:]:
        if "text" in block:
            assert len(block["text"]["text"]) <= 3000
        for field in block.get("fields", []):
            assert len(field["text"]) <= 2000
    section = payload["blocks"][1]["text"]["text"]
    assert section.endswith("…```")
    assert len(section) > 2500  # the room is used, not wasted
    assert len(payload["text"]) <= 4000


@settings(max_examples=200, deadline=None)
@given(error=st.text(alphabet="&<>`ab \n", max_size=4000))
def test_cut_never_breaks_an_escape_or_the_fence(error: str) -> None:
    section = slack_payload(make_alert(error=error))["blocks"][1]["text"]["text"]
    assert len(section) <= 3000
    body = section.split("\n", 1)[1]
    assert body.startswith("```")
    assert body.endswith("```")
    assert "```" not in body[3:-3]
    inner = body[3:-3]
    for piece in inner.split("&")[1:]:
        assert piece.startswith(("amp;", "lt;", "gt;"))


def test_alert_as_text_and_dict() -> None:
    alert = make_alert(dead_letter_id="dl-9", replay_command="stalwart deadletter replay dl-9")
    text = alert.as_text()
    assert text.splitlines()[0] == alert.title
    assert "attempts: 5; ran 7.2 s on batch-1" in text
    assert "dead letter: dl-9 (replay: stalwart deadletter replay dl-9)" in text
    assert "resume: python daily_report.py --run-id 2026-11-28" in text
    assert alert.to_dict()["dead_letter_id"] == "dl-9"
    plain = make_alert(resume_command="").as_text()
    assert len(plain.splitlines()) == 3
    assert "dead letter" not in plain


# -- SlackWebhook against a real server --------------------------------------------------------


def test_webhook_posts_the_payload(server: FlakyServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stalwart")
    server.route("POST", HOOK, Reply(body="ok"))
    alert = make_alert()
    SlackWebhook(server.url(HOOK)).send(alert)
    (request,) = server.requests_for("POST", HOOK)
    assert request.headers["content-type"] == "application/json"
    assert request.json() == slack_payload(alert)
    assert "Slack alert sent for daily-report/upload" in caplog.text
    assert "hooksecret0001" not in caplog.text


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(([Reply(status=500)], 3, 2), id="500-forever"),
        pytest.param(([Reply(status=503), Reply(body="ok")], 2, 1), id="503-then-ok"),
        pytest.param(([Reply(status=400, body="invalid_payload")], 1, 0), id="400-not-retried"),
        pytest.param(([Reply(status=404, body="no_service")], 1, 0), id="404-not-retried"),
        pytest.param(([Reply(body="not ok")], 1, 0), id="200-without-ok"),
        pytest.param(([Reply(status=429, headers={"Retry-After": "4"})], 3, 2), id="429"),
        pytest.param(
            ([Reply(status=429, headers={"Retry-After": "3600"})], 1, 0), id="429-beyond-budget"
        ),
    ],
)
def test_webhook_failures_are_retried_briefly_and_never_raise(
    server: FlakyServer,
    no_wait: WaitRecorder,
    caplog: pytest.LogCaptureFixture,
    case: tuple[list[Reply], int, int],
) -> None:
    replies, requests, waits = case
    caplog.set_level(logging.INFO, logger="stalwart")
    server.route("POST", HOOK, replies)
    SlackWebhook(server.url(HOOK)).send(make_alert())  # never raises
    assert server.count("POST", HOOK) == requests
    assert len(no_wait) == waits
    assert no_wait.total <= 30.0
    delivered = replies[-1].status == 200 and replies[-1].body == "ok"
    assert ("Slack alert sent" in caplog.text) is delivered
    assert ("was not delivered" in caplog.text) is not delivered
    assert "hooksecret0001" not in caplog.text
    if "Retry-After" in replies[0].headers and waits:
        assert min(no_wait.waits) >= 4.0


def test_webhook_that_hangs_times_out(server: FlakyServer, no_wait: WaitRecorder) -> None:
    server.route("POST", HOOK, Reply(body="ok", delay=10.0))
    SlackWebhook(server.url(HOOK), timeout=0.2, attempts=2).send(make_alert())
    assert server.count("POST", HOOK) == 2


def test_webhook_that_refuses_connections(
    no_wait: WaitRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    with FlakyServer() as gone:
        url = gone.url(HOOK)
    SlackWebhook(url).send(make_alert())
    assert len(no_wait) == 2
    assert "ConnectError talking to the Slack webhook" in caplog.text
    assert "hooksecret0001" not in caplog.text


def test_webhook_with_an_unusable_url_logs_and_returns(caplog: pytest.LogCaptureFixture) -> None:
    SlackWebhook("http://[::1/hooksecret0002").send(make_alert())
    assert "InvalidURL talking to the Slack webhook" in caplog.text
    assert "hooksecret0002" not in caplog.text


def test_a_bug_while_sending_is_logged_with_its_traceback(
    server: FlakyServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.route("POST", HOOK, Reply(body="ok"))
    broken = make_alert(duration_s="seven")  # not a number: the payload cannot be built
    SlackWebhook(server.url(HOOK)).send(broken)
    (record,) = [r for r in caplog.records if "was not delivered" in r.getMessage()]
    assert record.exc_info is not None
    assert server.count("POST", HOOK) == 0


def test_webhook_configuration() -> None:
    hook = SlackWebhook("https://hooks.slack.com/services/T/B/secretvalue")
    assert repr(hook) == "SlackWebhook(url='***')"
    assert hook.policy.deadline == 20.0
    with pytest.raises(UsageError, match="http"):
        SlackWebhook("hooks.slack.com/services/x")
    with pytest.raises(UsageError, match="timeout"):
        SlackWebhook("https://hooks.slack.com/x", timeout=60.0)


def test_from_env(caplog: pytest.LogCaptureFixture) -> None:
    assert SlackWebhook.from_env({}) is None
    assert SlackWebhook.from_env({"SLACK_WEBHOOK_URL": "  "}) is None
    assert isinstance(
        SlackWebhook.from_env({"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/a/b/c"}),
        SlackWebhook,
    )
    for malformed in ("xoxb-not-a-url-secret", "https://"):
        with pytest.raises(UsageError, match="not an http\\(s\\) URL") as info:
            SlackWebhook.from_env({"SLACK_WEBHOOK_URL": malformed})
        assert "xoxb-not-a-url-secret" not in str(info.value)
    assert "xoxb-not-a-url-secret" not in caplog.text


def test_log_alerter_and_send_all(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def send(self, alert: Alert) -> None:
            raise RuntimeError("alerter bug")

    recorder = RecordingAlerter()
    alert = make_alert()
    send_all([Broken(), LogAlerter(), recorder], alert)
    assert recorder.alerts == [alert]  # the broken one did not stop the others
    assert "alerter" in caplog.text
    assert "RuntimeError: alerter bug" in caplog.text
    (record,) = [r for r in caplog.records if r.getMessage().startswith("ALERT ")]
    assert record.levelno == logging.ERROR
    assert record.__dict__["attempts"] == 5
    assert record.getMessage() == f"ALERT {alert.title}: HttpStatusError: {alert.error}"


# -- the runner: alert on failure, exit 1, original error wins ---------------------------------


def _failing_pipeline(root: Path, alerters: list[stalwart.Alerter] | None) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("t", root=root, alerters=alerters, metrics=[])

    @pipeline.step()
    def transform(ctx: stalwart.Context) -> None:
        raise ValueError("orders.json is not a list")

    return pipeline


def test_a_failing_step_alerts_then_raises(root: Path) -> None:
    recorder = RecordingAlerter()
    pipeline = _failing_pipeline(root, [recorder])
    with pytest.raises(ValueError, match=r"orders\.json is not a list"):
        pipeline.run(run_id="r1")
    alert = recorder.last
    assert (alert.pipeline, alert.run_id, alert.step) == ("t", "r1", "transform")
    assert (alert.error_type, alert.error) == ("ValueError", "orders.json is not a list")
    assert alert.attempts == 1
    assert "--run-id r1" in alert.resume_command
    assert alert.host


@pytest.mark.parametrize(
    "replies",
    [
        pytest.param([Reply(status=500, body="internal")], id="500-forever"),
        pytest.param([Reply(body="ok", delay=10.0)], id="hang"),
        pytest.param([Reply(status=429, headers={"Retry-After": "5"})], id="429"),
    ],
)
def test_a_dead_webhook_never_changes_the_exit_code_nor_hides_the_error(
    root: Path,
    server: FlakyServer,
    no_wait: WaitRecorder,
    capsys: pytest.CaptureFixture[str],
    replies: list[Reply],
) -> None:
    server.route("POST", HOOK, replies)
    pipeline = _failing_pipeline(root, [SlackWebhook(server.url(HOOK), timeout=0.2)])
    assert run_cli(["run", "--run-id", "r1", "--log-format", "json"], pipeline=pipeline) == 1
    assert server.count("POST", HOOK) == 3  # it was tried, within its bounds
    err = capsys.readouterr().err
    explained = [line for line in err.splitlines() if "resume with" in line]
    assert len(explained) == 1  # the CLI's closing explanation is about the step's error
    assert "ValueError: orders.json is not a list" in explained[0]
    assert "was not delivered" in err
    assert "hooksecret0001" not in err
    with pytest.raises(ValueError, match=r"orders\.json is not a list"):
        pipeline.run(run_id="r1")


def test_default_alerters_come_from_the_environment(
    root: Path, server: FlakyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.route("POST", HOOK, Reply(body="ok"))
    monkeypatch.setenv("SLACK_WEBHOOK_URL", server.url(HOOK))
    pipeline = _failing_pipeline(root, alerters=None)  # the default: Slack from the environment
    assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == 1
    (request,) = server.requests_for("POST", HOOK)
    assert request.json()["blocks"][1]["text"]["text"].endswith("```orders.json is not a list```")


# -- interrupts never alert --------------------------------------------------------------------


def _interrupted_pipeline(
    root: Path, interrupt: str, alerters: list[stalwart.Alerter]
) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("t", root=root, alerters=alerters, metrics=[])

    @pipeline.step()
    def first(ctx: stalwart.Context) -> None:
        ctx.write_text("a.txt", "a")

    @pipeline.step()
    def long_one(ctx: stalwart.Context) -> None:
        if interrupt == "SIGTERM":
            signal.raise_signal(signal.SIGTERM)
        else:
            raise KeyboardInterrupt
        raise AssertionError("the signal did not interrupt the step")

    return pipeline


@pytest.mark.parametrize(("interrupt", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupts_never_alert(
    root: Path, server: FlakyServer, interrupt: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = RecordingAlerter()
    server.route("POST", HOOK, Reply(body="ok"))
    pipeline = _interrupted_pipeline(root, interrupt, [recorder, SlackWebhook(server.url(HOOK))])
    assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == code
    assert len(recorder) == 0
    assert server.count("POST", HOOK) == 0
    assert "ALERT" not in capsys.readouterr().err
    assert pipeline.checkpoints("r1").is_done("first")
    assert not pipeline.checkpoints("r1").is_done("long_one")
