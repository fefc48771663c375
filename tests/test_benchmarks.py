"""``make bench`` runs end to end on a tiny size and reports every metric.

Nothing here asserts how fast anything is: the benchmark's numbers belong in its report,
not in the test suite (a noisy machine must never fail a build).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, run_python

RUNNER = REPO / "benchmarks" / "run.py"
CONTRACT_FLOOR = REPO / "benchmarks" / "contract_floor.py"
WORKLOADS = REPO / "benchmarks" / "workloads.py"
TINY = ["--repeats", "1", "--steps", "3", "--large-mib", "1", "--processes", "1"]
TINY += ["--declare-sizes", "10,20,40"]
LABELS = (
    "per step (3 steps)",
    "skip path (3 done)",
    "per step, fsync stubbed",
    "per step, CLI + JSON logs (3 steps)",
    "  the lean floor, CLI + JSON logs",
    "  stalwart vs the lean floor, CLI",
    "  the same, fsync stubbed",
    "per step, commit I/O alone vs 4 syncs",
    "  + journal start line, 2 log lines",
    "declare 10 steps",
    "declare 20 steps",
    "declare 40 steps",
    "declare 40 vs 20 steps",
    "declare 40 vs 20, collector on",
    "declare 40 vs 20, plain dict",
    "memory per step declared (30 steps)",
    "memory kept per step after a run (30 steps)",
    "start-up: import stalwart",
    "start-up: import stalwart vs json",
    "start-up: + stalwart.Pipeline",
    "start-up: + @retry() and a call",
    "atomic_write 1 MiB",
    "retry: @retry() call",
    "retry: call_with_retries",
    "retry: @retry() call inside a step",
    "process: 3-step pipeline",
    "process: 3-step, lean floor vs plain",
    "process: 3-step vs lean floor",
    "process: re-run 3 done",
    "process: re-run 3 done vs lean floor",
)
STRACE_LABELS = (
    "syscalls per step (strace -c, CLI)",
    "syscalls per step vs lean floor",
    "fsync+fdatasync per step",
    "fsync+fdatasync per step, lean floor",
)
KEYS = {
    "per_step",
    "skip_path",
    "per_step_no_fsync",
    "per_step_cli",
    "per_step_cli_lean_floor",
    "per_step_cli_vs_lean_floor",
    "per_step_cli_vs_lean_floor_no_fsync",
    "commit_io_vs_4",
    "commit_io_vs_4_with_logs",
    "declare_10",
    "declare_20",
    "declare_40",
    "declare_linear",
    "declare_linear_collector",
    "declare_linear_plain",
    "memory_declared",
    "memory_kept_after_run",
    "startup_import",
    "startup_import_vs_json",
    "startup_pipeline",
    "startup_retry",
    "large_output",
    "retry_decorator",
    "retry_call_with_retries",
    "retry_in_step",
    "process_3_steps",
    "process_contract_floor",
    "process_3_steps_vs_contract",
    "process_3_steps_vs_frozen_plain",
    "process_lean_floor_commits",
    "process_rerun",
    "process_rerun_vs_contract",
}
STRACE_KEYS = {
    "syscalls_per_step",
    "syscalls_per_step_vs_lean",
    "syncs_per_step",
    "syncs_per_step_lean",
}
INFO_KEYS = {
    "per_step_no_fsync",
    "per_step_cli_lean_floor",
    "per_step_cli_vs_lean_floor",
    "per_step_cli_vs_lean_floor_no_fsync",
    "commit_io_vs_4",
    "commit_io_vs_4_with_logs",
    "declare_10",
    "declare_20",
    "declare_40",
    "declare_linear_collector",
    "declare_linear_plain",
    "memory_declared",
    "startup_import_vs_json",
    "startup_retry",
    "process_contract_floor",
    "process_3_steps_vs_frozen_plain",
    "process_lean_floor_commits",
    "process_rerun_vs_contract",
}


def test_the_runner_prints_a_table_with_a_ratio_row_per_metric(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_python(
        [
            str(RUNNER),
            *TINY,
            "--iterations",
            "200",
            "--json",
            str(report),
            "--tmpdir",
            str(tmp_path),
        ],
        timeout=110,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric "))
    assert header.split() == ["metric", "stalwart", "baseline", "ratio", "target", "result"]
    assert "machine: " in result.stdout
    assert re.search(r"packages: stalwart \S+, httpx \S+, tenacity \S+", result.stdout)
    assert re.search(
        r"step commit: stalwart makes 2 syncs per step; the lean floor runs with --syncs 2",
        result.stdout,
    )
    strace = shutil.which("strace") is not None
    for label in LABELS + (STRACE_LABELS if strace else ()):
        row = next((line for line in lines if line.startswith(label + "  ")), None)
        assert row is not None, f"no row for {label!r} in:\n{result.stdout}"
        assert re.search(r"\s\d+\.\d\dx\s", row), row
        assert row.split()[-1] in {"PASS", "FAIL", "info"}, row
    assert re.search(r"targets met: \d+ of 14\b", result.stdout)
    if strace:
        assert "calls per step, stalwart: " in result.stdout
    else:
        assert "strace is not installed: the syscall rows were skipped" in result.stdout

    document = json.loads(report.read_text())
    assert document["format"] == 1
    assert {m["key"] for m in document["metrics"]} == KEYS | (STRACE_KEYS if strace else set())
    assert document["machine"]["nproc"] >= 1
    assert document["packages"]["stalwart"]
    by_key = {m["key"]: m for m in document["metrics"]}
    info = INFO_KEYS | (STRACE_KEYS if strace else set())
    assert {k for k, m in by_key.items() if m["passed"] is None} == info
    # linearity: 40 against 20 steps, the collector paused (target) and running (info)
    collector_on = by_key["declare_linear_collector"]
    assert collector_on["stalwart_samples"] == by_key["declare_40"]["stalwart_samples"]
    assert collector_on["baseline_samples"] == by_key["declare_20"]["stalwart_samples"]
    assert len(by_key["declare_linear"]["stalwart_samples"]) == 1
    assert "collector paused" in by_key["declare_linear"]["baseline"]
    # the lean floor commits a step with as many syncs as stalwart does (auto)
    syncs = document["syncs"]
    assert syncs["lean_floor"] == round(syncs["stalwart_per_step"])
    assert syncs["lean_floor"] == 2  # the journal's fdatasync is shared by fast steps
    if strace:
        assert by_key["syncs_per_step"]["stalwart_samples"] == [syncs["stalwart_per_step"]]
        assert by_key["syncs_per_step"]["baseline_samples"] == [4.0]  # the naive floor
        assert by_key["syncs_per_step_lean"]["stalwart_samples"] == [float(syncs["lean_floor"])]
    # the lean-floor rows pair samples with the existing rows, measured in the same rounds
    small, rerun = by_key["process_3_steps"], by_key["process_rerun"]
    assert by_key["process_contract_floor"]["baseline_samples"] == small["baseline_samples"]
    assert by_key["process_3_steps_vs_contract"]["stalwart_samples"] == small["stalwart_samples"]
    assert (
        by_key["process_3_steps_vs_contract"]["baseline_samples"]
        == by_key["process_contract_floor"]["stalwart_samples"]
        == by_key["process_lean_floor_commits"]["baseline_samples"]
    )
    assert by_key["process_rerun_vs_contract"]["stalwart_samples"] == rerun["stalwart_samples"]
    frozen = by_key["process_3_steps_vs_frozen_plain"]
    assert frozen["stalwart_samples"] == small["stalwart_samples"]
    assert len(frozen["baseline_samples"]) == len(small["baseline_samples"])  # the same rounds
    assert by_key["process_contract_floor"]["subject"].startswith("lean contract floor")
    assert "      lean contract floor " in result.stdout  # its spread line names what it measured
    for metric in document["metrics"]:
        assert len(metric["stalwart_samples"]) >= 1
        assert len(metric["baseline_samples"]) >= 1
        assert metric["ratio"] >= 0  # memory kept after a run can be 0 bytes
    assert document["importtime_top"], "no -X importtime summary"
    assert "loadavg_end" in document
    # the lean floor through its CLI, in the same repeats as stalwart's CLI row
    cli = by_key["per_step_cli"]
    assert by_key["per_step_cli_lean_floor"]["baseline_samples"] == cli["baseline_samples"]
    assert by_key["per_step_cli_vs_lean_floor"]["stalwart_samples"] == cli["stalwart_samples"]
    assert (
        by_key["per_step_cli_vs_lean_floor"]["baseline_samples"]
        == by_key["per_step_cli_lean_floor"]["stalwart_samples"]
    )
    # the commit's I/O alone: both rows against the same naive-floor samples
    io, io_logs = by_key["commit_io_vs_4"], by_key["commit_io_vs_4_with_logs"]
    assert io["baseline_samples"] == io_logs["baseline_samples"]
    assert io["stalwart_samples"] != io_logs["stalwart_samples"]
    # the scratch directory (state, temp files, bytecode caches) is removed afterwards
    assert not list(tmp_path.glob("stalwart-bench-*"))


def test_only_measures_the_groups_asked_for(tmp_path: Path) -> None:
    only = ["--only", "large,retry", "--iterations", "200", "--no-json"]
    result = run_python([str(RUNNER), *TINY, *only, "--tmpdir", str(tmp_path)], timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("  ")[0] for line in result.stdout.splitlines()]
    assert "atomic_write 1 MiB" in rows
    assert "retry: @retry() call inside a step" in rows
    assert not any(row.startswith(("per step", "process:", "declare", "start-up")) for row in rows)
    assert re.search(r"targets met: \d+ of 4\b", result.stdout)


def test_only_refuses_an_unknown_group(tmp_path: Path) -> None:
    result = run_python([str(RUNNER), "--only", "process,warp", "--no-json"])
    assert result.returncode == 2
    assert "--only takes groups from steps,cli," in result.stderr
    assert "not warp" in result.stderr


def test_a_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    result = run_python([str(RUNNER), "--repeats", "0", "--no-json", "--tmpdir", str(tmp_path)])
    assert result.returncode == 2
    assert "--repeats must be at least 1" in result.stderr


def _mtimes(state: Path) -> dict[Path, int]:
    """Every file's mtime but the run's own bookkeeping (its lock and summary)."""
    return {
        p: p.stat().st_mtime_ns
        for p in state.rglob("*")
        if p.is_file() and p.name not in (".lock", ".summary.json")
    }


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert all(isinstance(line, dict) for line in lines), stderr
    return lines


def _shape(lines: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """What a log says, step by step: the level and step of each line."""
    return [(line["level"], line.get("step")) for line in lines]


def test_the_contract_floor_writes_durably_skips_when_done_and_logs_like_stalwart(
    tmp_path: Path,
) -> None:
    root = tmp_path / "contract"
    state = root / "bench" / "runs" / "bench"  # the documented layout, as stalwart's
    first = run_python([str(CONTRACT_FLOOR), "chain", "2", str(root)])
    assert first.returncode == 0, first.stderr
    for index in range(2):
        output = state / f"out-{index}.txt"
        assert output.read_bytes() == f"step {index}\n".encode()
        marker = json.loads((state / ".checkpoints" / f"step_{index:03d}.done").read_text())
        assert marker["step"] == f"step_{index:03d}"
        assert marker["run_id"] == "bench"
        assert marker["started"] <= marker["finished"]
        assert marker["outputs"] == [
            {
                "name": output.name,
                "size": output.stat().st_size,
                "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
            }
        ]
    assert not list(state.rglob(".*.tmp")), "temp files left behind"
    ran = _json_lines(first.stderr)
    assert ran[0]["message"] == "step step_000 started"
    assert ran[1]["message"].startswith("step step_000 done in ")
    assert {line["pipeline"] for line in ran} == {"bench"}
    assert {line["run_id"] for line in ran} == {"bench"}
    assert "ran 2, skipped 0" in ran[-1]["message"]

    before = _mtimes(state)
    second = run_python([str(CONTRACT_FLOOR), "chain", "2", str(root)])
    assert second.returncode == 0, second.stderr
    assert _mtimes(state) == before
    skipped = _json_lines(second.stderr)
    assert [line["message"] for line in skipped[:2]] == [
        "step step_000 already done, skipping",
        "step step_001 already done, skipping",
    ]
    assert "ran 0, skipped 2" in skipped[-1]["message"]

    # the same lines per step as stalwart's runner, for a step that runs and one that skips
    root = tmp_path / "stalwart"
    stalwart_runs = [run_python([str(WORKLOADS), "chain", "2", str(root)]) for _ in range(2)]
    assert all(r.returncode == 0 for r in stalwart_runs), stalwart_runs[-1].stderr
    assert _shape(ran) == _shape(_json_lines(stalwart_runs[0].stderr))
    assert _shape(skipped) == _shape(_json_lines(stalwart_runs[1].stderr))


def test_the_contract_floor_re_runs_a_step_whose_output_changed_and_honours_force(
    tmp_path: Path,
) -> None:
    root = tmp_path / "contract"
    state = root / "bench" / "runs" / "bench"
    assert run_python([str(CONTRACT_FLOOR), "chain", "2", str(root)]).returncode == 0
    (state / "out-1.txt").write_bytes(b"x")  # not the recorded size: step_001 must run again
    again = run_python([str(CONTRACT_FLOOR), "chain", "2", str(root)])
    assert again.returncode == 0, again.stderr
    messages = [line["message"] for line in _json_lines(again.stderr)]
    assert "step step_000 already done, skipping" in messages
    assert "step step_001 started" in messages
    assert (state / "out-1.txt").read_bytes() == b"step 1\n"

    forced = run_python(
        [str(CONTRACT_FLOOR), "chain", "2", str(root), "run", "--run-id", "bench", "--force"]
    )
    assert forced.returncode == 0, forced.stderr
    messages = [line["message"] for line in _json_lines(forced.stderr)]
    assert "step step_000 started" in messages
    assert "step step_001 started" in messages

    bad = run_python([str(CONTRACT_FLOOR), "chain", "2", str(root), "run", "--run-id", "../x"])
    assert bad.returncode == 2
    assert "invalid run ID" in bad.stderr


def test_the_map_step_benchmark_prints_every_row(tmp_path: Path, dask_scheduler: str) -> None:
    report = tmp_path / "map.json"
    result = run_python(
        [
            str(REPO / "benchmarks" / "map_steps.py"),
            "--items",
            "300",
            "--durable-items",
            "20",
            "--repeats",
            "1",
            "--dask-scheduler",
            dask_scheduler,
            "--tmpdir",
            str(tmp_path),
            "--json",
            str(report),
        ],
        timeout=110,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for label in (
        "resume: decide",
        "resume: keys and decision",
        "resume: whole process",
        "threads: per item",
        "threads: durable output",
        "dask: chunked vs client.map",
    ):
        row = next((line for line in result.stdout.splitlines() if line.startswith(label)), None)
        assert row is not None, result.stdout
        assert row.split()[-1] in {"PASS", "FAIL"}, row
    results = json.loads(report.read_text())["results"]
    assert results["items"] == 300
    assert results["resume_decide_s"] > 0
    assert not list(tmp_path.glob("stalwart-map-bench-*"))  # the scratch directory is gone


COUNT_FDATASYNC = """
import atexit, os, runpy, sys
calls = []
real = os.fdatasync
os.fdatasync = lambda fd: (calls.append(fd), real(fd))[1]
atexit.register(lambda: print("fdatasync", len(calls)))
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(("syncs", "fdatasyncs"), [("4", 0), ("3", 5), ("2", 2)])
def test_the_contract_floor_syncs_its_journal_as_asked(
    tmp_path: Path, syncs: str, fdatasyncs: int
) -> None:
    """``--syncs 3``: one ``fdatasync`` per step; ``--syncs 2``: shared as stalwart shares it
    (5 fast steps: after the first, and at the end); ``--syncs 4``: the markers sync."""
    argv = [str(CONTRACT_FLOOR), "chain", "5", str(tmp_path / "r"), "--syncs", syncs]
    done = run_python(["-c", COUNT_FDATASYNC, *argv])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["fdatasync", str(fdatasyncs)]
    markers = tmp_path / "r" / "bench" / "runs" / "bench" / ".checkpoints"
    assert len(list(markers.glob("*.done"))) == 5


