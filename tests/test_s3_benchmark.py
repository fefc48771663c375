"""The object-storage benchmark (``benchmarks/s3.py``, part of ``make bench``) runs end to end
on a tiny size and reports its rows. How fast anything is belongs in its report, not here."""

from __future__ import annotations

from conftest import REPO, run_python

TINY = ["--repeats", "1", "--steps", "2", "--items", "10", "--map-items", "300"]


def test_the_s3_benchmark_reports_every_row() -> None:
    done = run_python(
        [str(REPO / "benchmarks" / "s3.py"), *TINY, "--item-outputs", "20"], timeout=180
    )
    assert done.returncode == 0, done.stderr
    rows = [line[:34].strip() for line in done.stdout.splitlines()[2:9]]
    assert rows == [
        "per step on S3",
        "skip path on S3 (per step)",
        "journal: 10 + 32 segments",
        "map resume: 300 items",
        "of which decide",
        "as a new process",
        "map item on S3 (per item)",
    ]
    assert "x  <= 1.5x" in done.stdout
    assert "< 1 s" in done.stdout
    assert "+ 31 segments" in done.stdout  # the resume read the most segments there can be
