"""Interrupts: Ctrl-C and SIGTERM stop a step cleanly (exit 130 / 143 through the handler, no
marker, no partial output, no temp file, resume at that step); SIGKILL in the middle of a
large streaming write never leaves a partial destination, and the next run sweeps the debris.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

import stalwart
from conftest import run_python
from stalwart._atomic import is_temp_name, sweep_temp_files
from stalwart._checkpoint import CheckpointStore
from stalwart.cli._main import run_cli
from stalwart.testing import RecordingAlerter

SCRIPTS = Path(__file__).parent / "scripts"
STEPS_SCRIPT = SCRIPTS / "steps_pipeline.py"
CHAOS_SCRIPT = SCRIPTS / "chaos_writer.py"
KILLS = int(os.environ.get("STALWART_CHAOS_KILLS", "20"))
CHUNKS = 24  # MiB per write


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``python args...`` with pipes on stdin/stdout/stderr (the test talks to it)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    full_env.update(env)
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def temp_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if is_temp_name(p.name))


def markers(run_dir: Path) -> list[str]:
    return sorted(p.name[: -len(".done")] for p in (run_dir / ".checkpoints").glob("*.done"))


def sha256_of(path: Path) -> str | None:
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- KeyboardInterrupt inside a step (in-process) ---------------------------------------------


def test_keyboard_interrupt_in_a_step(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alerts = RecordingAlerter()
    pipeline = stalwart.Pipeline("orders", root=root, alerters=[alerts])
    calls: list[str] = []
    interrupt = {"transform": True}

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        calls.append(ctx.step)
        ctx.write_text("fetch.out", "orders\n")

    @pipeline.step()
    def transform(ctx: stalwart.Context) -> None:
        calls.append(ctx.step)
        ctx.write_text("small.out", "written before the interrupt\n")
        with ctx.atomic_write("transform.out") as out:
            out.write("half a report " * 200_000)
            if interrupt["transform"]:
                raise KeyboardInterrupt

    @pipeline.step()
    def upload(ctx: stalwart.Context) -> None:
        calls.append(ctx.step)
        ctx.write_text("upload.out", ctx.read_text("transform.out")[:10])

    argv = ["--run-id", "r1", "--log-format", "text"]
    assert run_cli(argv, pipeline=pipeline) == 130
    run_dir = pipeline.run_dir("r1")
    err = capsys.readouterr().err
    assert ": interrupted; " in err
    assert "not marked done" in err
    assert "step transform interrupted (SIGINT)" in err
    assert calls == ["fetch", "transform"]
    assert markers(run_dir) == ["fetch"]
    assert not (run_dir / "transform.out").exists()
    assert temp_files(root) == []
    assert len(alerts) == 0  # an interrupt is not a failure: nobody is paged
    assert CheckpointStore(run_dir).read_record("transform").outcome == "interrupted"

    interrupt["transform"] = False
    calls.clear()
    assert run_cli(argv, pipeline=pipeline) == 0
    assert calls == ["transform", "upload"]
    assert "step fetch already done, skipping" in capsys.readouterr().err
    assert markers(run_dir) == ["fetch", "transform", "upload"]
    done = CheckpointStore(run_dir).read_marker("transform")
    assert done is not None
    assert done.runs == 2


def test_keyboard_interrupt_through_main_exits_130(root: Path) -> None:
    pipeline = stalwart.Pipeline("p", root=root)

    @pipeline.step()
    def only(ctx: stalwart.Context) -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        pipeline.main(["--run-id", "r1", "--log-format", "text"])
    assert info.value.code == 130


# -- real signals to real processes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "code", "says"),
    [
        (signal.SIGTERM, 143, "steps_pipeline.py: terminated (SIGTERM)"),
        (signal.SIGINT, 130, "steps_pipeline.py: interrupted"),
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_signal_mid_step_stops_cleanly_and_resumes(
    tmp_path: Path, signum: int, code: int, says: str
) -> None:
    root = tmp_path / "state"
    trace = tmp_path / "trace"
    env = {"STALWART_ROOT": str(root), "TEST_TRACE": str(trace)}
    run_dir = root / "orders" / "runs" / "r1"
    argv = [str(STEPS_SCRIPT), "--run-id", "r1", "--log-format", "text"]
    proc = spawn(argv, {**env, "TEST_BLOCK_STEP": "transform"})
    ready = proc.stdout.readline() if proc.stdout else ""
    assert ready == f"READY {proc.pid}\n", proc.communicate()
    # Mid-step: half of transform.out sits in a temp file, nothing at the destination.
    assert [p.parent for p in temp_files(run_dir)] == [run_dir]
    assert not (run_dir / "transform.out").exists()

    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code  # exited through its handler, not killed by the signal
    assert says in err
    assert "Traceback" not in err
    assert markers(run_dir) == ["fetch"]
    assert not (run_dir / "transform.out").exists()
    assert temp_files(root) == []
    assert CheckpointStore(run_dir).read_record("transform").outcome == "interrupted"

    resumed = run_python(argv, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "step fetch already done, skipping" in resumed.stderr
    ran = [line.split()[0] for line in trace.read_text().splitlines()]
    assert ran == ["fetch", "transform", "transform", "upload"]
    assert markers(run_dir) == ["fetch", "transform", "upload"]


# -- SIGKILL in the middle of a large streaming write -------------------------------------------


def load_chaos_writer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_writer", CHAOS_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_completely(root: Path, seed: int) -> str:
    result = run_python([str(CHAOS_SCRIPT), str(root), str(seed), str(CHUNKS), "none"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "renamed"
    return result.stdout


def kill_points(kills: int) -> list[tuple[bool, str]]:
    """(gated, line to kill after): even kills wait at an exact chunk; odd ones run free and
    are killed after a late line, so the kill lands in writing, flush, fsync, rename, or
    between the rename and the marker."""
    free = ["closing", f"chunk {CHUNKS - 2}", "renamed"]
    points = []
    for i in range(kills):
        if i % 2 == 0:
            points.append((True, f"chunk {(i // 2 * 5) % CHUNKS}"))
        else:
            points.append((False, free[(i // 2) % len(free)]))
    return points


@pytest.mark.slow
def test_sigkill_during_large_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    writer = load_chaos_writer()
    root = tmp_path / "state"
    run_dir = root / "chaos" / "runs" / "chaos"
    dest = run_dir / "big.bin"
    write_completely(root, seed=0)
    current = sha256_of(dest)
    assert current == writer.content_sha256(0, CHUNKS)

    outcomes: Counter[str] = Counter()
    for i, (gated, kill_after) in enumerate(kill_points(KILLS)):
        seed = i + 1
        new = writer.content_sha256(seed, CHUNKS)
        wait = "every" if gated else "start"
        proc = spawn([str(CHAOS_SCRIPT), str(root), str(seed), str(CHUNKS), wait], {})
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline() == "started\n", proc.communicate()
        # The run started by sweeping: whatever the previous kill left is gone.
        assert temp_files(root) == []
        proc.stdin.write("\n")
        proc.stdin.flush()
        while (line := proc.stdout.readline().rstrip("\n")) != kill_after:
            assert line, f"writer ended before {kill_after!r}: {proc.communicate()}"
            if gated:
                proc.stdin.write("\n")
                proc.stdin.flush()
        if gated:  # another process sweeping now (say, another run) must not take the live temp
            live = temp_files(root)
            assert len(live) == 1
            assert sweep_temp_files(root) == []
            assert temp_files(root) == live
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode in ((-signal.SIGKILL,) if gated else (-signal.SIGKILL, 0))

        actual = sha256_of(dest)
        assert actual in (current, new), f"kill {i} after {kill_after!r}: partial destination"
        debris = temp_files(root)
        assert len(debris) <= 1
        if gated:  # killed while streaming: old content, the partial temp left behind
            assert actual == current
            assert debris
            assert debris[0].stat().st_size < (CHUNKS + 1) * (1 << 20)
        marker = CheckpointStore(run_dir).read_marker("big")
        if marker is not None:  # a marker never describes content that is not on disk
            assert marker.outputs[0].sha256 == actual
        outcomes["old" if actual == current else "new"] += 1
        outcomes["debris" if debris else "clean"] += 1
        outcomes["marker" if marker else "no marker"] += 1
        current = actual

    print(f"\nSIGKILL x{KILLS} during a {CHUNKS} MiB atomic write: {dict(outcomes)}")
    assert outcomes["old"] + outcomes["new"] == KILLS
    assert outcomes["old"] >= (KILLS + 1) // 2  # every gated kill kept the old content
    # The next run sweeps the debris and completes.
    last = write_completely(root, seed=KILLS + 1)
    assert last.splitlines()[0] == "started"
    assert sha256_of(dest) == writer.content_sha256(KILLS + 1, CHUNKS)
    assert temp_files(root) == []
    assert CheckpointStore(run_dir).is_done("big", run_id="chaos")
