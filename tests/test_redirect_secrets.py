"""Redirects to another origin never carry a secret header: two real local servers, the
first redirecting to the second (another port); every header stalwart treats as secret
reaches the first and none reaches the second."""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler

import pytest

from hostile_http import reply, serve
from stalwart import HttpClient, HttpError, RetryPolicy
from stalwart._redact import is_secret_header
from stalwart.instrumentation import Pushgateway
from stalwart.instrumentation._events import RunFinished
from stalwart.testing import FlakyServer, Reply

SECRETS = {
    "X-Api-Key": "key-0123456789",
    "X-Auth-Token": "tok-0123456789",
    "Private-Token": "pat-0123456789",
    "X-Session-Id": "ses-0123456789",
}


def ok(handler: BaseHTTPRequestHandler) -> None:
    reply(handler, 200, b"landed", {"Content-Type": "text/plain"})


def test_secret_headers_are_dropped_on_a_cross_origin_redirect() -> None:
    with serve(ok) as (other, other_seen):

        def redirect(handler: BaseHTTPRequestHandler) -> None:
            where = f"{other}/landing" if handler.path == "/away" else "/here"
            if handler.path == "/here":
                ok(handler)
            else:
                reply(handler, 302, b"", {"Location": where})

        with (
            serve(redirect) as (origin, origin_seen),
            HttpClient(
                headers={"X-Api-Key": SECRETS["X-Api-Key"]},
                auth=("alice", "pw-0123456789"),
                retry=RetryPolicy(attempts=1),
            ) as client,
        ):
            call_headers = {k: v for k, v in SECRETS.items() if k != "X-Api-Key"}
            response = client.get(f"{origin}/away", headers=call_headers)
            assert response.text == "landed"
            assert [r.status_code for r in response.history] == [302]
            same = client.get(f"{origin}/stay", headers=call_headers)
            assert same.text == "landed"
    assert all(is_secret_header(name) for name in SECRETS)
    first, *_ = origin_seen
    for name in (*SECRETS, "Authorization"):
        assert name.lower() in first  # the origin got every credential
    [landed] = other_seen
    leaked = {name: value for name, value in landed.items() if is_secret_header(name)}
    assert leaked == {}
    assert landed["host"] == other.removeprefix("http://")
    # a redirect within the origin keeps them
    assert origin_seen[-1].get("x-auth-token") == SECRETS["X-Auth-Token"]
    assert origin_seen[-1].get("authorization", "").startswith("Basic ")


def test_redirect_loops_end_with_an_error() -> None:
    def loop(handler: BaseHTTPRequestHandler) -> None:
        reply(handler, 302, b"", {"Location": "/again"})

    with (
        serve(loop) as (origin, seen),
        HttpClient(retry=RetryPolicy(attempts=1)) as client,
        pytest.raises(HttpError, match="more than 20 redirects"),
    ):
        client.get(f"{origin}/again")
    assert len(seen) == 21


def test_a_redirecting_pushgateway_never_gets_the_credentials_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """urllib would follow a redirect with the Authorization header; the push refuses it."""
    with FlakyServer() as gateway, FlakyServer() as elsewhere:
        moved = Reply(status=307, headers={"Location": elsewhere.url("/metrics")})
        for method in ("GET", "POST"):
            gateway.route(method, "/metrics", moved)
            gateway.route(method, "/metrics/job/stalwart/pipeline/daily", moved)
        host = gateway.url("/").split("//", 1)[1].rstrip("/")
        sink = Pushgateway(f"http://alice:gateway-secret@{host}", timeout=2.0)
        with caplog.at_level(logging.WARNING):
            sink.handle(
                RunFinished(
                    pipeline="daily",
                    run_id="r1",
                    outcome="success",
                    duration_s=1.0,
                    ran=1,
                    skipped=0,
                    failed=0,
                    finished_at=1.0,
                )
            )
        assert gateway.requests  # it did try the gateway
        assert elsewhere.requests == []  # and followed no redirect there
    assert "gateway-secret" not in caplog.text
