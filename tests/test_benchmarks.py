"""``make bench`` runs end to end on a tiny size and reports every metric.

Nothing here asserts how fast anything is: the benchmark's numbers belong in its report,
not in the test suite (a noisy machine must never fail a build).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import REPO, run_python

RUNNER = REPO / "benchmarks" / "run.py"
TINY = ["--repeats", "1", "--steps", "3", "--large-mib", "1", "--processes", "1"]
LABELS = (
    "per step (3 steps)",
    "skip path (3 done)",
    "per step, fsync stubbed",
    "start-up: import stalwart",
    "start-up: import stalwart vs json",
    "start-up: + stalwart.Pipeline",
    "atomic_write 1 MiB",
    "retry: @retry() call",
    "retry: call_with_retries",
    "process: 3-step pipeline",
    "process: re-run 3 done",
)
KEYS = {
    "per_step",
    "skip_path",
    "per_step_no_fsync",
    "startup_import",
    "startup_import_vs_json",
    "startup_pipeline",
    "large_output",
    "retry_decorator",
    "retry_call_with_retries",
    "process_3_steps",
    "process_rerun",
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
    for label in LABELS:
        row = next((line for line in lines if line.startswith(label + "  ")), None)
        assert row is not None, f"no row for {label!r} in:\n{result.stdout}"
        assert re.search(r"\s\d+\.\d\dx\s", row), row
        assert row.split()[-1] in {"PASS", "FAIL", "info"}, row
    assert re.search(r"targets met: \d+ of 9", result.stdout)

    document = json.loads(report.read_text())
    assert document["format"] == 1
    assert {m["key"] for m in document["metrics"]} == KEYS
    assert document["machine"]["nproc"] >= 1
    assert document["packages"]["stalwart"]
    for metric in document["metrics"]:
        assert len(metric["stalwart_samples"]) >= 1
        assert len(metric["baseline_samples"]) >= 1
        assert metric["ratio"] > 0
    assert document["importtime_top"], "no -X importtime summary"
    # the scratch directory (state, temp files, bytecode caches) is removed afterwards
    assert not list(tmp_path.glob("stalwart-bench-*"))


def test_a_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    result = run_python([str(RUNNER), "--repeats", "0", "--no-json", "--tmpdir", str(tmp_path)])
    assert result.returncode == 2
    assert "--repeats must be at least 1" in result.stderr
