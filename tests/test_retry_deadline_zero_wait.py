"""A retry deadline holds whatever the waits are: ``initial=0`` or ``maximum=0`` (no wait
between attempts) must not switch it off. Each attempt here takes real time on a real server
that answers 503 slowly, so the deadline is crossed by the attempts themselves."""

from __future__ import annotations

import pytest

from stalwart import HttpClient, HttpError, RetryPolicy
from stalwart.testing import FlakyServer, Reply


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(attempts=8, initial=0.0, maximum=5.0, deadline=0.05),
        RetryPolicy(attempts=8, initial=1.0, maximum=0.0, deadline=0.05),
    ],
    ids=["initial=0", "maximum=0"],
)
def test_zero_waits_stop_at_the_deadline(policy: RetryPolicy) -> None:
    with FlakyServer() as server:
        server.route("GET", "/slow", [Reply(status=503, delay=0.1)] * 8)
        with HttpClient(retry=policy) as client, pytest.raises(HttpError) as caught:
            client.get(server.url("/slow"))
        # Each attempt alone outlasts the 0.05 s deadline: one attempt, not eight.
        assert server.count("GET", "/slow") == 1
    assert "retry deadline" in str(caught.value)
