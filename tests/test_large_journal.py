"""A step journal past 16 MiB is read whole (streamed): counts keep growing and ``status``
stays right; a line too long to be a record is skipped, never held whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import stalwart
from stalwart._checkpoint import CheckpointStore
from stalwart.cli._status import collect


def make(root: Path) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("big", root=root, alerters=[])

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        raise RuntimeError("still broken")

    return pipeline


def test_a_journal_over_16_mib_is_read_to_its_end(tmp_path: Path) -> None:
    pipeline = make(tmp_path)
    run_dir = pipeline.run_dir("r")
    run_dir.mkdir(parents=True)
    line = json.dumps({"step": "fetch", "runs": 1, "outcome": "failed", "error": "x" * 200})
    filler = (line + "\n").encode() * (17 * 1024 * 1024 // (len(line) + 1) + 1)
    last = {"step": "fetch", "runs": 41, "outcome": "failed", "error_type": "E", "error": "end"}
    too_long = b'{"step": "fetch", "runs": 99, "error": "' + b"y" * (2 * 1024 * 1024) + b'"}\n'
    (run_dir / ".journal.jsonl").write_bytes(filler + too_long + (json.dumps(last) + "\n").encode())
    assert (run_dir / ".journal.jsonl").stat().st_size > 16 * 1024 * 1024
    assert CheckpointStore(run_dir).read_record("fetch").runs == 41
    [row] = collect(pipeline, "r")
    assert (row.state, row.runs, row.error) == ("failed", 41, "E: end")
    with pytest.raises(RuntimeError):
        pipeline.run(run_id="r")
    assert CheckpointStore(run_dir).read_record("fetch").runs == 42  # the count goes on
