"""``runs``: every run of a pipeline, newest first, from one small summary file per run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_python
from stalwart import Pipeline
from stalwart._history import format_duration, list_runs, runs_table

SCRIPT = REPO / "tests" / "scripts" / "ops_pipeline.py"


def ops(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python([str(SCRIPT), *args], env={"STALWART_ROOT": str(root), **env})


def spawn_blocked(root: Path, run_id: str, step: str) -> subprocess.Popen[str]:
    """The pipeline, stopped inside ``step`` (holding the run lock) until told to go on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    env.update({"STALWART_ROOT": str(root), "OPS_BLOCK_STEP": step})
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--run-id", run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("READY"), process.stderr
    return process


def runs_json(root: Path, *args: str) -> list[dict[str, object]]:
    done = ops(root, "runs", "--json", *args)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["format"] == 1
    assert data["pipeline"] == "nightly"
    runs: list[dict[str, object]] = data["runs"]
    return runs


def test_succeeded_failed_running_and_killed_runs_are_listed_newest_first(root: Path) -> None:
    assert ops(root, "--run-id", "r1").returncode == 0
    failed = ops(root, "--run-id", "r2", OPS_FAIL="load", OPS_DEAD_LETTER="load")
    assert failed.returncode == 1
    process = spawn_blocked(root, "r3", "load")
    try:
        running = runs_json(root)
        assert [(r["run_id"], r["state"]) for r in running] == [
            ("r3", "running"),
            ("r2", "failed"),
            ("r1", "succeeded"),
        ]
    finally:
        process.kill()  # SIGKILL: no handler runs, the summary still says "running"
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    summary = json.loads((root / "nightly" / "runs" / "r3" / ".summary.json").read_text())
    assert summary["state"] == "running"

    runs = {r["run_id"]: r for r in runs_json(root)}
    assert runs["r3"]["state"] == "interrupted"
    assert runs["r3"]["note"] == "the process running it died"
    assert runs["r2"]["state"] == "failed"
    assert runs["r2"]["failed_step"] == "load"
    assert runs["r2"]["error_type"] == "ValueError"
    assert runs["r2"]["dead_letters_pending"] == 1
    assert runs["r1"]["state"] == "succeeded"
    assert runs["r1"]["failed_step"] == ""
    assert runs["r1"]["ran"] == 2
    assert isinstance(runs["r1"]["duration_s"], float)

    table = ops(root, "runs")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["RUN", "ID", "STATE"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["r3", "interrupted"],
        ["r2", "failed"],
        ["r1", "succeeded"],
    ]
    assert "ValueError: boom" in lines[2]


def test_limit_keeps_the_newest_and_must_be_positive(root: Path) -> None:
    for run_id in ("a", "b", "c"):
        assert ops(root, "--run-id", run_id).returncode == 0
    assert [r["run_id"] for r in runs_json(root, "--limit", "2")] == ["c", "b"]
    bad = ops(root, "runs", "--limit", "0")
    assert bad.returncode == 2
    assert "--limit must be 1 or more" in bad.stderr


def test_a_resumed_run_is_summarised_by_its_last_process(root: Path) -> None:
    assert ops(root, "--run-id", "r1", OPS_FAIL="extract").returncode == 1
    assert runs_json(root)[0]["failed_step"] == "extract"
    assert ops(root, "--run-id", "r1").returncode == 0
    [run] = runs_json(root)
    assert (run["state"], run["failed_step"], run["ran"], run["skipped"]) == ("succeeded", "", 2, 0)


def test_a_run_that_failed_before_its_first_step_names_no_step(root: Path) -> None:
    assert ops(root, "--run-id", "r1").returncode == 0
    marker = root / "nightly" / "runs" / "r1" / ".checkpoints" / "load.done"
    marker.unlink()
    marker.mkdir()  # --force must unlink it: EISDIR before any step, for root too
    assert ops(root, "--run-id", "r1", "--force").returncode == 1
    [run] = runs_json(root)
    assert (run["state"], run["failed_step"], run["error_type"]) == (
        "failed",
        "",
        "IsADirectoryError",
    )


def test_runs_without_a_summary_are_described_from_their_journal(root: Path) -> None:
    assert ops(root, "--run-id", "old-ok").returncode == 0
    assert ops(root, "--run-id", "old-bad", OPS_FAIL="load").returncode == 1
    for run_id in ("old-ok", "old-bad"):
        (root / "nightly" / "runs" / run_id / ".summary.json").unlink()
    (root / "nightly" / "runs" / "empty").mkdir()
    (root / "nightly" / "runs" / "not a run").mkdir()  # not a run ID: ignored
    runs = {r.run_id: r for r in list_runs(str(root / "nightly"), ["extract", "load"])}
    assert sorted(runs) == ["empty", "old-bad", "old-ok"]
    assert runs["old-ok"].state == "succeeded"
    assert (runs["old-bad"].state, runs["old-bad"].failed_step) == ("failed", "load")
    assert runs["empty"].state == "unknown"
    assert "older stalwart" in runs["old-ok"].note


def test_an_unreadable_summary_falls_back_to_the_journal(root: Path) -> None:
    assert ops(root, "--run-id", "r1").returncode == 0
    (root / "nightly" / "runs" / "r1" / ".summary.json").write_text("{not json")
    [run] = list_runs(str(root / "nightly"), ["extract", "load"])
    assert run.state == "succeeded"


def test_a_pipeline_without_runs_says_so(root: Path) -> None:
    assert runs_table("nightly", []) == "nightly: no runs yet"
    assert runs_json(root) == []


def test_durations_read_well() -> None:
    assert [format_duration(s) for s in (None, 0.254, 42.04, 185, 7384)] == [
        "",
        "0.25 s",
        "42.0 s",
        "3m05s",
        "2h03m",
    ]


def test_odd_summaries_are_read_with_care(root: Path) -> None:
    runs = root / "nightly" / "runs"
    for run_id, text in {
        "list": "[1, 2]",
        "odd": json.dumps({"state": "failed", "duration_s": True, "params": [1], "ran": -3}),
        "huge": " " * (1024 * 1024 + 1),
    }.items():
        (runs / run_id).mkdir(parents=True)
        (runs / run_id / ".summary.json").write_text(text)
    found = {r.run_id: r for r in list_runs(str(root / "nightly"), ["extract", "load"])}
    assert found["list"].state == "unknown"  # not an object: from the (empty) journal
    assert found["huge"].state == "unknown"
    odd = found["odd"]
    assert (odd.state, odd.duration_s, dict(odd.params), odd.ran) == ("failed", None, {}, 0)


def test_a_summary_that_cannot_be_written_is_logged_not_raised(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = Pipeline("nightly", root=root, alerters=[])
    pipeline.step(name="only")(lambda ctx: None)
    (root / "nightly" / "runs" / "r1" / ".summary.json").mkdir(parents=True)  # not replaceable
    assert pipeline.run(run_id="r1").ran == ("only",)
    assert "could not write the run summary" in caplog.text


def test_a_journal_with_a_step_still_running_or_killed(root: Path) -> None:
    run_dir = root / "nightly" / "runs" / "old"
    run_dir.mkdir(parents=True)
    (run_dir / ".journal.jsonl").write_text(
        '{"step": "extract", "runs": 1, "started": "2026-01-01T00:00:00.000000Z", '
        '"outcome": "running"}\n'
    )
    [run] = list_runs(str(root / "nightly"), ["extract", "load"])
    assert (run.state, run.started) == ("interrupted", "2026-01-01T00:00:00.000000Z")
