"""Network faults against a real local server (``FlakyServer``): every retry is bounded, every
failure says what happened, and nothing is repeated that must not be.

Slow drip (a read timeout), a body shorter than its Content-Length, a connection reset in the
middle of the body or before any answer, an unresolvable host, a 429 storm asking for a day's
wait, a server that only answers 503, and a Slack webhook that hangs. Requests are counted
exactly on the server side; waits are recorded by ``no_wait()``, never slept.
"""

from __future__ import annotations

import email.utils
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import stalwart
from conftest import run_text
from stalwart import HttpClient, RetryPolicy, SlackWebhook
from stalwart._errors import HttpError
from stalwart.testing import FlakyServer, RecordingAlerter, Reply, WaitRecorder

BODY = b'{"orders": [' + b",".join(b'{"id": %d}' % i for i in range(200)) + b"]}"
FAULTS = {
    "slow drip": Reply(body=BODY[:40], drip=30.0),  # 1 byte, then silence: a read timeout
    "truncated body": Reply(body=BODY, truncate=100),
    "reset mid-body": Reply(body=BODY, reset_after=100),
    "reset before answering": Reply(reset=True),
}
RESET = ("ReadError: [Errno 104] Connection reset by peer", "Server disconnected")
SYMPTOMS = {
    "slow drip": ("ReadTimeout: timed out",),
    "truncated body": ("RemoteProtocolError: peer closed connection without sending complete",),
    "reset mid-body": RESET,
    "reset before answering": RESET,
}
POLICY = RetryPolicy(attempts=3, initial=0.5, maximum=2.0, deadline=60.0)


@pytest.fixture
def server(figures: Counter[str]) -> Iterator[FlakyServer]:
    with FlakyServer() as flaky:
        yield flaky
    figures["network: requests served by FlakyServer"] += len(flaky.requests)


@pytest.fixture
def client() -> Iterator[HttpClient]:
    with HttpClient(timeout=0.25, retry=POLICY) as http:
        yield http


# -- faults in the middle of an answer ------------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_is_retried_and_the_retry_gets_the_data(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder, fault: str
) -> None:
    server.route("GET", "/orders", [FAULTS[fault], Reply(body=BODY)])
    assert client.get(server.url("/orders")).json()["orders"][199] == {"id": 199}
    assert server.count("GET", "/orders") == 2
    assert len(no_wait.waits) == 1


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_that_never_ends_is_given_up_on_after_the_policys_attempts(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder, fault: str
) -> None:
    server.route("GET", "/orders", FAULTS[fault])
    with pytest.raises(HttpError) as caught:
        client.get(server.url("/orders"))
    assert server.count("GET", "/orders") == POLICY.attempts == caught.value.attempts
    assert len(no_wait.waits) == POLICY.attempts - 1
    message = str(caught.value)
    assert f"GET {server.url('/orders')}" in message
    assert any(symptom in message for symptom in SYMPTOMS[fault]), message
    assert f"after {POLICY.attempts} attempts" in message


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_post_the_server_may_have_seen_is_not_repeated_outside_a_pipeline(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder, fault: str
) -> None:
    server.route("POST", "/reports", [FAULTS[fault], Reply(status=201)])
    with pytest.raises(HttpError) as caught:
        client.post(server.url("/reports"), content=b"id,amount\n")
    assert server.count("POST", "/reports") == 1
    assert no_wait.waits == []
    assert "not retried: POST is not safe to repeat without an Idempotency-Key" in str(caught.value)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_post_in_a_step_is_retried_under_one_idempotency_key(
    root: Path, server: FlakyServer, client: HttpClient, no_wait: WaitRecorder, fault: str
) -> None:
    server.route("POST", "/reports", [FAULTS[fault], Reply(status=201)])
    pipeline = stalwart.Pipeline("p", root=root, http=client, alerters=[])

    @pipeline.step()
    def upload(ctx: stalwart.Context) -> None:
        ctx.http.post(server.url("/reports"), content=b"id,amount\n")

    code, err = run_text(pipeline)
    assert code == 0, err
    keys = [r.headers.get("idempotency-key") for r in server.requests_for("POST", "/reports")]
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]


# -- an unresolvable host ------------------------------------------------------------------


