"""``--log-format json``: every line on stderr is a JSON object, with ``-v`` too (the
traceback goes in the final record's ``traceback`` field) and for ``deadletter`` errors."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_python

SCRIPT = """
import stalwart

pipeline = stalwart.Pipeline("js", alerters=[])

@pipeline.step()
def fetch(ctx):
    raise ValueError("boom\\nsecond line")

if __name__ == "__main__":
    pipeline.main()
"""


def records(stderr: str) -> list[dict[str, object]]:
    lines = stderr.splitlines()
    assert lines
    return [json.loads(line) for line in lines]  # raises on any line that is not JSON


def test_verbose_json_puts_the_traceback_in_a_field(tmp_path: Path) -> None:
    script = tmp_path / "js.py"
    script.write_text(SCRIPT)
    env = {"STALWART_ROOT": str(tmp_path / "state")}
    result = run_python([str(script), "--run-id", "r", "-v", "--log-format", "json"], env=env)
    assert result.returncode == 1
    last = records(result.stderr)[-1]
    assert last["exit_code"] == 1
    assert "Traceback (most recent call last)" in str(last["traceback"])
    assert "ValueError: boom" in str(last["traceback"])


def test_deadletter_errors_are_json_records(tmp_path: Path) -> None:
    script = tmp_path / "js.py"
    script.write_text(SCRIPT)
    env = {"STALWART_ROOT": str(tmp_path / "state")}
    unknown = "20261128T000000000000Z-deadbeef"
    letters = tmp_path / "state" / "js" / "deadletter"
    letters.mkdir(parents=True)
    (letters / f"{unknown}.json").write_text("{not json")  # corrupt: each command says so
    for action in ("replay", "show", "discard"):
        result = run_python(
            [str(script), "deadletter", action, unknown, "--log-format", "json"], env=env
        )
        assert result.returncode != 0
        assert any(unknown in str(r["message"]) for r in records(result.stderr)), action
