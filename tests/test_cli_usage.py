"""The command line as a new user meets it: ``python -m stalwart``, a pipeline's ``--help``,
a mistyped command, a pipeline file that cannot be imported, ``--version``, the resume hint
pasted into another directory, and ``status`` with many outputs or many runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import stalwart
from test_step_model import Project

ONE_STEP = """
@pipeline.step()
def only(ctx):
    trace(ctx)
    if os.environ.get("FAIL"):
        raise ValueError("boom")
    for i in range(int(os.environ.get("OUTPUTS", "1"))):
        ctx.write_text(f"out/part-{i:03d}.csv", "x")
"""


def test_python_dash_m_stalwart_is_the_stalwart_command(tmp_path: Path) -> None:
    project = Project(tmp_path, ONE_STEP)
    result = project.stalwart("run", str(project.file), "--run-id", "r1")
    assert result.returncode == 0, result.stderr
    assert project.ran() == ["only"]
    helped = project.stalwart("--help")
    assert helped.returncode == 0
    assert "status" in helped.stdout
    assert "demo" in helped.stdout


def test_a_pipelines_help_shows_the_run_options(tmp_path: Path) -> None:
    helped = Project(tmp_path, ONE_STEP).run("--help")
    assert helped.returncode == 0
    for option in ("--run-id", "--force", "--step", "--param", "--log-format"):
        assert option in helped.stdout
    assert "status, reset, deadletter" in helped.stdout


@pytest.mark.parametrize(
    ("word", "hint"), [("stauts", "did you mean status?"), ("rset", "did you mean reset?")]
)
def test_a_mistyped_command_is_exit_2_with_the_closest_name(
    tmp_path: Path, word: str, hint: str
) -> None:
    project = Project(tmp_path, ONE_STEP)
    own = project.run(word)
    assert own.returncode == 2
    assert hint in own.stderr
    assert project.ran() == []
    standalone = project.stalwart(word, str(project.file))
    assert standalone.returncode == 2
    assert hint in standalone.stderr


@pytest.mark.parametrize(
    "source",
    ["import no_such_module_here\n", "raise RuntimeError('config missing')\n", "def broken(:\n"],
    ids=["import-error", "error-at-import", "syntax-error"],
)
def test_a_pipeline_that_cannot_be_imported_is_exit_2(tmp_path: Path, source: str) -> None:
    (tmp_path / "bad.py").write_text(source)
    project = Project(tmp_path, ONE_STEP)
    result = project.stalwart("run", str(tmp_path / "bad.py"))
    assert result.returncode == 2, result.stderr
    assert "cannot import pipeline file" in result.stderr
    assert "the run failed" not in result.stderr
    module = project.stalwart("status", "bad:pipeline")
    assert module.returncode == 2
    assert "cannot import pipeline module 'bad'" in module.stderr


def test_version_goes_to_stdout(tmp_path: Path) -> None:
    result = Project(tmp_path, ONE_STEP).stalwart("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"stalwart {stalwart.__version__}"


def test_the_resume_hint_works_pasted_into_another_directory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    project = Project(work, ONE_STEP)
    # The default state root is relative: the hint must not start a fresh run from $HOME.
    project.file.write_text(
        project.file.read_text().replace(f"root={str(project.state)!r}", 'root="rel-state"')
    )
    failed = project.run("--run-id", "r1", env={"FAIL": "1"})
    assert failed.returncode == 1
    hint = failed.stderr.split("resume with: ", 1)[1].split(".\n", 1)[0]
    assert hint.startswith(f"cd {work} && python ")
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    resumed = subprocess.run(  # as a person pastes it into a shell
        ["/bin/bash", "-c", hint.replace("python ", f"{sys.executable} ", 1)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (work / "rel-state" / "p" / "runs" / "r1" / ".checkpoints" / "only.done").exists()
    assert not (elsewhere / "rel-state").exists()


def test_the_failure_paragraph_is_honest_when_no_step_had_finished(tmp_path: Path) -> None:
    failed = Project(tmp_path, ONE_STEP).run("--run-id", "r1", env={"FAIL": "1"})
    assert failed.returncode == 1
    assert "Finished steps keep their checkpoints" not in failed.stderr


def test_status_lists_many_outputs_one_per_line(tmp_path: Path) -> None:
    project = Project(tmp_path, ONE_STEP)
    assert project.run("--run-id", "r1", env={"OUTPUTS": "12"}).returncode == 0
    status = project.run("status", "--run-id", "r1").stdout
    lines = status.splitlines()
    assert any("12 outputs:" in line for line in lines)
    assert sum("out/part-" in line for line in lines) == 12
    assert max(len(line) for line in lines) < 160


def test_status_of_a_run_not_started_says_when_the_other_runs_are_cut(tmp_path: Path) -> None:
    project = Project(tmp_path, ONE_STEP)
    for day in range(1, 8):
        assert project.run("--run-id", f"2026-11-0{day}").returncode == 0
    status = project.run("status", "--run-id", "2026-12-01").stdout
    assert "this run has not started yet" in status
    assert "other runs (the last 5 of 7): 2026-11-03" in status


def test_a_malformed_slack_webhook_url_is_exit_2_before_any_step(tmp_path: Path) -> None:
    project = Project(tmp_path, ONE_STEP)
    result = project.run("--run-id", "r1", env={"SLACK_WEBHOOK_URL": "hooks.slack.com/T0/SECRET"})
    assert result.returncode == 2
    assert "SLACK_WEBHOOK_URL" in result.stderr
    assert "SECRET" not in result.stderr
    assert project.ran() == []
