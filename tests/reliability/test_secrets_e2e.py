"""Secrets, end to end: a failing pipeline run as a real process with a bearer token on its
client, a token in a query string, a Slack webhook URL and a Prometheus textfile; then every
byte it produced - stdout and stderr (JSON logs, text logs, ``--verbose`` tracebacks, status,
dead-letter commands), every file under the state root (markers, step records, envelopes,
lock), the textfile, and the alerts the webhook received - is searched for each secret.

The secrets do travel where they must (the API sees its token, the webhook its own URL):
the test checks that too, so that zero hits mean "redacted", not "never used".
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

import stalwart
from stalwart.cli._main import run_cli
from stalwart.testing import FlakyServer, Reply

BEARER = "sk-live-Bearer7Q2ZtV9xKm4"
QUERY_TOKEN = "qs-secret-Tok3nW8pLr5Yd"
HOOK_PATH = "/services/T000/B000/XXXXSECRET"

PIPELINE = textwrap.dedent(
    """
    import os
    import stalwart

    BASE = os.environ["API_BASE"]
    pipeline = stalwart.Pipeline(
        "secrets",
        http=stalwart.HttpClient(
            headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]},
            retry=stalwart.RetryPolicy(attempts=2, initial=0.01, maximum=0.01),
        ),
    )

    @pipeline.step()
    def fetch(ctx):
        orders = ctx.http.get(
            BASE + "/orders", params={"access_token": os.environ["QUERY_TOKEN"]}
        ).json()
        ctx.log.info("fetched %d orders", len(orders), extra={"orders": len(orders)})
        ctx.write_json("orders.json", orders)

    @pipeline.step()
    def upload(ctx):
        ctx.log.info("uploading %d orders", len(ctx.read_json("orders.json")))
        ctx.http.post(
            BASE + "/reports?api_key=" + os.environ["QUERY_TOKEN"],
            json=ctx.read_json("orders.json"),
            dead_letter=True,
        )

    if __name__ == "__main__":
        pipeline.main()
    """
)


def run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    full.update(env)
    return subprocess.run(
        [sys.executable, str(script), *args],
        env=full,
        capture_output=True,
        timeout=120,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_no_secret_reaches_any_byte_a_failing_run_produces(
    tmp_path: Path, figures: Counter[str]
) -> None:
    script = tmp_path / "secret_pipeline.py"
    script.write_text(PIPELINE)
    root = tmp_path / "state"
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    textfile = metrics / "stalwart.prom"
    with FlakyServer() as server:
        server.route("GET", "/orders", [Reply(status=503), Reply(json=[{"id": 1, "amount": 9.99}])])
        # A careless API that echoes the credentials it was sent back in its error.
        server.route(
            "POST",
            "/reports",
            Reply(status=400, body=f"bad schema (api_key={QUERY_TOKEN}, auth=Bearer {BEARER})"),
        )
        server.route("POST", HOOK_PATH, Reply(body="ok"))
        webhook = server.url(HOOK_PATH)
        env = {
            "API_BASE": server.base_url,
            "API_TOKEN": BEARER,
            "QUERY_TOKEN": QUERY_TOKEN,
            "SLACK_WEBHOOK_URL": webhook,
            "STALWART_ROOT": str(root),
            "STALWART_PROM_TEXTFILE": str(textfile),
        }
        outputs: dict[str, bytes] = {}
        for fmt in (["--log-format", "json"], ["--log-format", "text"], ["-v"]):
            result = run(script, env, "--run-id", "r1", *fmt)
            assert result.returncode == 1, result.stderr.decode()
            outputs[f"run {fmt} stdout"] = result.stdout
            outputs[f"run {fmt} stderr"] = result.stderr
        envelopes = sorted((root / "secrets" / "deadletter").glob("*.json"))
        assert len(envelopes) == 3
        commands = [["status", "--run-id", "r1"], ["status", "--run-id", "r1", "--json"]]
        commands += [["deadletter", "list"], ["deadletter", "list", "--json"]]
        for envelope in envelopes:
            commands += [["deadletter", action, envelope.stem] for action in ("show", "replay")]
        for command in commands:
            result = run(script, env, *command, "--log-format", "text")
            assert result.returncode in (0, 1), result.stderr.decode()
            outputs[f"{command} stdout"] = result.stdout
            outputs[f"{command} stderr"] = result.stderr
        alerts = [r.body for r in server.requests_for("POST", HOOK_PATH)]

        # The secrets were really used: the API got its token, the webhook its alerts.
        for request in server.requests_for("GET", "/orders"):
            assert request.headers["authorization"] == f"Bearer {BEARER}"
            assert request.query["access_token"] == [QUERY_TOKEN]
        assert server.requests_for("POST", "/reports")[0].query["api_key"] == [QUERY_TOKEN]
    assert len(alerts) == 1  # the three runs fail the same way: one alert per streak
    assert all("blocks" in json.loads(body) for body in alerts)

    for path in [*root.rglob("*"), *metrics.iterdir()]:
        if path.is_file():
            outputs[str(path)] = path.read_bytes()
    for i, body in enumerate(alerts):
        outputs[f"alert {i} as received"] = body
    assert textfile.exists()
    assert any(b"Traceback" in data for data in outputs.values())  # -v: tracebacks searched too

    secrets = [BEARER, QUERY_TOKEN, webhook, HOOK_PATH, "XXXXSECRET", "T000/B000"]
    hits = [
        (secret, where)
        for where, data in outputs.items()
        for secret in secrets
        if secret.encode() in data
    ]
    figures["secrets e2e: bytes searched"] += sum(len(data) for data in outputs.values())
    figures["secrets e2e: outputs searched"] += len(outputs)
    assert hits == []

    # Permissions: private state directories, private envelopes and markers.
    state = root / "secrets"
    run_dir = state / "runs" / "r1"
    for directory in (root, state, state / "runs", run_dir, run_dir / ".checkpoints"):
        assert mode(directory) == 0o700, directory
    assert mode(state / "deadletter") == 0o700
    for envelope in envelopes:
        assert mode(envelope) == 0o600, envelope
    for record in (run_dir / ".checkpoints").iterdir():
        assert mode(record) == 0o600, record


@pytest.mark.parametrize(
    "setting",
    [
        "admin:s3cr3tpw@pushgateway:9091",  # the scheme forgotten
        "http:/admin:s3cr3tpw@pushgateway:9091",  # a slash forgotten
        "ftp://admin:s3cr3tpw@pushgateway:9091",
        "http://admin:s3cr3tpw@pushgateway:9091/?token=s3cr3tpw",
        "http://pushgateway:9091/?token=s3cr3tpw",
    ],
)
def test_a_malformed_pushgateway_setting_is_refused_without_echoing_its_credentials(
    root: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("STALWART_PUSHGATEWAY", setting)
    pipeline = stalwart.Pipeline("p", root=root, alerters=[])
    pipeline.step(name="noop")(lambda ctx: None)
    err = io.StringIO()
    code = run_cli(["run", "--run-id", "r1", "--log-format", "text"], pipeline=pipeline, stderr=err)
    assert code == 2
    assert "STALWART_PUSHGATEWAY" in err.getvalue()
    assert "s3cr3tpw" not in err.getvalue()
