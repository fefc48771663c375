"""Kill anywhere: SIGKILL the reference pipeline at random file-system operations, many times.

The killer (``killer.py``) counts the ``os`` calls ``open``, ``write``, ``fsync``,
``fdatasync``, ``ftruncate``, ``replace``, ``unlink`` and ``mkdir``, and kills the process at
a chosen one (tearing a write in half), so every phase is hit: output writes, step commits
(the marker's rename, the journal's ``fdatasync``), step records and the cut of a torn
journal tail, dead-letter envelopes, temp clean-up. After every kill the state must be
consistent; after the final resume it must equal a clean run's, with no debris.

CI: 50 kills (``STALWART_CHAOS_KILLS`` raises it; ``make chaos`` runs 1,000 with seed 2026).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stalwart._atomic import is_temp_name
from stalwart.testing import FlakyServer, Reply

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "daily_report.py"
KILLER = Path(__file__).with_name("killer.py")
ORDERS = [
    {"id": i, "customer": f"customer-{i % 977}", "amount": round((i * 7.31) % 1000, 2)}
    for i in range(40_000)
]


def run(
    killer_k: int, run_id: str, env: dict[str, str], count_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    full.update(env)
    if count_file is not None:
        full["KILLER_COUNT_FILE"] = str(count_file)
    return subprocess.run(
        [sys.executable, str(KILLER), str(killer_k), str(EXAMPLE), "--run-id", run_id],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def check_consistent(
    root: Path, reference: dict[str, bytes], only: str | None = None, seen: set[str] | None = None
) -> None:
    """Every output that exists is whole; every marker parses and its outputs exist; every
    line of the step journal but a torn last one parses.

    ``only`` limits the run directories checked to one (a run touches only its own run
    directory, and the shared dead letters); envelopes named in ``seen`` were checked before
    (nothing rewrites them here) and are skipped, the others are added to it."""
    runs = root / "daily-report" / "runs"
    for run_dir in runs.iterdir() if runs.is_dir() else []:
        if only is not None and run_dir.name != only:
            continue
        for name, content in reference.items():
            path = run_dir / name
            if path.exists():
                assert path.read_bytes() == content, f"{path} is not a clean run's output"
        journal = run_dir / ".journal.jsonl"
        lines = journal.read_bytes().split(b"\n")[:-1] if journal.is_file() else []
        for line in lines:  # whole lines only: a torn tail is cut before the next append
            assert isinstance(json.loads(line), dict), f"{journal}: {line!r}"
        checkpoints = run_dir / ".checkpoints"
        for marker in checkpoints.glob("*.done") if checkpoints.is_dir() else []:
            data = json.loads(marker.read_bytes())
            for output in data["outputs"]:
                assert (run_dir / output["name"]).stat().st_size == output["size"]
    deadletters = root / "daily-report" / "deadletter"
    for envelope in deadletters.glob("*.json") if deadletters.is_dir() else []:
        if seen is not None and envelope.name in seen:
            continue
        data = json.loads(envelope.read_bytes())
        assert data["request"]["body"]["size"] == len(reference["report.csv"])
        if seen is not None:
            seen.add(envelope.name)


def debris(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temp_name(p.name)]


@pytest.mark.slow
def test_sigkill_at_random_operations_never_corrupts_state(tmp_path: Path) -> None:
    kills = int(os.environ.get("STALWART_CHAOS_KILLS", "50"))
    rng = random.Random(int(os.environ.get("STALWART_CHAOS_SEED", "2026")))
    with FlakyServer() as server:
        server.route("GET", "/orders", Reply(json=ORDERS))
        server.route("POST", "/good/reports", Reply(status=201))
        server.route("POST", "/bad/reports", Reply(status=400, body="schema mismatch"))
        base = {"DAILY_REPORT_API": server.url("").rstrip("/")}

        def env(root: Path, sink: str) -> dict[str, str]:
            return {**base, "STALWART_ROOT": str(root), "DAILY_REPORT_SINK": server.url(sink)}

        # A clean run: the reference outputs, and how many operations a run makes.
        clean_root = tmp_path / "clean"
        count_file = tmp_path / "count"
        clean = run(0, "clean", env(clean_root, "/good"), count_file)
        assert clean.returncode == 0, clean.stderr
        operations = int(count_file.read_text())
        clean_dir = clean_root / "daily-report" / "runs" / "clean"
        reference = {n: (clean_dir / n).read_bytes() for n in ("orders.json", "report.csv")}
        assert len(reference["orders.json"]) > 2_000_000  # outputs of several MB

        root = tmp_path / "chaos"
        generation, killed, completed = 0, 0, 0
        checked_envelopes: set[str] = set()
        for _ in range(kills):
            run_id = f"r{generation}"
            sink = "/bad" if generation % 2 else "/good"  # odd runs dead-letter their upload
            result = run(rng.randint(1, operations), run_id, env(root, sink))
            if result.returncode == -signal.SIGKILL:
                killed += 1
            else:
                assert result.returncode == (1 if generation % 2 else 0), result.stderr
                completed += 1
                generation += 1
            check_consistent(root, reference, only=run_id, seen=checked_envelopes)
        assert killed >= kills // 2

        # Resume everything without the killer: clean outputs, no debris anywhere.
        for g in range(generation + 1):
            final = run(0, f"r{g}", env(root, "/bad" if g % 2 else "/good"))
            assert final.returncode == (1 if g % 2 else 0), final.stderr
            run_dir = root / "daily-report" / "runs" / f"r{g}"
            for name, content in reference.items():
                assert (run_dir / name).read_bytes() == content
        assert debris(root) == []
        check_consistent(root, reference)
    print(f"kill-anywhere: {kills} runs, {killed} SIGKILLs, {completed} completed, seed ok")