def test_an_unresolvable_host_is_a_clear_error_after_bounded_attempts(
    root: Path, client: HttpClient, no_wait: WaitRecorder
) -> None:
    alerter = RecordingAlerter()
    pipeline = stalwart.Pipeline("p", root=root, http=client, alerters=[alerter])

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        ctx.http.get("http://nonexistent.invalid/orders", params={"date": ctx.run_id})

    code, err = run_text(pipeline)
    assert code == 1
    final = err.rstrip().rpartition("failed; resume with")[2]
    assert "GET http://nonexistent.invalid/orders?date=r1 failed: ConnectError" in final
    assert f"after {POLICY.attempts} attempts" in final
    assert alerter.last.attempts == POLICY.attempts
    assert len(no_wait.waits) == POLICY.attempts - 1
    assert "Traceback" not in err


# -- a 429 storm asking for a day ------------------------------------------------------------


def one_day_from_now() -> str:
    return email.utils.format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)


@pytest.mark.parametrize("retry_after", ["86400", "http-date"])
def test_a_429_storm_asking_for_a_day_fails_at_once_and_dead_letters(
    root: Path, server: FlakyServer, no_wait: WaitRecorder, retry_after: str
) -> None:
    value = one_day_from_now() if retry_after == "http-date" else retry_after
    server.route("POST", "/reports", Reply(status=429, headers={"Retry-After": value}))
    alerter = RecordingAlerter()
    pipeline = stalwart.Pipeline("p", root=root, alerters=[alerter])  # the default client

    @pipeline.step()
    def upload(ctx: stalwart.Context) -> None:
        ctx.http.post(server.url("/reports"), content=b"id,amount\n", dead_letter=True)

    code, err = run_text(pipeline)
    assert code == 1
    assert server.count("POST", "/reports") == 1
    assert no_wait.waits == []  # not slept, not even recorded
    final = err.rstrip().rpartition("failed; resume with")[2]
    assert "429" in final
    assert "(Retry-After), which would cross the 120 s retry deadline" in final
    assert "not waiting" in final
    [envelope] = pipeline.deadletters.list()
    assert envelope.state == "pending"
    assert envelope.reason == "HTTP 429"
    assert alerter.last.dead_letter_id == envelope.id
    assert "Retry-After" in alerter.last.error


# -- a server that only answers 503 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "requests", "stop"),
    [
        (RetryPolicy(attempts=4, initial=0.5, maximum=2.0, deadline=60.0), 4, "after 4 attempts"),
        # Waits of 1, 2, 4, 8 s; the next 8 s wait would cross the 20 s deadline.
        (
            RetryPolicy(
                attempts=100, initial=1.0, multiplier=2.0, maximum=8.0, jitter=0.0, deadline=20.0
            ),
            5,
            "would cross the 20 s retry deadline",
        ),
    ],
    ids=["attempts", "deadline"],
)
def test_a_server_that_only_answers_503_is_bounded_in_attempts_and_time(
    server: FlakyServer,
    no_wait: WaitRecorder,
    policy: RetryPolicy,
    requests: int,
    stop: str,
) -> None:
    server.route("GET", "/orders", Reply(status=503, body="upstream down"))
    with HttpClient(retry=policy) as client, pytest.raises(HttpError) as caught:
        client.get(server.url("/orders"))
    assert server.count("GET", "/orders") == requests == caught.value.attempts
    assert len(no_wait.waits) == requests - 1
    assert no_wait.total <= policy.deadline
    assert all(wait <= policy.maximum for wait in no_wait.waits)
    assert "503" in str(caught.value)
    assert stop in str(caught.value)


# -- a Slack webhook that hangs --------------------------------------------------------------


def test_a_hanging_slack_webhook_neither_hangs_the_run_nor_hides_its_error(
    root: Path, server: FlakyServer, no_wait: WaitRecorder
) -> None:
    hook = "/services/T000/B000/HANGINGHOOK"
    server.route("POST", hook, Reply(delay=60.0, body="ok"))  # answers after a minute
    slack = SlackWebhook(server.url(hook), timeout=0.25, attempts=2, budget=5.0)
    pipeline = stalwart.Pipeline("p", root=root, alerters=[slack])

    @pipeline.step()
    def transform(ctx: stalwart.Context) -> None:
        raise ValueError("orders.json is not a list")

    code, err = run_text(pipeline)
    assert code == 1
    assert server.count("POST", hook) == 2  # the alert's own attempts, bounded
    assert "Slack alert for p/transform (run r1) was not delivered" in err
    final = err.rstrip().rpartition("failed; resume with")[2]
    assert "ValueError: orders.json is not a list" in final
    assert "Slack" not in final
    assert "HANGINGHOOK" not in err
    assert "Traceback" not in err
