"""The Slack webhook URL quoted by a step's own exception is masked in every record from the
first one: the step-failed log, every field of every JSON record (the final ``error`` field
and the traceback included), the alert posted to a real (local) webhook, ``status``."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

import stalwart
from stalwart._logging import SecretFilter, TextFormatter
from stalwart._redact import RecordScrubber, register_secret
from stalwart.cli._main import run_cli
from stalwart.testing import FlakyServer, Reply


def test_webhook_url_in_a_step_exception_never_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FlakyServer() as slack:
        slack.route("POST", "/services/T0001/B0001/XyZsecretPart42", Reply(body="ok"))
        webhook = slack.url("/services/T0001/B0001/XyZsecretPart42")
        monkeypatch.setenv("SLACK_WEBHOOK_URL", webhook)
        pipeline = stalwart.Pipeline("hook", root=tmp_path)

        @pipeline.step()
        def notify(ctx: stalwart.Context) -> None:
            raise ConnectionError(f"could not post to {webhook}")

        for flags in (["--log-format", "json"], ["-v", "--log-format", "json"]):
            assert run_cli(["run", "--run-id", "r", *flags], pipeline=pipeline) == 1
        assert run_cli(["status", "--run-id", "r", "--json"], pipeline=pipeline) == 0
        # The second run fails the same way: one alert per streak.
        assert slack.count("POST", "/services/T0001/B0001/XyZsecretPart42") == 1
        posted = [r.body.decode() for r in slack.requests]
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in err.splitlines()]
    final = [r for r in records if "exit_code" in r]
    assert len(final) == 2
    assert "ConnectionError" in final[0]["error"]
    assert "Traceback" in final[1]["traceback"]
    files = [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    for text in (out, err, *posted, *files):
        assert "XyZsecretPart42" not in text


def test_the_cli_handler_scrubs_message_fields_and_traceback() -> None:
    register_secret("scrubber-secret-7781")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.addFilter(RecordScrubber())
    logger = logging.getLogger("stalwart.test.scrubber")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        error = ValueError("inside scrubber-secret-7781")
        logger.error(
            "got %s",
            "scrubber-secret-7781",
            exc_info=(ValueError, error, None),
            extra={"error": "scrubber-secret-7781"},
        )
        logger.error("bad %d format", "not a number")  # logging's own error path, no crash
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = stream.getvalue()
    assert "scrubber-secret-7781" not in text
    assert text.count("***") >= 3
    assert "ValueError: inside ***" in text


def test_the_cli_filter_loads_the_scrubber_only_once_a_secret_can_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Secrets are registered through ``_redact``: while it is not loaded (a run that reads
    no webhook or token) the CLI's filter passes records as they are and loads nothing."""
    import stalwart._redact as redact  # noqa: PLC0415 - put back after the first half

    secret_filter = SecretFilter()
    args = ("secretfilter-5512",)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", args, None)
    with monkeypatch.context() as patch:
        patch.delitem(sys.modules, "stalwart._redact")
        assert secret_filter.filter(record) is True
        assert "stalwart._redact" not in sys.modules  # not loaded by the filter
        assert record.getMessage() == "token secretfilter-5512"
    register_secret("secretfilter-5512")
    assert redact.scrub_registered("secretfilter-5512") == "***"
    assert secret_filter.filter(record) is True
    assert record.getMessage() == "token ***"


def test_a_scrubber_module_still_being_imported_by_this_thread_is_not_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_redact`` in ``sys.modules`` but its body not run yet (this very thread imports it,
    and something logs meanwhile): no secret can exist yet, and logging must not raise."""
    import types  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "stalwart._redact", types.ModuleType("stalwart._redact"))
    monkeypatch.delattr("stalwart._redact", raising=False)  # the package attribute too
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain", (), None)
    assert SecretFilter().filter(record) is True
