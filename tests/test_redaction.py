"""Secrets never leak: not in logs, exceptions, tracebacks, alerts, Slack payloads or dead letters.

The end-to-end tests run a failing pipeline whose client carries a bearer token, whose URL
carries a token in its query string, and whose alerts go to a SLACK_WEBHOOK_URL (a FlakyServer
route), then search every captured output for the three secrets.
"""

from __future__ import annotations

import logging
import textwrap
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

import stalwart
from conftest import run_python
from stalwart import HttpClient, HttpStatusError, RetryPolicy
from stalwart._clock import WaitRecorder
from stalwart._redact import (
    MASK,
    Scrubber,
    install_httpx_log_redaction,
    is_secret_header,
    redact_headers,
    redact_url,
    register_secret,
    scrub_registered,
    secrets_in_url,
)
from stalwart.cli._main import run_cli
from stalwart.testing import FlakyServer, Reply

BEARER = "brr-5Kq0x9LmT2"
QUERY_TOKEN = "qtk-Vb7Wn3Zp8"
HOOK_SECRET = "hk-Jd4Rs6Ty1"
SECRETS = (BEARER, QUERY_TOKEN, HOOK_SECRET)


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked into {where}"


# -- the building blocks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True),
        ("proxy-authorization", True),
        ("Cookie", True),
        ("Set-Cookie", True),
        ("X-Api-Key", True),
        ("X-Auth-Token", True),
        ("Private-Token", True),
        ("X-Session-Id", True),
        ("X-Amz-Security-Token", True),
        ("Idempotency-Key", False),
        ("Content-Type", False),
        ("Accept", False),
        ("X-Request-Id", False),
        ("User-Agent", False),
    ],
)
def test_secret_headers(name: str, secret: bool) -> None:
    assert is_secret_header(name) is secret


def test_redact_headers() -> None:
    headers = {"Authorization": "Bearer x", "Accept": "application/json"}
    assert redact_headers(headers) == {"Authorization": MASK, "Accept": "application/json"}
    assert redact_headers([("X-Api-Key", "k")]) == {"X-Api-Key": MASK}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.local/orders?date=2026-11-28&page=2", None),
        ("https://bob:pw123@api.local/x", "https://***@api.local/x"),
        ("https://api.local/x?token=abc&page=2", "https://api.local/x?token=***&page=2"),
        ("https://api.local/x?api_key=abc", "https://api.local/x?api_key=***"),
        (
            "https://s3/x?X-Amz-Signature=f00&X-Amz-Date=1",
            "https://s3/x?X-Amz-Signature=***&X-Amz-Date=1",
        ),
        ("https://api.local/cb?code=xyz&state=1", "https://api.local/cb?code=***&state=1"),
        ("https://app.local/#access_token=abc&x=1", "https://app.local/#access_token=***&x=1"),
        ("https://app.local/page#section-2", None),
        ("http://[::1/x", MASK),
    ],
)
def test_redact_url(url: str, shown: str | None) -> None:
    assert redact_url(url) == (url if shown is None else shown)


def test_secrets_in_url_covers_encoded_forms() -> None:
    found = secrets_in_url("https://u:p4ss@h/x?token=a%20b%2Fc&page=2#sig=zz99")
    assert {"u:p4ss", "p4ss", "a b/c", "a%20b%2Fc", "a+b%2Fc", "zz99"} <= set(found)
    assert "2" not in found
    assert secrets_in_url("http://[::1/x") == ["http://[::1/x"]


def test_scrubber_masks_longest_first_and_ignores_short_values() -> None:
    scrub = Scrubber(["abcd", "abcdef12", "xy"])
    assert scrub("key abcdef12 and abcd, xy") == "key *** and ***, xy"
    assert Scrubber([])("unchanged") == "unchanged"


def test_registered_secrets_are_masked_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    url = "https://hooks.example.com/services/T9/B9/reg-secret-1"
    register_secret(url)
    register_secret("ab")  # too short to mean anything: ignored
    register_secret("http://[::1/reg-secret-2")  # unparsable: kept whole
    assert redact_url(url) == MASK
    assert redact_url("https://proxy.local/services/T9/B9/reg-secret-1") == "https://proxy.local***"
    assert scrub_registered("posting to http://[::1/reg-secret-2 failed") == "posting to *** failed"
    assert scrub_registered("ab") == "ab"
    install_httpx_log_redaction()
    install_httpx_log_redaction()  # idempotent
    logging.getLogger("httpx").warning("connecting to %s", "plain argument")
    logging.getLogger("httpx").warning("posting to %s (%d)", url, 3)
    logging.getLogger("httpx").warning("mapping %(n)d", {"n": 42})
    logging.getLogger("httpx").warning(404)
    logging.getLogger("httpx").warning(
        "leak of https://hooks.example.com/services/T9/B9/reg-secret-1"
    )
    assert "reg-secret-1" not in caplog.text
    assert "connecting to plain argument" in caplog.text
    assert "posting to *** (3)" in caplog.text
    assert "mapping 42" in caplog.text
    assert len(logging.getLogger("httpx").filters) == 1


def test_a_registered_token_is_masked_and_short_paths_are_not_registered() -> None:
    register_secret("xoxb-plain-token-77")
    register_secret("https://short.example/ab")
    assert scrub_registered("sent with xoxb-plain-token-77") == "sent with ***"
    assert redact_url("https://other.example/ab") == "https://other.example/ab"
    assert redact_url("https://short.example/ab") == MASK