def test_the_contract_floor_commits_with_three_syncs_when_asked(tmp_path: Path) -> None:
    """``--syncs 3``: the same outputs, markers and journal; the journal's done line commits."""
    four, three = tmp_path / "four", tmp_path / "three"
    assert run_python([str(CONTRACT_FLOOR), "chain", "2", str(four)]).returncode == 0
    done = run_python([str(CONTRACT_FLOOR), "chain", "2", str(three), "--syncs", "3"])
    assert done.returncode == 0, done.stderr
    runs = three / "bench" / "runs" / "bench"
    for index in range(2):
        name = f"bench/runs/bench/.checkpoints/step_{index:03d}.done"
        ours, theirs = (json.loads((root / name).read_text()) for root in (three, four))
        assert ours["outputs"] == theirs["outputs"]
        assert ours["runs"] == theirs["runs"] == 1
    journal = [json.loads(line) for line in (runs / ".journal.jsonl").read_text().splitlines()]
    assert [(r["step"], r["outcome"]) for r in journal] == [
        ("step_000", "running"),
        ("step_000", "done"),
        ("step_001", "running"),
        ("step_001", "done"),
    ]
    # a forced re-run counts the earlier start (read back from the journal)
    forced = [str(CONTRACT_FLOOR), "chain", "2", str(three), "--syncs", "3", "run"]
    assert run_python([*forced, "--run-id", "bench", "--force"]).returncode == 0
    marker = json.loads((runs / ".checkpoints" / "step_001.done").read_text())
    assert marker["runs"] == 2


