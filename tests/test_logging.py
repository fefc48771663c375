"""Logs: JSON lines a machine can query, text lines a person can read, the same fields."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stalwart import Context, HttpClient, Pipeline, RetryPolicy
from stalwart._logging import (
    ContextAdapter,
    ContextFilter,
    TextFormatter,
    configure,
    json_formatter,
    rfc3339,
)
from stalwart._scope import StepScope, current_scope
from stalwart._services import Emitter
from stalwart._time import utc_text
from stalwart.cli._main import run_cli
from stalwart.testing import FlakyServer, Reply, WaitRecorder

RFC3339_UTC = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """``configure`` is the CLI's: undo what it does to the root logger after each test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)


@pytest.fixture
def http() -> Iterator[HttpClient]:
    with HttpClient(retry=RetryPolicy(attempts=4)) as client:
        yield client


def daily(root: Path, http: HttpClient, server: FlakyServer, *, fail: bool = False) -> Pipeline:
    pipeline = Pipeline("daily", root=root, http=http, metrics=[])

    @pipeline.step
    def fetch(ctx: Context) -> None:
        rows = ctx.http.get(server.url("/orders")).json()
        ctx.log.info("fetched %d rows", len(rows), extra={"rows": len(rows)})

    @pipeline.step
    def report(ctx: Context) -> None:
        if fail:
            raise RuntimeError("report template missing")

    return pipeline


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines, "no log line at all"
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_cli_json_lines_parse_and_carry_run_id_and_step(
    root: Path,
    http: HttpClient,
    capsys: pytest.CaptureFixture[str],
    no_wait: WaitRecorder,
) -> None:
    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 2, then=Reply(json=[1, 2, 3]))
        code = run_cli(
            ["run", "--run-id", "r1", "--log-format", "json"], pipeline=daily(root, http, server)
        )
    assert code == 0
    records = json_lines(capsys.readouterr().err)
    for record in records:
        assert list(record)[:4] == ["timestamp", "level", "logger", "message"]
        assert RFC3339_UTC.match(record["timestamp"]), record["timestamp"]
        assert datetime.fromisoformat(record["timestamp"]).tzinfo == UTC
        assert (record["pipeline"], record["run_id"]) == ("daily", "r1"), record
    in_steps = [r for r in records if "step" in r]
    assert {r["step"] for r in in_steps} == {"fetch", "report"}
    retries = [r for r in records if "wait_s" in r]
    assert len(retries) == 2 == len(no_wait.waits)
    assert all(r["step"] == "fetch" and r["level"] == "WARNING" for r in retries)
    (mine,) = [r for r in records if r["message"] == "fetched 3 rows"]
    assert mine["logger"] == "stalwart.step.fetch"
    assert (mine["step"], mine["attempt"], mine["rows"]) == ("fetch", 1, 3)
    done = [r for r in records if r["logger"] == "stalwart.run" and "duration_s" in r]
    assert {r.get("step") for r in done} >= {"fetch", "report"}
    assert all(isinstance(r["duration_s"], float) for r in done)


def test_cli_json_lines_of_a_failed_run_carry_the_error(
    root: Path, http: HttpClient, capsys: pytest.CaptureFixture[str]
) -> None:
    with FlakyServer() as server:
        server.route("GET", "/orders", Reply(json=[]))
        code = run_cli(
            ["run", "--run-id", "r2", "--log-format", "json"],
            pipeline=daily(root, http, server, fail=True),
        )
    assert code == 1
    err = capsys.readouterr().err
    logged = [line for line in err.splitlines() if line.startswith("{")]
    records = json_lines("\n".join(logged))
    errors = [r for r in records if r["level"] == "ERROR" and r.get("step") == "report"]
    assert errors
    assert all(r["run_id"] == "r2" for r in errors)
    assert any("report template missing" in json.dumps(r) for r in errors)


def record(**extra: Any) -> logging.LogRecord:
    made = logging.LogRecord(
        "stalwart.http", logging.WARNING, __file__, 1, "GET %s -> %d", ("/x", 503), None
    )
    made.created = 1795000000.25
    made.__dict__.update(extra)
    return made


