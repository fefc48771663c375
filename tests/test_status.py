"""`status`: a person's table and a machine's JSON, for every state a step can be in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import stalwart
from stalwart._checkpoint import RunLock, StepRecord
from stalwart._lock import lock_holder
from stalwart.cli._main import run_cli
from stalwart.cli._status import collect


def make(root: Path, *, fail: bool = False) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("s", root=root, alerters=[])

    @pipeline.step()
    def one(ctx: stalwart.Context) -> None:
        ctx.write_text("one.txt", "1" * 1500)

    @pipeline.step()
    def two(ctx: stalwart.Context) -> None:
        if fail:
            raise RuntimeError("two broke")
        ctx.write_text("two.txt", "2")

    return pipeline


def states(pipeline: stalwart.Pipeline, run_id: str = "r1") -> dict[str, str]:
    return {row.step: row.state for row in collect(pipeline, run_id)}


def test_status_of_a_run_that_never_started(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = make(root)
    pipeline.run(run_id="other")
    assert run_cli(["status", "--run-id", "r1"], pipeline=pipeline) == 0
    out = capsys.readouterr().out
    assert "this run has not started yet; other runs: other" in out
    assert states(pipeline) == {"one": "pending", "two": "pending"}
    assert not pipeline.run_dir("r1").exists()  # status creates nothing


def test_status_table_and_json_after_a_failure(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = make(root, fail=True)
    with pytest.raises(RuntimeError):
        pipeline.run(run_id="r1")
    assert run_cli(["status", "--run-id", "r1"], pipeline=pipeline) == 0
    table = capsys.readouterr().out
    assert "one.txt (1.5 kB)" in table
    assert "RuntimeError: two broke" in table
    assert run_cli(["status", "--run-id", "r1", "--json"], pipeline=pipeline) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == 1
    assert data["locked_by"] is None
    assert [(s["step"], s["state"]) for s in data["steps"]] == [("one", "done"), ("two", "failed")]
    assert data["steps"][0]["outputs"][0]["size"] == 1500


def test_stale_corrupt_and_running_states(root: Path) -> None:
    pipeline = make(root)
    pipeline.run(run_id="r1")
    run_dir = pipeline.run_dir("r1")
    (run_dir / "one.txt").unlink()
    (run_dir / ".checkpoints" / "two.done").write_text("{broken")
    assert states(pipeline) == {"one": "stale", "two": "corrupt"}
    with RunLock(run_dir / ".lock"):
        assert f"pid {os.getpid()}" in (lock_holder(run_dir) or "")
    assert lock_holder(run_dir) is None


def test_a_step_whose_process_died_shows_interrupted(root: Path) -> None:
    pipeline = make(root)
    pipeline.run(run_id="r1")
    store = pipeline.checkpoints("r1")
    store.clear(["two"])
    record = store.read_record("two")
    store.write_record("two", StepRecord(runs=record.runs + 1, started="x", outcome="running"))
    assert states(pipeline)["two"] == "interrupted"
    with RunLock(pipeline.run_dir("r1") / ".lock"):
        assert states(pipeline)["two"] == "running"


def test_status_of_a_running_run_says_who(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = make(root)
    pipeline.run(run_id="r1")
    with RunLock(pipeline.run_dir("r1") / ".lock"):
        assert run_cli(["status", "--run-id", "r1"], pipeline=pipeline) == 0
    assert f"running now: pid {os.getpid()}" in capsys.readouterr().out
