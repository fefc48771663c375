"""State directories are private, a symlink planted in the state root redirects nothing,
and a state root that is not a directory is a usage error (exit 2)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import stalwart
from stalwart.cli._main import run_cli


def make(root: Path) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("p", root=root, alerters=[])

    @pipeline.step()
    def write(ctx: stalwart.Context) -> None:
        ctx.write_text("out.txt", "hello")
        ctx.write_text("sub/dir/nested.txt", "nested")

    return pipeline


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_state_directories_are_0700(tmp_path: Path) -> None:
    root = tmp_path / "fresh-root"
    make(root).run(run_id="r1")
    run_dir = root / "p" / "runs" / "r1"
    for directory in (root, root / "p", root / "p" / "runs", run_dir, run_dir / ".checkpoints"):
        assert mode(directory) == 0o700, directory
    assert mode(root / "p" / "deadletter") == 0o700
    assert (run_dir / "sub" / "dir" / "nested.txt").read_text() == "nested"


@pytest.mark.parametrize(
    "planted",
    [
        "p/runs/r1",
        "p/runs",
        "p",
        "p/runs/r1/.checkpoints",
        "p/deadletter",
        "p/runs/r1/sub",
        "p/runs/r1/.lock",
    ],
)
def test_planted_symlink_is_refused_and_nothing_is_written_outside(
    root: Path, tmp_path: Path, planted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = root / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    code = run_cli(["run", "--run-id", "r1"], pipeline=make(root))
    # Refused before the run starts (exit 2), or - for an output's directory - inside the
    # step, which then fails like any step (exit 1, alert).
    assert code == (1 if planted.endswith("/sub") else 2)
    assert "symbolic link" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


def test_symlinked_output_file_is_replaced_not_followed(root: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = root / "p" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "out.txt").symlink_to(victim)
    make(root).run(run_id="r1")
    assert victim.read_text() == "precious"
    assert not (run_dir / "out.txt").is_symlink()
    assert (run_dir / "out.txt").read_text() == "hello"


def test_a_root_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    pipeline = stalwart.Pipeline("f", root=not_a_dir, alerters=[])
    pipeline.step(name="s")(lambda ctx: None)
    assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == 2
