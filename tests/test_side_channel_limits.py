"""The side channels inherit the bounds: a Slack alert and a Pushgateway push against a real
server that drips or stalls end within their budget; a replay stuck on such a server holds
only its own dead letter; SIGTERM while a stuck alert is being sent after a step failed
still ends the run with exit 1 (the step's failure), not 143."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from hostile_http import serve
from stalwart import (
    Alert,
    DeadLetterStore,
    HttpClient,
    HttpError,
    RetryPolicy,
    SlackWebhook,
)
from stalwart._envelope import encode_body
from stalwart.instrumentation import Pushgateway
from stalwart.instrumentation._events import RunFinished
from stalwart.testing import FlakyServer, Reply

pytestmark = pytest.mark.timeout(60)

HOOK = "/services/T1/B2/side-channel-secret"


def alert() -> Alert:
    return Alert(
        pipeline="p",
        run_id="r",
        step="s",
        error_type="E",
        error="broken",
        attempts=1,
        duration_s=1.0,
        host="h",
    )


def drip_headers(stop: threading.Event) -> object:
    """An answer whose headers never end: one byte every 0.05 s until the test stops it."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stop.wait(0.05):
            handler.wfile.write(b"a")
            handler.wfile.flush()

    return answer


def test_a_dripping_slack_answer_is_cut_at_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    with FlakyServer() as server:
        server.route("POST", HOOK, Reply(body="ok" * 1000, drip=0.2))  # 400 s in all
        SlackWebhook(server.url(HOOK), timeout=0.5, attempts=1, budget=5.0).send(alert())
    [record] = [r for r in caplog.records if "was not delivered" in r.getMessage()]
    assert "SlackWebhook(timeout=...)" in record.getMessage()
    assert "side-channel-secret" not in caplog.text


def test_slack_headers_that_never_end_are_cut_within_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = threading.Event()
    with serve(drip_headers(stop)) as (base, seen):  # type: ignore[arg-type]
        SlackWebhook(f"{base}{HOOK}", timeout=1.0, attempts=1, budget=1.5).send(alert())
        stop.set()
    assert seen  # the request was made
    [record] = [r for r in caplog.records if "was not delivered" in r.getMessage()]
    # cut by the attempt's own deadline, or at worst abandoned at the budget
    assert "no complete response within 1 s" in record.getMessage() or (
        "no answer within 1.5 s" in record.getMessage()
    )


def test_a_stalled_pushgateway_does_not_hold_the_run(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("prometheus_client")
    stop = threading.Event()
    with serve(drip_headers(stop)) as (base, _seen):  # type: ignore[arg-type]
        gateway = Pushgateway(base, timeout=0.3)
        with caplog.at_level(logging.WARNING, logger="stalwart.metrics"):
            gateway.handle(
                RunFinished(
                    pipeline="p",
                    run_id="r",
                    outcome="success",
                    duration_s=1.0,
                    ran=1,
                    skipped=0,
                    failed=0,
                    finished_at=time.time(),
                )
            )
        stop.set()
    assert "did not finish the push of p within 0.9 s" in caplog.text


def test_a_stuck_replay_holds_only_its_own_letter(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "p" / "deadletter", pipeline="p")
    with FlakyServer() as server:
        server.route("POST", "/slow", Reply(body="x" * 2000, drip=0.2))

        def letter(path: str) -> str:
            return store.write(
                {
                    "kind": "http",
                    "reason": "HTTP 503",
                    "created_at": "2026-11-28T00:00:00.000000Z",
                    "request": {
                        "method": "POST",
                        "url": server.url(path),
                        "headers": {},
                        "idempotency_key": "k",
                        "body": encode_body(b"{}"),
                    },
                }
            )

        stuck, other = letter("/slow"), letter("/other")
        failures: list[BaseException] = []

        def replay() -> None:
            with HttpClient(total_timeout=5.0, retry=RetryPolicy(attempts=1)) as client:
                try:
                    store.replay(stuck, client)
                except HttpError as exc:
                    failures.append(exc)

        replayer = threading.Thread(target=replay)
        replayer.start()
        assert server.wait_for_requests(1, timeout=10)
        store.discard(other)  # not blocked by the replay in flight
        still_replaying = replayer.is_alive()
        replayer.join()
    assert still_replaying
    assert store.show(other)["state"] == "discarded"
    assert store.show(stuck)["state"] == "pending"
    [failure] = failures
    assert "no complete response within 5 s" in str(failure)


SCRIPT = """
import sys
import stalwart

pipeline = stalwart.Pipeline("term")

@pipeline.step()
def fetch(ctx):
    raise RuntimeError("the step failed")

pipeline.main()
"""


def test_sigterm_during_a_stuck_alert_still_exits_1(tmp_path: Path) -> None:
    script = tmp_path / "term.py"
    script.write_text(SCRIPT)
    with FlakyServer() as slack:
        slack.route("POST", HOOK, Reply(body="ok", delay=60))  # never answers in time
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))},
            "SLACK_WEBHOOK_URL": slack.url(HOOK),
            "STALWART_ROOT": str(tmp_path / "state"),
        }
        child = subprocess.Popen(
            [sys.executable, str(script), "--run-id", "r", "--log-format", "json"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert slack.wait_for_requests(1, timeout=30)  # the alert is in flight
            child.send_signal(signal.SIGTERM)
            _, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert child.returncode == 1, err
    assert "sending the alert was interrupted" in err
    assert "side-channel-secret" not in err
