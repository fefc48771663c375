"""HttpClient and ctx.http against a real flaky server: what is retried, what is not, how long.

Every test talks to ``FlakyServer`` over loopback (no mocked httpx) under ``no_wait``: retries
happen, sleeps are recorded instead of slept, and the retry clock advances by them.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import stalwart
from stalwart import (
    DeadLetterStore,
    HttpClient,
    HttpError,
    HttpStatusError,
    ResponseFormatError,
    RetryPolicy,
)
from stalwart._clock import WaitRecorder
from stalwart._http import parse_retry_after
from stalwart.cli._main import run_cli
from stalwart.testing import FlakyServer, RecordingAlerter, Reply

POLICY = RetryPolicy(attempts=5, initial=0.5, maximum=8.0, deadline=60.0)
DATA = {"orders": [1, 2, 3]}


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    with FlakyServer() as flaky:
        yield flaky


@pytest.fixture
def client() -> Iterator[HttpClient]:
    with HttpClient(timeout=5.0, retry=POLICY) as http:
        yield http


def _pipeline(root: Path, client: HttpClient) -> tuple[stalwart.Pipeline, RecordingAlerter]:
    alerter = RecordingAlerter()
    return stalwart.Pipeline(
        "shop", root=root, http=client, alerters=[alerter], metrics=[]
    ), alerter


# -- transient failures: retried, then success -------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_status_is_retried_then_succeeds(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder, status: int
) -> None:
    server.route("GET", "/orders", [Reply(status=status, body="later"), Reply(json=DATA)])
    response = client.get(server.url("/orders"))
    assert response.json() == DATA
    assert server.count("GET", "/orders") == 2
    assert len(no_wait) == 1
    assert 0.0 <= no_wait.waits[0] <= POLICY.backoff(1)


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(Reply(reset=True), id="connection-reset"),
        pytest.param(Reply(json=DATA, reset_after=3), id="reset-mid-body"),
        pytest.param(Reply(json=DATA, truncate=5), id="truncated-body"),
    ],
)
def test_broken_connection_is_retried_then_succeeds(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder, failure: Reply
) -> None:
    server.route("GET", "/orders", [failure, Reply(json=DATA)])
    assert client.get(server.url("/orders")).json() == DATA
    assert server.count("GET", "/orders") == 2
    assert len(no_wait) == 1


def test_timeout_is_retried_then_succeeds(server: FlakyServer, no_wait: WaitRecorder) -> None:
    server.route("GET", "/slow", [Reply(json=DATA, delay=5.0), Reply(json=DATA)])
    with HttpClient(timeout=0.2, retry=POLICY) as client:
        assert client.get(server.url("/slow")).json() == DATA
    assert server.count("GET", "/slow") == 2
    assert len(no_wait) == 1


def test_per_call_timeout_overrides_the_client(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("GET", "/slow", [Reply(json=DATA, delay=5.0), Reply(json=DATA)])
    assert client.get(server.url("/slow"), timeout=0.2).json() == DATA
    assert server.count("GET", "/slow") == 2
    with pytest.raises(ValueError, match="timeout must be positive"):
        client.get(server.url("/slow"), timeout=0)


def test_retry_is_logged_with_step_method_url_attempt_and_wait(
    root: Path,
    server: FlakyServer,
    client: HttpClient,
    no_wait: WaitRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="stalwart.http")
    server.route("GET", "/orders", [Reply(status=503), Reply(status=503), Reply(json=DATA)])
    pipeline, _ = _pipeline(root, client)

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        ctx.write_json("orders.json", ctx.http.get(server.url("/orders?token=s3cr3t-x")).json())

    pipeline.run(run_id="r1")
    lines = [r.getMessage() for r in caplog.records if r.name == "stalwart.http"]
    url = server.url("/orders?token=***")
    assert (
        lines[0] == f"fetch: GET {url} -> 503 (attempt 1/5), retrying in {no_wait.waits[0]:.1f} s"
    )
    assert lines[1].startswith(f"fetch: GET {url} -> 503 (attempt 2/5), retrying in ")
    assert "s3cr3t" not in caplog.text
    marker = pipeline.checkpoints("r1").read_marker("fetch")
    assert marker is not None
    assert (marker.attempts, marker.retries) == (3, 2)


# -- permanent failures: one request, a message that says what came back -----------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (422, "Unprocessable Entity"),
    ],
)
def test_permanent_status_fails_after_one_request(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder, status: int, reason: str
) -> None:
    server.route("GET", "/orders", Reply(status=status, body='{"error": "date is required"}'))
    with pytest.raises(HttpStatusError) as caught:
        client.get(server.url("/orders?date=x&api_key=k-123456"))
    error = caught.value
    assert server.count("GET", "/orders") == 1
    assert len(no_wait) == 0
    url = server.url("/orders?date=x&api_key=***")
    assert str(error) == f"GET {url} -> {status} {reason}: " + repr('{"error": "date is required"}')
    assert (error.status, error.url, error.method, error.attempts) == (status, url, "GET", 1)
    assert error.body_excerpt == '{"error": "date is required"}'
    assert not error.transient


def test_long_bodies_are_cut_to_an_excerpt(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("GET", "/big", Reply(status=400, body="x" * 10_000))
    with pytest.raises(HttpStatusError) as caught:
        client.get(server.url("/big"))
    assert len(caught.value.body_excerpt) == 200
    assert caught.value.body_excerpt.endswith("…")
    assert len(str(caught.value)) < 400


def test_body_that_is_not_json_fails_once_and_says_what_came_back(
    root: Path, server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route(
        "GET",
        "/orders",
        Reply(body="<html>Maintenance</html>", headers={"Content-Type": "text/html"}),
    )
    pipeline, alerter = _pipeline(root, client)

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        ctx.http.get(server.url("/orders")).json()

    with pytest.raises(ResponseFormatError) as caught:
        pipeline.run(run_id="r1")
    message = str(caught.value)
    assert message.startswith(f"GET {server.url('/orders')} -> 200: expected JSON, but the body")
    assert "text/html" in message
    assert "'<html>Maintenance</html>'" in message
    assert isinstance(caught.value, ValueError)
    assert server.count("GET", "/orders") == 1
    assert len(no_wait) == 0
    assert alerter.last.error_type == "ResponseFormatError"
    assert alerter.last.error == message


def test_body_that_is_not_utf8_fails_once(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("GET", "/orders", Reply(body=b'{"name": "caf\xe9"}'))
    response = client.get(server.url("/orders"))
    with pytest.raises(ResponseFormatError, match=r"is not UTF-8 text \(byte 13\)") as caught:
        response.json()
    assert "-> 200" in str(caught.value)
    assert "caf" in str(caught.value)
    assert caught.value.url == server.url("/orders")
    assert server.count("GET", "/orders") == 1


def test_response_wraps_httpx(server: FlakyServer, client: HttpClient) -> None:
    server.route("GET", "/x", Reply(json=DATA, headers={"X-Trace": "abc"}))
    response = client.get(server.url("/x"))
    assert response.status_code == 200
    assert response.headers["x-trace"] == "abc"
    assert response.text == '{"orders": [1, 2, 3]}'
    assert response.content == response.text.encode()
    assert response.reason_phrase == "OK"  # anything else is httpx's
    assert repr(response) == f"<Response [200] GET {server.url('/x')}>"


# -- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("12", 12.0),
        (" 1.5 ", 1.5),
        ("-5", 0.0),
        ("nan", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP date
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
        ("Wed, 21 Oct 2015 07:28:30 GMT", 20.0),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:10 GMT").timestamp()
    assert parse_retry_after(value, now=now) == seconds


def test_retry_after_seconds_is_honoured(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("GET", "/x", [Reply(status=429, headers={"Retry-After": "7"}), Reply(json=DATA)])
    assert client.get(server.url("/x")).json() == DATA
    assert server.count("GET", "/x") == 2
    assert len(no_wait) == 1
    assert no_wait.waits[0] >= 7.0


def test_retry_after_date_is_honoured(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.route("GET", "/x", [Reply(status=503, headers={"Retry-After": when}), Reply(json=DATA)])
    assert client.get(server.url("/x")).json() == DATA
    assert len(no_wait) == 1
    asked_now = parse_retry_after(when)  # what the header asks for, read after the fact
    assert asked_now is not None
    assert asked_now <= no_wait.waits[0] <= 30.0
    assert no_wait.waits[0] > POLICY.backoff(1)


def test_retry_after_never_shortens_the_backoff(server: FlakyServer, no_wait: WaitRecorder) -> None:
    steady = RetryPolicy(attempts=3, initial=5.0, jitter=0.0, deadline=60.0)
    server.route("GET", "/x", [Reply(status=503, headers={"Retry-After": "1"}), Reply(json=DATA)])
    with HttpClient(retry=steady) as client:
        client.get(server.url("/x"))
    assert no_wait.waits == [5.0]


@pytest.mark.parametrize("how", ["seconds", "date"])
def test_retry_after_beyond_the_deadline_fails_at_once(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder, how: str
) -> None:
    value = "600" if how == "seconds" else email.utils.formatdate(time.time() + 600, usegmt=True)
    server.route("GET", "/x", [Reply(status=503, headers={"Retry-After": value}), Reply(json=DATA)])
    with pytest.raises(HttpStatusError) as caught:
        client.get(server.url("/x"))
    assert server.count("GET", "/x") == 1
    assert no_wait.waits == []  # not slept, and not cut short either
    message = str(caught.value)
    assert "(Retry-After)" in message
    assert "would cross the 60 s retry deadline" in message
    assert "not waiting" in message
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 590


def test_a_backoff_beyond_the_deadline_fails_with_the_reason(
    server: FlakyServer, no_wait: WaitRecorder
) -> None:
    tight = RetryPolicy(attempts=10, initial=4.0, multiplier=2.0, jitter=0.0, deadline=10.0)
    server.route("GET", "/x", Reply(status=503))
    with HttpClient(retry=tight) as client, pytest.raises(HttpStatusError) as caught:
        client.get(server.url("/x"))
    assert no_wait.waits == [4.0]  # 4 + 8 would cross 10
    assert server.count("GET", "/x") == 2
    assert "the next backoff wait (8.0 s) would cross the 10 s retry deadline" in str(caught.value)


# -- bounded: attempts and time ----------------------------------------------------------------


def test_endless_503_is_bounded_in_attempts(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("GET", "/x", Reply(status=503, body="busy"))
    with pytest.raises(HttpStatusError) as caught:
        client.get(server.url("/x"))
    assert server.count("GET", "/x") == POLICY.attempts
    assert caught.value.attempts == POLICY.attempts
    assert len(no_wait) == POLICY.attempts - 1
    assert no_wait.total <= POLICY.deadline
    assert str(caught.value).startswith(
        f"GET {server.url('/x')} -> 503 Service Unavailable: 'busy'"
    )
    assert f"[after {POLICY.attempts} attempts in " in str(caught.value)


def test_endless_503_is_bounded_in_time(server: FlakyServer, no_wait: WaitRecorder) -> None:
    patient = RetryPolicy(attempts=1000, initial=1.0, maximum=5.0, deadline=20.0)
    server.route("GET", "/x", Reply(status=503))
    with HttpClient(retry=patient) as client, pytest.raises(HttpStatusError) as caught:
        client.get(server.url("/x"))
    requests = server.count("GET", "/x")
    assert requests == len(no_wait) + 1
    assert requests < 1000
    assert no_wait.total <= patient.deadline
    assert "retry deadline" in str(caught.value)


def test_step_retry_policy_and_per_call_policy_override_the_client(
    root: Path, server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("GET", "/x", Reply(status=503))
    pipeline, _ = _pipeline(root, client)

    @pipeline.step(http_retry=RetryPolicy(attempts=2))
    def fetch(ctx: stalwart.Context) -> None:
        with contextlib.suppress(HttpStatusError):
            ctx.http.get(server.url("/x"), retry=RetryPolicy(attempts=3))
        ctx.http.get(server.url("/x"))

    with pytest.raises(HttpStatusError):
        pipeline.run(run_id="r1")
    assert server.count("GET", "/x") == 3 + 2


# -- POST, PATCH and Idempotency-Key -----------------------------------------------------------


def _keys(server: FlakyServer, path: str) -> list[str | None]:
    return [r.headers.get("idempotency-key") for r in server.requests_for("POST", path)]


def test_post_in_a_step_carries_one_stable_key(
    root: Path, server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("POST", "/reports", [Reply(status=503), Reply(status=503), Reply(status=201)])
    pipeline, _ = _pipeline(root, client)

    @pipeline.step()
    def upload(ctx: stalwart.Context) -> None:
        ctx.http.post(server.url("/reports"), json={"total": 42})

    pipeline.run(run_id="2026-11-28")
    first = _keys(server, "/reports")
    assert len(first) == 3
    assert len(set(first)) == 1
    key = first[0]
    assert key is not None
    assert key.startswith("stw1-")

    server.route("POST", "/reports", Reply(status=201))
    assert run_cli(["run", "--run-id", "2026-11-28", "--step", "upload"], pipeline=pipeline) == 0
    pipeline.run(run_id="2026-11-28", force=True)
    assert _keys(server, "/reports") == [key] * 5  # a re-run repeats the key

    pipeline.run(run_id="2026-11-29")
    other = _keys(server, "/reports")[-1]
    assert other is not None
    assert other != key  # another run ID, another key


def test_identical_posts_in_a_step_get_distinct_stable_keys(
    root: Path, server: FlakyServer, client: HttpClient
) -> None:
    server.route("POST", "/events", Reply(status=202))
    pipeline, _ = _pipeline(root, client)

    @pipeline.step()
    def notify(ctx: stalwart.Context) -> None:
        assert ctx.http.client is client
        ctx.http.post(server.url("/events"), content=b"ping")
        ctx.http.post(server.url("/events"), content=b"ping")
        ctx.http.post(server.url("/events"), content=b"pong")

    pipeline.run(run_id="r1")
    pipeline.run(run_id="r1", force=True)
    keys = _keys(server, "/events")
    assert len(set(keys[:3])) == 3  # the 1st and 2nd identical POSTs differ (n), and the body
    assert keys[3:] == keys[:3]


def test_patch_gets_a_key_and_explicit_keys_win(
    root: Path, server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("PATCH", "/item", [Reply(status=502), Reply(status=200)])
    server.route("POST", "/mine", [Reply(status=502), Reply(status=200)])
    pipeline, _ = _pipeline(root, client)

    @pipeline.step()
    def update(ctx: stalwart.Context) -> None:
        ctx.http.patch(server.url("/item"), json={"qty": 1})
        ctx.http.post(server.url("/mine"), content="x", idempotency_key="order-17")

    pipeline.run(run_id="r1")
    client.close()  # closing twice is harmless; the next call opens a new connection pool
    client.close()
    patch_keys = {r.headers.get("idempotency-key") for r in server.requests_for("PATCH", "/item")}
    assert len(patch_keys) == 1
    assert None not in patch_keys
    assert _keys(server, "/mine") == ["order-17", "order-17"]


def test_post_without_key_outside_a_pipeline_is_not_retried_on_503(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("POST", "/orders", [Reply(status=503), Reply(status=201)])
    with pytest.raises(HttpStatusError) as caught:
        client.post(server.url("/orders"), json={"id": 1})
    assert server.count("POST", "/orders") == 1
    assert _keys(server, "/orders") == [None]
    assert len(no_wait) == 0
    assert "not retried: POST is not safe to repeat without an Idempotency-Key" in str(caught.value)


def test_post_without_key_is_not_retried_after_a_reset(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("POST", "/orders", [Reply(reset=True), Reply(status=201)])
    with pytest.raises(HttpError, match="not retried"):
        client.post(server.url("/orders"), content=b"x")
    assert server.count("POST", "/orders") == 1  # it may have reached the server


def test_post_with_key_outside_a_pipeline_is_retried(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("POST", "/orders", [Reply(status=503), Reply(status=201)])
    client.post(server.url("/orders"), json={"id": 1}, idempotency_key="abc-1")
    assert _keys(server, "/orders") == ["abc-1", "abc-1"]


def test_post_without_key_is_retried_when_the_connection_is_refused(
    no_wait: WaitRecorder,
) -> None:
    with FlakyServer() as gone:
        url = gone.url("/orders")  # the port is closed once the server stopped
    with HttpClient(retry=POLICY) as client, pytest.raises(HttpError) as caught:
        client.post(url, json={"id": 1})
    assert len(no_wait) == POLICY.attempts - 1  # never reached a server: safe to repeat
    assert "ConnectError" in str(caught.value)
    assert f"[after {POLICY.attempts} attempts in " in str(caught.value)
    assert caught.value.transient


def test_put_and_delete_are_repeatable_without_key(
    server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("PUT", "/x", [Reply(status=503), Reply(status=204)])
    server.route("DELETE", "/x", [Reply(status=503), Reply(status=204)])
    server.route("HEAD", "/x", [Reply(status=503), Reply(status=200)])
    assert client.put(server.url("/x"), content="v").status_code == 204
    assert client.delete(server.url("/x")).status_code == 204
    assert client.head(server.url("/x")).status_code == 200
    assert [server.count(m, "/x") for m in ("PUT", "DELETE", "HEAD")] == [2, 2, 2]


# -- dead letters and odd inputs ---------------------------------------------------------------


def test_dead_letter_keeps_a_failed_post_in_a_step(
    root: Path, server: FlakyServer, client: HttpClient, no_wait: WaitRecorder
) -> None:
    server.route("POST", "/sink", Reply(status=422, body="schema mismatch"))
    pipeline, alerter = _pipeline(root, client)

    @pipeline.step()
    def upload(ctx: stalwart.Context) -> None:
        ctx.http.post(server.url("/sink"), content=b"a,b\n1,2\n", dead_letter=True)

    with pytest.raises(HttpStatusError) as caught:
        pipeline.run(run_id="r1")
    envelope_id = getattr(caught.value, "dead_letter_id", None)
    assert envelope_id is not None
    assert [s.id for s in pipeline.deadletters.list()] == [envelope_id]
    assert alerter.last.dead_letter_id == envelope_id


def test_dead_letter_outside_a_step(
    tmp_path: Path,
    server: FlakyServer,
    client: HttpClient,
    no_wait: WaitRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.route("PUT", "/sink", Reply(status=400))
    store = DeadLetterStore(tmp_path / "dl", pipeline="adhoc")
    with pytest.raises(HttpStatusError) as caught:
        client.put(server.url("/sink"), content=b"payload", dead_letter=store)
    assert [s.id for s in store.list()] == [caught.value.dead_letter_id]

    with pytest.raises(HttpStatusError):
        client.put(server.url("/sink"), content=b"payload", dead_letter=True)
    assert "needs a DeadLetterStore: not kept" in caplog.text


def test_invalid_urls_and_timeouts_are_refused(client: HttpClient) -> None:
    with pytest.raises(HttpError, match="invalid URL") as caught:
        client.get("http://[::1/x?token=abcdefgh")
    assert "abcdefgh" not in str(caught.value)
    with pytest.raises(ValueError, match="no request without"):
        HttpClient(timeout=0)
    with pytest.raises(ValueError, match="no request without"):
        HttpClient(connect_timeout=float("inf"))


def test_client_credentials_are_sent_and_never_shown(
    server: FlakyServer, no_wait: WaitRecorder
) -> None:
    server.route("GET", "/me", Reply(status=403, body="token hunter2-secret is revoked"))
    with HttpClient(auth=("bob", "hunter2-secret"), base_url=server.url("")) as client:
        with pytest.raises(HttpStatusError) as caught:
            client.get("/me")
        assert "hunter2-secret" not in str(caught.value)
        assert "***" in str(caught.value)
        assert "hunter2" not in repr(client)
    assert server.requests_for("GET", "/me")[0].headers["authorization"].startswith("Basic ")