def test_the_a_b_runner_interleaves_commands_and_reports_medians(tmp_path: Path) -> None:
    ab = REPO / "benchmarks" / "ab.py"
    marker = tmp_path / "runs"
    marker.mkdir()
    one = f"touch {marker}/one-{{i}}"
    two = f"touch {marker}/two-{{i}}"
    result = run_python([str(ab), "2", "one", one, "two", two])
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["one", "two"]
    assert "1.00x" in result.stdout.splitlines()[0]
    assert sorted(p.name for p in marker.iterdir()) == [
        "one-0",
        "one-1",
        "one-2",
        "two-0",
        "two-1",
        "two-2",
    ]  # a warm-up round, then two counted rounds
    failing = run_python([str(ab), "1", "bad", "exit 3"])
    assert failing.returncode == 1
    assert "bad exited 3" in failing.stderr
    assert run_python([str(ab), "x"]).returncode == 2


def test_the_contract_floor_times_its_chain_like_the_workload(tmp_path: Path) -> None:
    """``timed-chain`` does what ``chain`` does, then prints the seconds it took on stdout,
    as ``workloads.py timed-chain`` does for stalwart's CLI row."""
    root = tmp_path / "contract"
    timed = run_python([str(CONTRACT_FLOOR), "timed-chain", "3", str(root), "--syncs", "3"])
    assert timed.returncode == 0, timed.stderr
    assert float(timed.stdout.split()[-1]) > 0
    state = root / "bench" / "runs" / "bench"
    assert sorted(p.name for p in (state / ".checkpoints").glob("*.done")) == [
        "step_000.done",
        "step_001.done",
        "step_002.done",
    ]
    assert "ran 3, skipped 0" in _json_lines(timed.stderr)[-1]["message"]
    plain = run_python([str(CONTRACT_FLOOR), "chain", "1", str(tmp_path / "plain")])
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == ""  # only the timed form prints
