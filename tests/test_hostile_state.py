"""Things planted in the state root where stalwart keeps its files: FIFOs (which would make
a plain ``open`` wait forever for a writer), directories, symlinks. Every command goes on
or says "corrupt"; none hangs, none fails every later run, none touches anything outside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import stalwart
from stalwart import DeadLetterStore
from stalwart.cli._main import run_cli

pytestmark = pytest.mark.timeout(20)  # before the fixes, these hung for ever

ENVELOPE = "20261128T000000000000Z-deadbeef"


def make(root: Path) -> tuple[stalwart.Pipeline, list[str]]:
    ran: list[str] = []
    pipeline = stalwart.Pipeline("hs", root=root, alerters=[])

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        ran.append("fetch")
        ctx.write_text("data.txt", "d")

    @pipeline.step()
    def load(ctx: stalwart.Context) -> None:
        ran.append("load")

    return pipeline, ran


def test_a_fifo_as_a_marker_is_corrupt_and_the_step_runs_again(tmp_path: Path) -> None:
    pipeline, ran = make(tmp_path)
    pipeline.run(run_id="r")
    marker = pipeline.run_dir("r") / ".checkpoints" / "fetch.done"
    marker.unlink()
    os.mkfifo(marker)
    assert run_cli(["status", "--run-id", "r"], pipeline=pipeline) == 0
    ran.clear()
    pipeline.run(run_id="r")
    assert ran == ["fetch"]
    assert marker.is_file()


def test_a_directory_as_a_marker_does_not_fail_later_runs(tmp_path: Path) -> None:
    pipeline, ran = make(tmp_path)
    marker = pipeline.run_dir("r") / ".checkpoints" / "fetch.done"
    marker.mkdir(parents=True)
    (marker / "keep.txt").write_text("someone's")
    pipeline.run(run_id="r")
    ran.clear()
    pipeline.run(run_id="r")
    assert ran == []  # the marker was written: the second run skips both steps
    [aside] = [p for p in marker.parent.iterdir() if ".not-a-file-" in p.name]
    assert (aside / "keep.txt").read_text() == "someone's"  # moved, never deleted


def test_a_fifo_as_the_journal_neither_hangs_nor_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, ran = make(tmp_path)
    run_dir = pipeline.run_dir("r")
    run_dir.mkdir(parents=True)
    os.mkfifo(run_dir / ".journal.jsonl")
    pipeline.run(run_id="r")
    assert ran == ["fetch", "load"]
    assert run_cli(["status", "--run-id", "r"], pipeline=pipeline) == 0
    assert "done" in capsys.readouterr().out


def test_a_fifo_as_the_lock_is_refused_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, ran = make(tmp_path)
    run_dir = pipeline.run_dir("r")
    run_dir.mkdir(parents=True)
    os.mkfifo(run_dir / ".lock")
    assert run_cli(["status", "--run-id", "r"], pipeline=pipeline) == 0
    assert run_cli(["run", "--run-id", "r", "--log-format", "text"], pipeline=pipeline) == 1
    assert run_cli(["reset", "--run-id", "r", "--log-format", "text"], pipeline=pipeline) == 1
    err = capsys.readouterr().err
    assert "it is a FIFO" in err
    assert ".lock" in err
    assert ran == []


def test_a_fifo_or_a_directory_named_like_an_envelope_is_corrupt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, _ = make(tmp_path)
    letters = tmp_path / "hs" / "deadletter"
    letters.mkdir(parents=True)
    good = DeadLetterStore(letters, pipeline="hs").write(
        {"kind": "payload", "reason": "kept", "created_at": "2026-11-28T00:00:00.000000Z"}
    )
    os.mkfifo(letters / f"{ENVELOPE}.json")
    directory = ENVELOPE.replace("deadbeef", "0badc0de")
    (letters / f"{directory}.json").mkdir()
    assert run_cli(["deadletter", "list"], pipeline=pipeline) == 0
    out = capsys.readouterr().out
    assert out.count("corrupt") == 2
    assert good in out
    for action in ("show", "replay", "discard"):
        for envelope_id in (ENVELOPE, directory):
            assert run_cli(["deadletter", action, envelope_id], pipeline=pipeline) == 1
            assert "corrupt" in capsys.readouterr().err


def test_a_directory_as_the_lock_is_refused_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, ran = make(tmp_path)
    (pipeline.run_dir("r") / ".lock").mkdir(parents=True)
    assert run_cli(["run", "--run-id", "r", "--log-format", "text"], pipeline=pipeline) == 1
    assert "it is a directory" in capsys.readouterr().err
    assert ran == []