def test_text_and_json_carry_the_same_information() -> None:
    error = ConnectionError("connection reset by peer")
    exc_info = (ConnectionError, error, None)
    rec = record(
        pipeline="daily",
        run_id="r1",
        step="fetch",
        attempt=2,
        wait_s=1.5,
        status=503,
        error="Service Unavailable\nretry later",
        empty="",
    )
    rec.exc_info = exc_info
    as_json = json.loads(json_formatter().format(rec))
    as_text = TextFormatter().format(rec)
    first_line, _, traceback = as_text.partition("\n")
    assert as_json["timestamp"] == "2026-11-18T11:06:40.250Z"
    assert first_line == (
        "2026-11-18T11:06:40.250Z WARNING stalwart.http [daily/r1/fetch #2] GET /x -> 503"
        '  (wait_s=1.5 status=503 error="Service Unavailable\\nretry later" empty="")'
    )
    for key, value in as_json.items():
        if key == "exc_info":
            assert value == traceback.rstrip("\n")
            assert "ConnectionError: connection reset by peer" in value
        else:
            assert str(value) in as_text or json.dumps(value) in as_text, key


def test_text_without_run_context_keeps_attempt_as_a_field() -> None:
    line = TextFormatter().format(record(attempt=3, note="ok"))
    assert line.endswith("stalwart.http GET /x -> 503  (note=ok attempt=3)")
    assert "[" not in line
    stacked = record()
    stacked.stack_info = "Stack (most recent call last):\n  here"
    assert TextFormatter().format(stacked).endswith("\nStack (most recent call last):\n  here")


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
    assert rfc3339(1795000000.9999) == "2026-11-18T11:06:40.999Z"


def test_timestamps_in_turn_of_second_and_back_each_name_their_own_second() -> None:
    # The text of the last second is reused: each call must still name its own second,
    # whether it comes after another one, the same one, or an earlier one.
    for seconds in (1795000000.25, 1795000000.75, 1795000001.0, 1795000000.5, 86399.001, 0.0):
        whole = datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert rfc3339(seconds) == f"{whole}.{int((seconds % 1) * 1000):03d}Z"
        assert utc_text(seconds) == f"{whole}.{int((seconds % 1) * 10**6):06d}Z"


@pytest.mark.parametrize(
    ("tty", "expected"),
    [(False, "json"), (True, "text")],
)
def test_the_default_format_is_text_on_a_terminal_and_json_otherwise(
    tty: bool, expected: str
) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    stream = Stream()
    handler = configure(stream=stream)
    logging.getLogger("stalwart.test").info("hello", extra={"step": "fetch"})
    logging.getLogger().removeHandler(handler)
    line = stream.getvalue().strip()
    if expected == "json":
        assert json.loads(line)["step"] == "fetch"
    else:
        assert line.endswith("INFO    stalwart.test [fetch] hello")


def test_configure_verbose_lets_debug_through() -> None:
    logging.getLogger().setLevel(logging.WARNING)
    stream = io.StringIO()
    handler = configure("text", verbose=True, stream=stream)
    assert logging.getLogger().level == logging.DEBUG
    logging.getLogger("stalwart.test").debug("details")
    logging.getLogger().removeHandler(handler)
    assert "DEBUG   stalwart.test details" in stream.getvalue()
    handler = configure("json", stream=stream)  # not verbose: the level stays as low as it was
    logging.getLogger().removeHandler(handler)
    assert logging.getLogger().level == logging.DEBUG


def test_other_loggers_get_the_running_steps_context() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("some.library")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    scope = StepScope(pipeline="daily", run_id="r1", step="fetch", emit=Emitter([]))
    token = current_scope.set(scope)
    try:
        logger.info("inside")
        logger.info("explicit", extra={"step": "other"})
    finally:
        current_scope.reset(token)
        logger.info("outside")
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    inside, explicit, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["pipeline"], inside["run_id"], inside["step"]) == ("daily", "r1", "fetch")
    assert explicit["step"] == "other", "a record's own field wins"
    assert "run_id" not in outside


def test_a_calls_own_extra_wins_over_the_adapters_context(caplog: pytest.LogCaptureFixture) -> None:
    log = ContextAdapter(logging.getLogger("stalwart.step.fetch"), {"step": "fetch", "attempt": 1})
    with caplog.at_level(logging.INFO):
        log.info("one", extra={"attempt": 2, "rows": 5})
        log.info("two")
    one, two = caplog.records
    assert (one.step, one.attempt, one.rows) == ("fetch", 2, 5)  # type: ignore[attr-defined]
    assert two.attempt == 1  # type: ignore[attr-defined]


def test_log_extra_none_is_accepted(root: Path) -> None:
    pipeline = Pipeline("l", root=root, alerters=[])

    @pipeline.step()
    def talk(ctx: Context) -> None:
        ctx.log.info("hello", extra=None)

    assert pipeline.run(run_id="r1").ran == ("talk",)
