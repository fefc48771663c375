"""``deadletter replay`` re-sends a stored request through a real server; hop-by-hop and
framing headers planted in the envelope (Host, Transfer-Encoding, Content-Length,
Connection...) are dropped, so the request on the wire is framed by httpx alone."""

from __future__ import annotations

import json
from pathlib import Path

from stalwart import DeadLetterStore, HttpClient, RetryPolicy
from stalwart._envelope import encode_body
from stalwart.testing import FlakyServer, Reply


def test_replay_drops_hop_by_hop_and_framing_headers(tmp_path: Path) -> None:
    body = b'{"order": 7}'
    planted = {
        "Host": "evil.example",
        "Transfer-Encoding": "chunked",
        "Content-Length": "999",
        "Connection": "close, X-Drop-Me",
        "Keep-Alive": "timeout=99",
        "Upgrade": "h2c",
        "TE": "trailers",
        "X-Trace": "kept",
        "X-Drop-Me": "named by Connection",
        "Content-Encoding": "identity",
    }
    with FlakyServer() as server:
        server.route("POST", "/orders", Reply(status=201))
        store = DeadLetterStore(tmp_path / "p" / "deadletter", pipeline="p")
        envelope_id = store.write(
            {
                "kind": "http",
                "reason": "HTTP 503",
                "created_at": "2026-11-28T00:00:00.000000Z",
                "request": {
                    "method": "POST",
                    "url": server.url("/orders"),
                    "headers": planted,
                    "idempotency_key": "k-1",
                    "body": encode_body(body),
                },
            }
        )
        with HttpClient(retry=RetryPolicy(attempts=1)) as client:
            response = store.replay(envelope_id, client)
        assert response.status_code == 201
        [seen] = server.requests_for("POST", "/orders")
    assert seen.body == body
    assert seen.headers["host"] == server.base_url.split("//", 1)[1]
    assert seen.headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in seen.headers
    assert "keep-alive" not in seen.headers
    assert "upgrade" not in seen.headers
    assert "te" not in seen.headers
    assert seen.headers["x-trace"] == "kept"
    assert "x-drop-me" not in seen.headers
    assert seen.headers["content-encoding"] == "identity"  # not hop-by-hop: kept
    assert (
        json.loads((tmp_path / "p" / "deadletter" / f"{envelope_id}.json").read_text())["state"]
        == "replayed"
    )
