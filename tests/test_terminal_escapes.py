"""Names and messages from outside reach the terminal escaped: an ANSI escape or a newline
in an output name, a step's error, a lock note or a dead letter never clears the screen or
forges a row of a table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import stalwart
from stalwart import DeadLetterStore
from stalwart._logging import TextFormatter
from stalwart._printable import printable
from stalwart.cli._main import run_cli

HOSTILE = "\x1b[2J\x1b[H\nfetch            done   \u202eforged\x9b"


def test_printable_escapes_every_control_character() -> None:
    assert printable("a\x1b[31mb\nc\td\x7f\x9b\u2028\u202e") == (
        "a\\x1b[31mb\\nc\\td\\x7f\\x9b\\u2028\\u202e"
    )
    assert printable("plain — ünïcode ✓") == "plain — ünïcode ✓"


def test_status_escapes_output_names_errors_and_the_lock_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = stalwart.Pipeline("esc", root=tmp_path, alerters=[])

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        ctx.write_text(f"out{HOSTILE}.txt", "x")

    @pipeline.step()
    def load(ctx: stalwart.Context) -> None:
        raise RuntimeError(f"server said {HOSTILE}")

    assert run_cli(["run", "--run-id", "r"], pipeline=pipeline) == 1
    (pipeline.run_dir("r") / ".lock").write_text(f"pid 1 {HOSTILE}")  # a note left behind
    capsys.readouterr()
    assert run_cli(["status", "--run-id", "r"], pipeline=pipeline) == 0
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert "\x1b" not in stream
        assert "\u202e" not in stream
        assert "\x9b" not in stream
    lines = captured.out.splitlines()
    assert len(lines) == 4  # title, header, fetch, load: no forged row
    assert "\\x1b[2J" in lines[2]
    assert "\\x1b[2J" in lines[3]


def test_deadletter_list_and_errors_escape_envelope_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = DeadLetterStore(tmp_path / "dl" / "deadletter", pipeline="dl")
    store.write(
        {
            "kind": "payload",
            "reason": HOSTILE,
            "step": HOSTILE,
            "run_id": HOSTILE,
            "pipeline": HOSTILE,
            "created_at": "2026-11-28T00:00:00.000000Z",
        }
    )
    pipeline = stalwart.Pipeline("dl", root=tmp_path, alerters=[])
    assert run_cli(["deadletter", "list"], pipeline=pipeline) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert len(out.splitlines()) == 2  # header and one row


def test_deadletter_show_prints_the_same_json_with_c1_and_bidi_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = DeadLetterStore(tmp_path / "dl" / "deadletter", pipeline="dl")
    envelope_id = store.write(
        {
            "kind": "payload",
            "reason": HOSTILE + " café",
            "created_at": "2026-11-28T00:00:00.000000Z",
        }
    )
    pipeline = stalwart.Pipeline("dl", root=tmp_path, alerters=[])
    assert run_cli(["deadletter", "show", envelope_id], pipeline=pipeline) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\x9b" not in out
    assert "\u202e" not in out
    assert "café" in out  # readable text stays readable
    assert json.loads(out)["reason"] == HOSTILE + " café"  # the same value


def test_text_logs_escape_control_characters_in_messages_and_fields() -> None:
    formatter = TextFormatter()
    record = logging.LogRecord("stalwart.run", logging.ERROR, "", 0, "failed: %s", (HOSTILE,), None)
    record.error = HOSTILE
    line = formatter.format(record)
    assert "\n" not in line
    assert "\x1b" not in line
    assert "\u202e" not in line
    assert "\\x1b[2J" in line
