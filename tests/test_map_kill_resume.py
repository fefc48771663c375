"""SIGKILL the driver of a map step in the middle of its items (threads, processes, Dask),
then resume: every item ends with exactly one ``done`` line and a correct output, and only
the items in flight (plus at most one journal batch) run twice. SIGTERM flushes the journal
and exits 143."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_python
from stalwart._map import BATCH

SCRIPT = Path(__file__).parent / "scripts" / "map_pipeline.py"
N = 240
WORKERS = 2
CHUNK = 4
WINDOW = WORKERS * 2 * CHUNK  # items in flight at most


def environment(tmp_path: Path, executor: str) -> dict[str, str]:
    return {
        "STALWART_ROOT": str(tmp_path / "state"),
        "MAP_EXECUTOR": executor,
        "MAP_N": str(N),
        "MAP_WORKERS": str(WORKERS),
        "MAP_CHUNK": str(CHUNK),
        "MAP_LOG": str(tmp_path / "executions.log"),
    }


def start_until_reached(tmp_path: Path, env: dict[str, str], stop_at: int) -> subprocess.Popen[str]:
    """Start the pipeline; return once item ``stop_at`` is running (it says so on a FIFO)."""
    fifo = tmp_path / "reached.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # read-write: never an EOF, never blocks
    full = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    full |= env | {"MAP_STOP_AT": str(stop_at), "MAP_FIFO": str(fifo), "MAP_SLEEP": "5"}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--run-id", "r1"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([reader], [], [], 120)
        assert ready, "the item never started"
        assert b"reached" in os.read(reader, 100)
    except BaseException:
        process.kill()
        raise
    finally:
        os.close(reader)
    return process


def journal_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "state" / "mapped" / "runs" / "r1" / ".checkpoints" / "square.items"
    return path.read_text().splitlines()


def check_resumed(tmp_path: Path, env: dict[str, str], done_before: int) -> None:
    resumed = run_python([str(SCRIPT), "--run-id", "r1"], env=env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{done_before} already done" in resumed.stderr
    done = Counter(line.split(" ")[0] for line in journal_lines(tmp_path) if " done" in line)
    assert done == Counter({str(n): 1 for n in range(N)})  # exactly one done line each
    out = tmp_path / "state" / "mapped" / "runs" / "r1" / "out"
    for n in range(N):
        assert json.loads((out / f"{n}.json").read_text()) == {"n": n, "square": n * n}
    executions = Counter((tmp_path / "executions.log").read_text().split())
    assert set(executions) == {str(n) for n in range(N)}
    twice = [key for key, count in executions.items() if count > 1]
    assert len(twice) <= BATCH + WINDOW, sorted(twice, key=int)


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_sigkill_mid_map_then_resume(tmp_path: Path, executor: str) -> None:
    env = environment(tmp_path, executor)
    process = start_until_reached(tmp_path, env, stop_at=N // 2)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    done_before = sum(1 for line in journal_lines(tmp_path) if " done" in line)
    assert 0 < done_before < N
    check_resumed(tmp_path, env, done_before)


def test_sigkill_mid_map_on_dask_then_resume(tmp_path: Path, dask_scheduler: str) -> None:
    env = environment(tmp_path, dask_scheduler.replace("tcp://", "dask://"))
    process = start_until_reached(tmp_path, env, stop_at=N // 2)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    done_before = sum(1 for line in journal_lines(tmp_path) if " done" in line)
    assert done_before < N
    check_resumed(tmp_path, env, done_before)


def test_sigterm_stops_scheduling_and_flushes_the_journal(tmp_path: Path) -> None:
    env = environment(tmp_path, "threads")
    process = start_until_reached(tmp_path, env, stop_at=N // 2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err
    lines = journal_lines(tmp_path)
    assert all(line.split(" ")[1] in ("started", "done") for line in lines)  # none torn
    done_before = sum(1 for line in lines if " done" in line)
    assert 0 < done_before < N
    check_resumed(tmp_path, env, done_before)
