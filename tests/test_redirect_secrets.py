"""Redirects to another origin never carry a secret header: two real local servers, the
first redirecting to the second (another port); every header stalwart treats as secret
reaches the first and none reaches the second."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

import pytest

from hostile_http import reply, serve
from stalwart import HttpClient, HttpError, RetryPolicy
from stalwart._redact import is_secret_header

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
