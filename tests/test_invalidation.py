"""Downstream invalidation: a step records what it read (``ctx.read_*``: the output and the
sha256 its producer recorded); when an upstream step runs again and its output changes, every
step that read it runs again; the same bytes let the rest skip ("inputs unchanged")."""

from __future__ import annotations

import json
from pathlib import Path

from test_step_model import Project

BODY = """
@pipeline.step()
def fetch(ctx):
    trace(ctx)
    ctx.write_json("orders.json", [1, 2, int(os.environ.get("EXTRA", "3"))])

@pipeline.step()
def transform(ctx):
    trace(ctx)
    orders = ctx.read_json("orders.json")
    ctx.write_text("report.csv", "\\n".join(str(o) for o in orders))

@pipeline.step()
def upload(ctx):
    trace(ctx)
    ctx.read_bytes("report.csv")

@pipeline.step()
def unrelated(ctx):
    trace(ctx)
    ctx.write_text("note.txt", "independent")
"""


def run_dir(project: Project) -> Path:
    return project.state / "p" / "runs" / "r1"


def test_the_marker_records_what_the_step_read(tmp_path: Path) -> None:
    project = Project(tmp_path, BODY)
    assert project.run("--run-id", "r1").returncode == 0
    fetch = project.marker("fetch")
    transform = project.marker("transform")
    outputs: list[dict[str, str]] = fetch["outputs"]  # type: ignore[assignment]
    assert transform["inputs"] == [
        {"name": "orders.json", "step": "fetch", "sha256": outputs[0]["sha256"]}
    ]
    assert "inputs" not in fetch  # it read nothing


def test_a_deleted_upstream_output_reruns_its_consumers_only(tmp_path: Path) -> None:
    project = Project(tmp_path, BODY)
    assert project.run("--run-id", "r1").returncode == 0
    (run_dir(project) / "orders.json").unlink()
    second = project.run("--run-id", "r1", env={"EXTRA": "4"})
    assert second.returncode == 0, second.stderr
    assert project.ran()[4:] == ["fetch", "transform", "upload"]  # not `unrelated`
    assert "its input orders.json changed (produced again by step fetch)" in second.stderr
    assert "step unrelated already done, skipping" in second.stderr
    assert (run_dir(project) / "report.csv").read_text() == "1\n2\n4"


def test_the_same_bytes_again_let_the_rest_skip(tmp_path: Path) -> None:
    project = Project(tmp_path, BODY)
    assert project.run("--run-id", "r1").returncode == 0
    (run_dir(project) / "orders.json").unlink()
    second = project.run("--run-id", "r1")  # fetch writes the very same orders
    assert second.returncode == 0, second.stderr
    assert project.ran()[4:] == ["fetch"]
    assert "step transform already done, skipping (inputs unchanged)" in second.stderr


def test_a_step_from_step_reruns_the_consumers_when_the_result_changes(
    tmp_path: Path,
) -> None:
    project = Project(tmp_path, BODY)
    assert project.run("--run-id", "r1").returncode == 0
    # --step fetch clears fetch and everything after it: all of them run again.
    again = project.run("--run-id", "r1", "--step", "fetch", env={"EXTRA": "9"})
    assert again.returncode == 0, again.stderr
    assert project.ran()[4:] == ["fetch", "transform", "upload", "unrelated"]
    status = json.loads(project.run("status", "--run-id", "r1", "--json").stdout)
    assert [row["state"] for row in status["steps"]] == ["done"] * 4
