"""Symlinks planted in the state root: ``reset`` and every ``deadletter`` command refuse
them, as ``run`` does; nothing outside the root is created, changed or deleted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import stalwart
from stalwart import DeadLetterStore
from stalwart.cli._main import run_cli


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the state root, holding what a planted link points at."""
    path = tmp_path / "outside"
    (path / ".checkpoints").mkdir(parents=True)
    (path / ".checkpoints" / "fetch.done").write_text("{}")
    DeadLetterStore(path / "letters", pipeline="p").write(
        {"kind": "payload", "reason": "kept", "created_at": "2026-11-28T00:00:00.000000Z"}
    )
    return path


def make(root: Path) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("p", root=root, alerters=[])

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        pass

    return pipeline


@pytest.mark.parametrize("planted", ["run directory", "checkpoints directory", "lock"])
def test_reset_refuses_planted_links(
    tmp_path: Path, outside: Path, planted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "state"
    pipeline = make(root)
    run_dir = root / "p" / "runs" / "r"
    run_dir.parent.mkdir(parents=True)
    if planted == "run directory":
        run_dir.symlink_to(outside)
    else:
        run_dir.mkdir()
        if planted == "checkpoints directory":
            (run_dir / ".checkpoints").symlink_to(outside / ".checkpoints")
        else:
            (run_dir / ".lock").symlink_to(outside / "lock-target")
    before = snapshot(outside)
    code = run_cli(["reset", "--run-id", "r", "--log-format", "text"], pipeline=pipeline)
    assert code in (1, 2)
    assert "symbolic link" in capsys.readouterr().err
    assert snapshot(outside) == before
    assert not (outside / "lock-target").exists()


@pytest.mark.parametrize("action", ["list", "show", "replay", "discard"])
def test_deadletter_refuses_a_linked_directory(
    tmp_path: Path, outside: Path, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "state"
    (root / "p").mkdir(parents=True)
    (root / "p" / "deadletter").symlink_to(outside / "letters")
    [envelope] = [p.stem for p in (outside / "letters").glob("*.json")]
    before = sorted(os.listdir(outside / "letters"))
    argv = ["deadletter", action, *([] if action == "list" else [envelope])]
    assert run_cli([*argv, "--log-format", "text"], pipeline=make(root)) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert sorted(os.listdir(outside / "letters")) == before


def test_deadletter_refuses_a_linked_lock(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "state"
    letters = root / "p" / "deadletter"
    envelope = DeadLetterStore(letters, pipeline="p").write(
        {"kind": "payload", "reason": "kept", "created_at": "2026-11-28T00:00:00.000000Z"}
    )
    for name in (".lock", f".{envelope}.lock"):
        (letters / name).symlink_to(outside / "lock-target")
    assert run_cli(["deadletter", "discard", envelope], pipeline=make(root)) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert not (outside / "lock-target").exists()