def test_httpx_request_log_is_redacted(
    caplog: pytest.LogCaptureFixture, no_wait: WaitRecorder
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    with FlakyServer() as server, HttpClient() as client:
        server.route("GET", "/x", Reply(json=[]))
        client.get(server.url(f"/x?token={QUERY_TOKEN}&page=1"))
        assert server.requests_for("GET", "/x")[0].query["token"] == [QUERY_TOKEN]
        assert f"HTTP Request: GET {server.url('/x?token=***&page=1')}" in caplog.text
    assert_clean(caplog.text, "httpx's log")


# -- end to end --------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    with FlakyServer() as flaky:
        flaky.route("GET", "/orders", Reply(status=503, body="upstream busy"))
        flaky.route("POST", "/reports", Reply(status=401, body="bad credentials"))
        flaky.route("POST", f"/services/T0/B0/{HOOK_SECRET}", Reply(status=500))
        yield flaky


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_failing_pipeline_leaks_no_secret(
    root: Path,
    server: FlakyServer,
    *,
    no_wait: WaitRecorder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    log_format: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", server.url(f"/services/T0/B0/{HOOK_SECRET}"))
    client = HttpClient(
        headers={"Authorization": f"Bearer {BEARER}"}, retry=RetryPolicy(attempts=3)
    )
    pipeline = stalwart.Pipeline("secrets", root=root, http=client, metrics=[])
    api = server.url(f"/orders?date=2026-11-28&token={QUERY_TOKEN}")
    sink = server.url(f"/reports?sig={QUERY_TOKEN}")

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        try:
            ctx.http.get(api)
        except HttpStatusError:
            ctx.log.warning("the API is down, uploading an empty report")
        ctx.http.post(sink, content=b"empty report", dead_letter=True)

    with client:
        code = run_cli(
            ["run", "--run-id", "r1", "--log-format", log_format, "--verbose"], pipeline=pipeline
        )
        with pytest.raises(HttpStatusError) as caught:
            pipeline.run(run_id="r2")
    assert code == 1

    # The secrets were really used: the server saw them.
    (first, *_) = server.requests_for("GET", "/orders")
    assert first.headers["authorization"] == f"Bearer {BEARER}"
    assert first.query["token"] == [QUERY_TOKEN]
    slack = server.requests_for("POST", f"/services/T0/B0/{HOOK_SECRET}")
    assert len(slack) == 3  # one alert (run r2 repeats r1's failure), three attempts

    # ... and nothing shows them.
    out, err = capsys.readouterr()
    assert "401 Unauthorized" in err
    assert f"{server.url('/reports?sig=***')}" in err
    assert_clean(out, "stdout")
    assert_clean(err, "stderr")
    assert_clean(caplog.text, "the log records")
    for request in slack:
        payload = request.body.decode()
        assert "sig=***" in payload
        assert_clean(payload, "the Slack payload")
    error = caught.value
    assert_clean(str(error), "the exception")
    assert_clean("".join(traceback.format_exception(error)), "the traceback")
    for envelope in (root / "secrets" / "deadletter").glob("*.json"):
        assert_clean(envelope.read_text(), "a dead letter")
    assert len(list((root / "secrets" / "deadletter").glob("*.json"))) == 2


def test_a_failing_pipeline_process_leaks_no_secret(tmp_path: Path, server: FlakyServer) -> None:
    script = tmp_path / "leaky.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import stalwart

            client = stalwart.HttpClient(
                headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]},
                retry=stalwart.RetryPolicy(attempts=2, initial=0.01, maximum=0.01),
            )
            pipeline = stalwart.Pipeline("leaky", http=client, metrics=[])

            @pipeline.step()
            def fetch(ctx):
                ctx.http.get(os.environ["API_URL"]).json()

            if __name__ == "__main__":
                pipeline.main()
            """
        )
    )
    server.route("POST", f"/services/T0/B0/{HOOK_SECRET}", Reply(body="ok"))
    result = run_python(
        [str(script), "--run-id", "r1", "--verbose"],
        env={
            "API_TOKEN": BEARER,
            "API_URL": server.url(f"/orders?token={QUERY_TOKEN}"),
            "SLACK_WEBHOOK_URL": server.url(f"/services/T0/B0/{HOOK_SECRET}"),
            "STALWART_ROOT": str(tmp_path / "state"),
        },
    )
    assert result.returncode == 1, result.stderr
    assert server.count("GET", "/orders") == 2
    assert "HttpStatusError" in result.stderr
    assert "token=***" in result.stderr
    assert_clean(result.stdout, "stdout")
    assert_clean(result.stderr, "stderr")
    (alert,) = server.requests_for("POST", f"/services/T0/B0/{HOOK_SECRET}")
    assert_clean(alert.body.decode(), "the Slack payload")
    assert "token=***" in alert.body.decode()


def test_the_auth_scheme_word_is_not_masked_the_token_is(root: Path) -> None:
    with (
        FlakyServer() as server,
        stalwart.HttpClient(headers={"Authorization": "Bearer tok-123456789"}) as client,
    ):
        server.route("GET", "/x", Reply(status=404, body="send a Bearer token; tok-123456789?"))
        with pytest.raises(stalwart.HttpStatusError) as caught:
            client.get(server.url("/x"))
    message = str(caught.value)
    assert "tok-123456789" not in message
    assert "send a Bearer token; ***?" in message
