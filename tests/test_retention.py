"""``gc``: old runs and their settled dead letters go; a locked run and a pending dead letter
never do; it says what it deleted and how much space it freed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_python
from stalwart._errors import UsageError
from stalwart._retention import collect_garbage, format_size

SCRIPT = REPO / "tests" / "scripts" / "ops_pipeline.py"


def ops(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python([str(SCRIPT), *args], env={"STALWART_ROOT": str(root), **env})


def envelopes(root: Path) -> dict[str, dict[str, str]]:
    """Dead letters by id: their run and state."""
    found = {}
    for path in (root / "nightly" / "deadletter").glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        found[data["id"]] = {"run_id": data["run_id"], "state": data["state"]}
    return found


def runs_on_disk(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "nightly" / "runs").iterdir())


def test_gc_keeps_the_locked_run_and_pending_dead_letters(root: Path) -> None:
    dead = {"OPS_FAIL": "load", "OPS_DEAD_LETTER": "load"}
    assert ops(root, "--run-id", "d1", **dead).returncode == 1  # its dead letter: discarded
    assert ops(root, "--run-id", "d2", **dead).returncode == 1  # its dead letter: pending
    assert ops(root, "--run-id", "d3").returncode == 0
    by_run = {v["run_id"]: k for k, v in envelopes(root).items()}
    assert ops(root, "deadletter", "discard", by_run["d1"]).returncode == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    env.update({"STALWART_ROOT": str(root), "OPS_BLOCK_STEP": "load"})
    holder = subprocess.Popen(  # d0 is the oldest run, and running now
        [sys.executable, str(SCRIPT), "--run-id", "d0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("READY")
        # d0 started last: make it the oldest, so only the lock can save it
        summary = root / "nightly" / "runs" / "d0" / ".summary.json"
        data = json.loads(summary.read_text())
        data["started"] = "2000-01-01T00:00:00.000000Z"
        summary.write_text(json.dumps(data))

        dry = ops(root, "gc", "--keep-last", "1", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would delete run d1" in dry.stdout
        assert "would delete run d2" in dry.stdout
        assert f"would delete dead letter {by_run['d1']} of run d1" in dry.stdout
        assert "dry run: nothing was deleted" in dry.stdout
        assert runs_on_disk(root) == ["d0", "d1", "d2", "d3"]
        assert len(envelopes(root)) == 2

        done = ops(root, "gc", "--keep-last", "1")
        assert done.returncode == 0, done.stderr
    finally:
        holder.communicate("go\n", timeout=60)
    lines = done.stdout.splitlines()
    assert any(line.startswith("deleted run d1 (") for line in lines)
    assert any(line.startswith("deleted run d2 (") for line in lines)
    assert f"deleted dead letter {by_run['d1']} of run d1" in done.stdout
    assert "kept run d0: it is running now (pid" in done.stdout
    assert f"kept dead letter {by_run['d2']} of run d2: pending" in done.stdout
    freed = lines[-1]
    assert freed.startswith("freed ")
    assert "2 run(s), 1 dead letter(s)" in freed
    assert holder.returncode == 0  # the run gc did not touch finished fine
    assert runs_on_disk(root) == ["d0", "d3"]
    assert envelopes(root) == {by_run["d2"]: {"run_id": "d2", "state": "pending"}}
    # the pending one can still be dealt with, its run gone
    assert ops(root, "deadletter", "discard", by_run["d2"]).returncode == 0


def test_older_than_deletes_runs_that_finished_before_the_cutoff(root: Path) -> None:
    for run_id in ("old", "new"):
        assert ops(root, "--run-id", run_id).returncode == 0
    summary = root / "nightly" / "runs" / "old" / ".summary.json"
    data = json.loads(summary.read_text())
    data["started"] = data["finished"] = "2020-01-01T00:00:00.000000Z"
    summary.write_text(json.dumps(data))
    done = ops(root, "gc", "--older-than", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted run old (")
    assert runs_on_disk(root) == ["new"]
    again = ops(root, "gc", "--older-than", "30")
    assert again.stdout.strip() == "freed 0 B: 0 run(s), 0 dead letter(s)"


def test_bytes_freed_are_the_files_deleted(root: Path) -> None:
    for run_id in ("a", "b"):
        assert ops(root, "--run-id", run_id).returncode == 0
    run_dir = root / "nightly" / "runs" / "a"
    on_disk = sum(p.lstat().st_size for p in run_dir.rglob("*"))
    result = collect_garbage(str(root / "nightly"), ["extract", "load"], keep_last=1)
    assert result.runs == [("a", on_disk)]
    assert result.bytes_freed == on_disk
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "one of the arguments --keep-last --older-than is required"),
        (["--keep-last", "1", "--older-than", "2"], "not allowed with argument"),
        (["--keep-last", "-1"], "--keep-last must be 0 or more"),
        (["--older-than", "nan"], "--older-than must be 0 or more days"),
    ],
)
def test_gc_needs_one_sane_limit(root: Path, args: list[str], message: str) -> None:
    done = ops(root, "gc", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_the_library_call_needs_exactly_one_limit(root: Path) -> None:
    with pytest.raises(UsageError, match="exactly one"):
        collect_garbage(str(root), [], keep_last=1, older_than_days=1)


def test_sizes_read_well() -> None:
    assert [format_size(n) for n in (0, 999, 1000, 1_234_567, 5e12, 7e15)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "1.2 MB",
        "5.0 TB",
        "7000.0 TB",
    ]


def test_dead_letters_of_kept_runs_and_unreadable_ones_stay(root: Path) -> None:
    dead = {"OPS_FAIL": "load", "OPS_DEAD_LETTER": "load"}
    assert ops(root, "--run-id", "old", **dead).returncode == 1
    assert ops(root, "--run-id", "new", **dead).returncode == 1
    for envelope_id in envelopes(root):
        assert ops(root, "deadletter", "discard", envelope_id).returncode == 0
    corrupt = root / "nightly" / "deadletter" / "20200101T000000000000Z-0badf00d.json"
    corrupt.write_text("{torn")
    result = collect_garbage(str(root / "nightly"), ["extract", "load"], keep_last=1)
    assert [run_id for run_id, _ in result.runs] == ["old"]
    assert [run_id for _, run_id, _ in result.dead_letters] == ["old"]
    assert [v["run_id"] for v in envelopes(root).values()] == ["new"]
    assert corrupt.exists()
