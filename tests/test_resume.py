"""Restarts: done steps are skipped, --force / --step / reset re-run exactly the right steps,
a changed output or a corrupt marker makes its step run again (with a reason), never a crash."""

from __future__ import annotations

import io
import json
import logging
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import stalwart
from conftest import run_python
from stalwart._atomic import is_temp_name
from stalwart._checkpoint import CheckpointStore
from stalwart.cli._main import run_cli

SCRIPT = Path(__file__).parent / "scripts" / "steps_pipeline.py"
STEPS = ["fetch", "transform", "upload"]


class Script:
    """Runs ``tests/scripts/steps_pipeline.py`` as a real process; reads what it did."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "state"
        self.trace = tmp_path / "trace"
        self._seen = 0

    def run_dir(self, run_id: str = "r1") -> Path:
        return self.root / "orders" / "runs" / run_id

    def markers(self, run_id: str = "r1") -> list[str]:
        directory = self.run_dir(run_id) / ".checkpoints"
        return sorted(p.name[: -len(".done")] for p in directory.glob("*.done"))

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        if not argv or argv[0] not in ("status", "reset"):
            argv = ["run", *argv]
        if "--run-id" not in argv:
            argv += ["--run-id", "r1"]
        return run_python(
            [str(SCRIPT), *argv, "--log-format", "text"],
            env={"STALWART_ROOT": str(self.root), "TEST_TRACE": str(self.trace), **env},
        )

    def ran(self) -> list[str]:
        """The steps that started since the last call, in order."""
        lines = self.trace.read_text().splitlines() if self.trace.exists() else []
        new, self._seen = lines[self._seen :], len(lines)
        return [line.split()[0] for line in new]


@pytest.fixture
def script(tmp_path: Path) -> Script:
    return Script(tmp_path)


def make_pipeline(root: Path, calls: list[str]) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("orders", root=root)

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        calls.append(ctx.step)
        ctx.write_text("fetch.out", "orders\n")

    @pipeline.step()
    def transform(ctx: stalwart.Context) -> None:
        calls.append(ctx.step)
        ctx.write_text("transform.out", ctx.read_text("fetch.out").upper())

    @pipeline.step()
    def upload(ctx: stalwart.Context) -> None:
        calls.append(ctx.step)
        ctx.write_json("upload.json", {"sent": ctx.read_text("transform.out")})

    return pipeline


# -- real processes -------------------------------------------------------------------------


def test_restart_skips_every_done_step(script: Script) -> None:
    first = script()
    assert first.returncode == 0, first.stderr
    assert script.ran() == STEPS
    assert script.markers() == sorted(STEPS)
    outputs = {p.name: p.read_bytes() for p in script.run_dir().glob("*.out")}
    assert sorted(outputs) == ["fetch.out", "transform.out", "upload.out"]

    second = script()
    assert second.returncode == 0, second.stderr
    assert script.ran() == []
    for step in STEPS:
        assert f"step {step} already done, skipping" in second.stderr
    assert "ran 0, skipped 3, failed 0" in second.stderr
    assert {p.name: p.read_bytes() for p in script.run_dir().glob("*.out")} == outputs


def test_force_reruns_every_step(script: Script) -> None:
    assert script().returncode == 0
    script.ran()
    forced = script("--force")
    assert forced.returncode == 0, forced.stderr
    assert script.ran() == STEPS
    assert "--force: cleared 3 marker(s) of run r1" in forced.stderr
    assert "already done" not in forced.stderr
    assert script.markers() == sorted(STEPS)


def test_step_reruns_that_step_and_the_ones_after_it(script: Script) -> None:
    assert script().returncode == 0
    script.ran()
    again = script("--step", "transform")
    assert again.returncode == 0, again.stderr
    assert script.ran() == ["transform", "upload"]
    assert "step fetch already done, skipping" in again.stderr
    assert "already done, skipping" not in again.stderr.split("step fetch already done")[1]
    last = script("--step", "upload")
    assert last.returncode == 0
    assert script.ran() == ["upload"]


def test_step_runs_earlier_steps_that_are_not_done(script: Script) -> None:
    result = script("--step", "transform")
    assert result.returncode == 0, result.stderr
    assert script.ran() == STEPS


def test_unknown_step_is_a_usage_error(script: Script) -> None:
    result = script("--step", "nope")
    assert result.returncode == 2
    assert "unknown step 'nope'" in result.stderr
    assert "fetch, transform, upload" in result.stderr
    assert script.ran() == []


def test_a_new_run_id_runs_fresh(script: Script) -> None:
    assert script().returncode == 0
    r1_markers = {p.name: p.read_bytes() for p in (script.run_dir() / ".checkpoints").iterdir()}
    script.ran()
    result = script("--run-id", "r2")
    assert result.returncode == 0, result.stderr
    assert script.ran() == STEPS
    assert "already done" not in result.stderr
    assert script.markers("r2") == sorted(STEPS)
    after = {p.name: p.read_bytes() for p in (script.run_dir() / ".checkpoints").iterdir()}
    assert after == r1_markers
    assert (script.run_dir("r2") / "fetch.out").read_text().endswith("orders of r2\n")


def test_status_shows_done_failed_and_pending(script: Script) -> None:
    failed = script(TEST_FAIL_STEP="transform")
    assert failed.returncode == 1
    assert script.ran() == ["fetch", "transform"]
    status = script("status", "--run-id", "r1", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    states = {row["step"]: row for row in report["steps"]}
    assert [states[s]["state"] for s in STEPS] == ["done", "failed", "pending"]
    assert states["transform"]["error"] == "ValueError: boom in transform"
    assert states["fetch"]["outputs"][0]["name"] == "fetch.out"
    assert report["locked_by"] is None

    table = script("status", "--run-id", "r1")
    assert table.returncode == 0
    lines = [line for line in table.stdout.splitlines() if line.strip()]
    rows = {line.split()[0]: line for line in lines if line.split()[0] in STEPS}
    assert rows["fetch"].split()[1] == "done"
    assert "fetch.out" in rows["fetch"]
    assert rows["transform"].split()[1] == "failed"
    assert "boom in transform" in rows["transform"]
    assert rows["upload"].split()[1] == "pending"


def test_status_after_rerun_from_a_step_shows_later_steps_pending(script: Script) -> None:
    assert script().returncode == 0
    assert script("--step", "transform", TEST_FAIL_STEP="transform").returncode == 1
    report = json.loads(script("status", "--run-id", "r1", "--json").stdout)
    assert [row["state"] for row in report["steps"]] == ["done", "failed", "pending"]


def test_reset_clears_exactly_the_right_markers(script: Script) -> None:
    assert script().returncode == 0
    script.ran()
    partial = script("reset", "--run-id", "r1", "--step", "transform")
    assert partial.returncode == 0, partial.stderr
    assert partial.stdout.strip() == "cleared 2 marker(s) of run r1: transform, upload"
    assert script.markers() == ["fetch"]
    assert script.ran() == []  # reset runs nothing
    everything = script("reset", "--run-id", "r1")
    assert everything.stdout.strip() == "cleared 1 marker(s) of run r1: fetch"
    assert script.markers() == []
    assert (script.run_dir() / "fetch.out").exists()  # outputs are not touched
    assert script().returncode == 0
    assert script.ran() == STEPS


def test_reset_of_a_run_that_never_started(script: Script) -> None:
    result = script("reset", "--run-id", "never")
    assert result.returncode == 0
    assert result.stdout.strip() == "cleared 0 marker(s) of run never"
    assert not script.run_dir("never").exists()


# -- outputs and markers that changed under us (in-process) ----------------------------------


def run(pipeline: stalwart.Pipeline, *argv: str) -> int:
    return run_cli([*argv, "--run-id", "r1", "--log-format", "text"], pipeline=pipeline)


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def pipeline(root: Path, calls: list[str]) -> stalwart.Pipeline:
    built = make_pipeline(root, calls)
    assert run(built) == 0
    assert calls == STEPS
    calls.clear()
    return built


def test_deleted_output_makes_its_step_run_again(
    pipeline: stalwart.Pipeline, calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = pipeline.run_dir("r1")
    (run_dir / "transform.out").unlink()
    with caplog.at_level(logging.INFO):
        assert run(pipeline) == 0
    assert calls == ["transform"]
    assert "step transform will run again: its output transform.out is missing" in caplog.text
    assert (run_dir / "transform.out").read_text() == "ORDERS\n"


def test_resized_output_makes_its_step_run_again(
    pipeline: stalwart.Pipeline, calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = pipeline.run_dir("r1")
    (run_dir / "fetch.out").write_text("truncated")
    with caplog.at_level(logging.INFO):
        assert run(pipeline) == 0
    assert calls == ["fetch"]
    assert "its output fetch.out changed size (7 -> 9 bytes)" in caplog.text
    assert (run_dir / "fetch.out").read_text() == "orders\n"


def test_same_size_edit_is_not_detected(pipeline: stalwart.Pipeline, calls: list[str]) -> None:
    """Documented limit: only the size is checked on restart (no rehash of big outputs)."""
    (pipeline.run_dir("r1") / "fetch.out").write_text("ORDERS\n")
    assert run(pipeline) == 0
    assert calls == []


def _other_step(store: CheckpointStore) -> bytes:
    return store.marker_path("fetch").read_bytes()


CORRUPTIONS: dict[str, Callable[[bytes, CheckpointStore], bytes]] = {
    "truncated JSON": lambda raw, store: raw[: len(raw) // 2],
    "random bytes": lambda raw, store: random.Random(7).randbytes(512),
    "empty": lambda raw, store: b"",
    "wrong types": lambda raw, store: raw.replace(b'"runs":1', b'"runs":"one"'),
    "marker of another step": lambda raw, store: _other_step(store),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_marker_is_a_warning_and_a_rerun(
    pipeline: stalwart.Pipeline,
    calls: list[str],
    caplog: pytest.LogCaptureFixture,
    corrupt: Callable[[bytes, CheckpointStore], bytes],
) -> None:
    store = pipeline.checkpoints("r1")
    path = store.marker_path("transform")
    damaged = corrupt(path.read_bytes(), store)
    assert damaged != path.read_bytes()
    path.write_bytes(damaged)
    with caplog.at_level(logging.INFO):
        assert run(pipeline) == 0
    assert calls == ["transform"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "step transform: its marker" in r.getMessage()
        and "running it again" in r.getMessage()
        and ("is corrupt" in r.getMessage() or "belongs to step 'fetch'" in r.getMessage())
        for r in warnings
    ), [r.getMessage() for r in warnings]
    assert "Traceback" not in caplog.text
    assert store.check("transform", run_id="r1").done  # a fresh, valid marker


def test_marker_counts_runs_across_processes(script: Script) -> None:
    assert script(TEST_FAIL_STEP="transform").returncode == 1
    assert script(TEST_FAIL_STEP="transform").returncode == 1
    assert script().returncode == 0
    store = CheckpointStore(script.run_dir())
    marker = store.read_marker("transform")
    assert marker is not None
    assert marker.runs == 3
    fetch = store.read_marker("fetch")
    assert fetch is not None
    assert fetch.runs == 1
    assert [o.name for o in marker.outputs] == ["transform.out"]
    assert marker.outputs[0].size == (script.run_dir() / "transform.out").stat().st_size


def test_run_leaves_no_temp_files_and_reports_a_summary(
    root: Path, calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = make_pipeline(root, calls)
    err = io.StringIO()
    with caplog.at_level(logging.INFO):
        argv = ["--run-id", "r1", "--log-format", "text"]
        assert run_cli(argv, pipeline=pipeline, stderr=err) == 0
    assert "run r1 of orders: success in" in caplog.text
    assert "(ran 3, skipped 0, failed 0)" in caplog.text
    assert not [p for p in root.rglob("*") if is_temp_name(p.name)]
    result = pipeline.run(run_id="r1")
    assert result.ran == ()
    assert result.skipped == tuple(STEPS)
