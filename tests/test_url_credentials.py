"""``http://user:password@host``: httpx turns the user-info into ``Authorization: Basic
base64(user:password)``. A real server here echoes that header back in its error body; the
token must reach no log, alert, final message, ``status`` or dead-letter envelope."""

from __future__ import annotations

import base64
import json
import logging
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

import stalwart
from hostile_http import reply, serve
from stalwart import HttpClient, RetryPolicy
from stalwart.cli._main import run_cli
from stalwart.testing import RecordingAlerter

PASSWORD = "s3cr3t-Pa55word"
TOKEN = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()


def echo_authorization(handler: BaseHTTPRequestHandler) -> None:
    body = f"denied for {handler.headers.get('Authorization')}".encode()
    reply(handler, 400, body, {"Content-Type": "text/plain"})


def test_basic_token_from_user_info_is_masked_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    alerter = RecordingAlerter()
    with (
        serve(echo_authorization) as (base, seen),
        HttpClient(retry=RetryPolicy(attempts=1)) as client,
    ):
        host = base.removeprefix("http://")
        pipeline = stalwart.Pipeline("creds", root=tmp_path, alerters=[alerter], http=client)

        @pipeline.step()
        def fetch(ctx: stalwart.Context) -> None:
            ctx.http.post(f"http://alice:{PASSWORD}@{host}/orders", json={}, dead_letter=True)

        with caplog.at_level(logging.DEBUG):
            code = run_cli(["run", "--run-id", "r", "--log-format", "json"], pipeline=pipeline)
        assert code == 1
        assert seen
        assert seen[0]["authorization"] == f"Basic {TOKEN}"
        assert run_cli(["status", "--run-id", "r", "--json"], pipeline=pipeline) == 0
        assert run_cli(["status", "--run-id", "r"], pipeline=pipeline) == 0
    everything = [
        caplog.text,
        json.dumps([r.__dict__ for r in caplog.records], default=str),
        alerter.last.as_text(),
        json.dumps(alerter.last.to_dict()),
        *capsys.readouterr(),
        *(p.read_text() for p in tmp_path.rglob("*") if p.is_file()),
    ]
    assert "denied for" in alerter.last.error
    for text in everything:
        assert TOKEN not in text
        assert PASSWORD not in text
