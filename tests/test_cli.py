"""The ``stalwart`` console script and ``pipeline.main()``: targets (file, file:name,
module:name), status, a failing step's one-paragraph message, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_python
from stalwart._time import today

SCRIPT = Path(__file__).parent / "scripts" / "steps_pipeline.py"
STALWART = Path(sys.executable).parent / "stalwart"  # the console script of this venv

TWO_PIPELINES = """
import stalwart

first = stalwart.Pipeline("first")
second = stalwart.Pipeline("second")


@first.step()
def one(ctx):
    ctx.write_text("one.txt", "1")


@second.step()
def two(ctx):
    ctx.write_text("two.txt", "2")
"""


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.root = tmp_path / "state"
        self.trace = tmp_path / "trace"
        self.vars = {"STALWART_ROOT": str(self.root), "TEST_TRACE": str(self.trace)}

    def stalwart(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_python([str(STALWART), *args], env={**self.vars, **env}, cwd=self.tmp_path)

    def ran(self) -> list[str]:
        return [line.split()[0] for line in self.trace.read_text().splitlines()]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_run_a_file_then_status(env: Env) -> None:
    first = env.stalwart("run", str(SCRIPT), "--run-id", "r1", "--log-format", "text")
    assert first.returncode == 0, first.stderr
    # Imported under its own name: its `if __name__ == "__main__"` block did not run too.
    assert env.ran() == ["fetch", "transform", "upload"]
    status = env.stalwart("status", str(SCRIPT), "--run-id", "r1")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("orders, run r1")
    rows = [line.split()[:2] for line in status.stdout.splitlines()]
    states = [row for row in rows if row and row[0] in ("fetch", "transform", "upload")]
    assert states == [["fetch", "done"], ["transform", "done"], ["upload", "done"]]


def test_run_file_with_name_and_force(env: Env) -> None:
    target = f"{SCRIPT}:pipeline"
    assert env.stalwart("run", target, "--run-id", "r1").returncode == 0
    again = env.stalwart("run", target, "--run-id", "r1", "--force", "--log-format", "text")
    assert again.returncode == 0, again.stderr
    assert env.ran() == ["fetch", "transform", "upload"] * 2


def test_run_module_with_name(env: Env) -> None:
    package = env.tmp_path / "mods"
    package.mkdir()
    (package / "nightly_jobs.py").write_text(TWO_PIPELINES)
    result = env.stalwart("run", "nightly_jobs:second", "--run-id", "r1", PYTHONPATH=str(package))
    assert result.returncode == 0, result.stderr
    assert (env.root / "second" / "runs" / "r1" / "two.txt").read_text() == "2"
    assert not (env.root / "first").exists()
    status = env.stalwart("status", "nightly_jobs:second", "--run-id", "r1", "--json",
                          PYTHONPATH=str(package))  # fmt: skip
    assert json.loads(status.stdout)["steps"][0]["state"] == "done"


def test_two_pipelines_without_a_name_is_a_usage_error(env: Env) -> None:
    path = env.tmp_path / "jobs.py"
    path.write_text(TWO_PIPELINES)
    result = env.stalwart("run", str(path), "--run-id", "r1")
    assert result.returncode == 2
    assert "defines several pipelines (first, second)" in result.stderr
    assert f"name one as {path}:NAME" in result.stderr
    assert not env.root.exists()
    picked = env.stalwart("run", f"{path}:first", "--run-id", "r1")
    assert picked.returncode == 0, picked.stderr
    assert (env.root / "first" / "runs" / "r1" / "one.txt").exists()


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("{dir}/missing.py", "no pipeline file at"),
        ("{script}:nope", "'nope' is not a stalwart.Pipeline"),
        ("no_such_module_xyz:p", "cannot import pipeline module 'no_such_module_xyz'"),
        ("{dir}/empty.py", "defines no stalwart.Pipeline"),
    ],
)
def test_bad_targets_exit_2(env: Env, target: str, says: str) -> None:
    (env.tmp_path / "empty.py").write_text("x = 1\n")
    result = env.stalwart("run", target.format(dir=env.tmp_path, script=SCRIPT), "--run-id", "r1")
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert not env.root.exists()


def test_failing_step_prints_one_paragraph_without_traceback(env: Env) -> None:
    result = env.stalwart(
        "run", str(SCRIPT), "--run-id", "r1", "--log-format", "text", TEST_FAIL_STEP="transform"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    paragraph = result.stderr[result.stderr.index("stalwart: step transform") :]
    first, error, hint = paragraph.splitlines()
    assert paragraph.endswith("\n")
    assert first.startswith(
        "stalwart: step transform of orders (run r1) failed; resume with: "
        f"cd {env.tmp_path} && stalwart run {SCRIPT}"
    )
    assert first.endswith(" --run-id r1.")
    assert error == "  ValueError: boom in transform"
    assert hint == "  Finished steps keep their checkpoints. Add --verbose for the traceback."
    # The resume command it prints works, and resumes at the failed step.
    directory, command = first.split("resume with: cd ", 1)[1].rstrip(".").split(" && ")
    assert directory == str(env.tmp_path)
    resume = command.removeprefix("stalwart ").split()
    resumed = env.stalwart(*resume, "--log-format", "text")
    assert resumed.returncode == 0, resumed.stderr
    assert "step fetch already done, skipping" in resumed.stderr
    assert env.ran() == ["fetch", "transform", "transform", "upload"]


def test_failing_step_runs_no_later_step(env: Env) -> None:
    result = env.stalwart("run", str(SCRIPT), "--run-id", "r1", TEST_FAIL_STEP="transform")
    assert result.returncode == 1
    assert env.ran() == ["fetch", "transform"]


def test_failing_step_with_verbose_shows_the_traceback(env: Env) -> None:
    result = env.stalwart(
        "run",
        str(SCRIPT),
        "--run-id",
        "r1",
        "--verbose",
        "--log-format",
        "text",
        TEST_FAIL_STEP="fetch",
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert 'raise ValueError(f"boom in {ctx.step}")' in result.stderr
    assert "ValueError: boom in fetch" in result.stderr
    assert "Add --verbose" not in result.stderr


def test_main_defaults_to_run_and_todays_run_id(env: Env) -> None:
    before = today()
    result = run_python([str(SCRIPT)], env=env.vars)
    after = today()
    assert result.returncode == 0, result.stderr
    runs = sorted(p.name for p in (env.root / "orders" / "runs").iterdir())
    assert runs in ([before], [after])


def test_json_logs_carry_the_run_context(env: Env) -> None:
    assert run_python([str(SCRIPT), "--run-id", "r1"], env=env.vars).returncode == 0
    again = run_python([str(SCRIPT), "--run-id", "r1", "--log-format", "json"], env=env.vars)
    assert again.returncode == 0
    records = [json.loads(line) for line in again.stderr.splitlines()]
    skips = [r for r in records if r["message"] == "step fetch already done, skipping"]
    assert len(skips) == 1
    assert skips[0]["level"] == "INFO"
    assert (skips[0]["pipeline"], skips[0]["run_id"], skips[0]["step"]) == ("orders", "r1", "fetch")
    assert all("timestamp" in r and "logger" in r for r in records)


def test_usage_errors_exit_2(env: Env) -> None:
    for argv in (["--force", "--step", "fetch"], ["--no-such-option"], ["--log-format", "xml"]):
        result = run_python([str(SCRIPT), *argv], env=env.vars)
        assert result.returncode == 2, argv
        assert "usage:" in result.stderr
    assert not env.root.exists()
