"""A worker process that dies takes only its own item down: the pool is renewed, the items
that were in flight run again (alone), journaled items never do; an interrupt inside the
items stops the step and keeps what was journaled; an unreachable Dask scheduler is said."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import stalwart
from conftest import run_python
from stalwart._map import ItemsFailed
from stalwart.cli._main import run_cli

SCRIPT = Path(__file__).parent / "scripts" / "map_pipeline.py"


def test_a_dying_process_fails_only_its_item(tmp_path: Path) -> None:
    env = {
        "STALWART_ROOT": str(tmp_path / "state"),
        "MAP_EXECUTOR": "processes",
        "MAP_N": "12",
        "MAP_WORKERS": "2",
        "MAP_CHUNK": "3",
        "MAP_POISON": "4",
        "MAP_LOG": str(tmp_path / "executions.log"),
    }
    ran = run_python([str(SCRIPT), "--run-id", "r1", "--log-format", "text"], env=env, timeout=110)
    assert ran.returncode == 1, ran.stderr[-3000:]
    assert "a worker process died (BrokenProcessPool)" in ran.stderr
    assert "1 of 12 items failed (first: item '4': BrokenProcessPool" in ran.stderr
    journal = tmp_path / "state" / "mapped" / "runs" / "r1" / ".checkpoints" / "square.items"
    states = Counter(line.split(" ")[1] for line in journal.read_text().splitlines())
    assert states == Counter({"started": 1, "done": 11, "failed": 1})
    executions = Counter((tmp_path / "executions.log").read_text().split())
    assert executions["4"] >= 2  # with its chunk, then alone
    # A re-run runs the failed item only.
    (tmp_path / "executions.log").unlink()
    again = run_python([str(SCRIPT), "--run-id", "r1"], env={**env, "MAP_POISON": ""}, timeout=110)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "executions.log").read_text().split() == ["4"]


def test_an_interrupt_inside_the_items_keeps_what_was_journaled(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = stalwart.Pipeline("stop", root=root, alerters=[])
    calls: Counter[int] = Counter()
    interrupt = {"at": 5}

    @pipeline.map(items=list(range(10)), workers=1, chunk=1)
    def work(ctx: stalwart.ItemContext, n: int) -> None:
        calls[n] += 1
        if n == interrupt["at"]:
            raise KeyboardInterrupt
        ctx.write_text(f"{n}.txt", str(n))

    assert run_cli(["--run-id", "r1", "--log-format", "text"], pipeline=pipeline) == 130
    assert "interrupted" in capsys.readouterr().err
    journal = pipeline.run_dir("r1") / ".checkpoints" / "work.items"
    done = {line.split(" ")[0] for line in journal.read_text().splitlines() if " done" in line}
    assert done >= {"0", "1", "2", "3", "4"}
    assert "5" not in done
    interrupt["at"] = -1
    calls.clear()
    assert run_cli(["--run-id", "r1"], pipeline=pipeline) == 0
    assert set(calls) == set(range(10)) - {int(n) for n in done}


def test_progress_is_logged_with_counts(
    root: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stalwart._map_progress.LOG_EVERY_S", 0.0)
    pipeline = stalwart.Pipeline("progress", root=root, alerters=[])

    @pipeline.map(items=list(range(4)), workers=1)
    def work(ctx: stalwart.ItemContext, n: int) -> None:
        if n == 3:
            raise ValueError("no")

    caplog.set_level("INFO", logger="stalwart.map")
    with pytest.raises(ItemsFailed, match="1 of 4 items failed"):
        pipeline.run(run_id="r1")
    records = [r for r in caplog.records if hasattr(r, "pending") and hasattr(r, "rate")]
    assert records
    last = records[-1]
    assert (last.done, last.failed, last.pending, last.total) == (3, 1, 0, 4)  # type: ignore[attr-defined]
    assert "3 done / 1 failed / 0 pending of 4 items" in last.getMessage()


def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    main, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    env |= {"STALWART_ROOT": str(tmp_path / "state"), "MAP_N": "30"}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--run-id", "r1"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
    )
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert process.wait(timeout=60) == 0
    text = shown.decode("utf-8", "replace")
    assert "step square" in text
    assert "30/30" in text


def test_an_unreachable_dask_scheduler_is_said(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    pipeline = stalwart.Pipeline("nowhere", root=root, alerters=[])

    @pipeline.map(items=[1], executor="dask://127.0.0.1:9")
    def work(ctx: stalwart.ItemContext, n: int) -> None: ...

    monkeypatch.setenv("STALWART_DASK_TIMEOUT", "1s")
    with pytest.raises(OSError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9"):
        pipeline.run(run_id="r1")
