"""The object-storage benchmark (``benchmarks/s3.py``, part of ``make bench``) runs end to end
on a tiny size and reports its rows. How fast anything is belongs in its report, not here."""

from __future__ import annotations

from conftest import REPO, run_python


def test_the_s3_benchmark_reports_every_row() -> None:
    done = run_python(
        [str(REPO / "benchmarks" / "s3.py"), "--repeats", "1", "--steps", "2", "--items", "10"],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("  ")[0] for line in done.stdout.splitlines()[2:5]]
    assert rows == ["per step on S3", "skip path on S3 (per step)", "journal: 10 + 32 segments"]
    assert "x  <= 1.5x" in done.stdout
