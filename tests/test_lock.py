"""One process per run: a second process on the same run ID exits 75 at once, runs and
touches nothing, and names the holder; a SIGKILLed holder frees the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import stalwart
from conftest import run_python
from stalwart._atomic import temp_name_for
from stalwart._errors import RunLockedError

SCRIPT = Path(__file__).parent / "scripts" / "steps_pipeline.py"


class Holder:
    """A real process running the steps pipeline, blocked inside ``fetch`` with the lock."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "state"
        self.trace = tmp_path / "trace"
        self.env = {"STALWART_ROOT": str(self.root), "TEST_TRACE": str(self.trace)}
        self.run_dir = self.root / "orders" / "runs" / "r1"
        child_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))
        }
        child_env.update(self.env, TEST_BLOCK_STEP="fetch")
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--run-id", "r1", "--log-format", "text"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        assert ready == f"READY {self.proc.pid}\n", self.proc.communicate()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        # A generous timeout only guards against a hang: a loser that waited for the lock
        # would wait forever, since the holder is blocked until the test releases it.
        return run_python([str(SCRIPT), *args, "--log-format", "text"], env=self.env, timeout=30)

    def ran(self) -> list[str]:
        return self.trace.read_text().splitlines() if self.trace.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=60)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    running = Holder(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def test_second_process_exits_75_and_touches_nothing(holder: Holder) -> None:
    debris = holder.run_dir / temp_name_for("left-by-a-crash")
    debris.write_bytes(b"the holder's business, not the loser's")
    before = sorted(p.name for p in holder.run_dir.rglob("*"))

    loser = holder.cli("--run-id", "r1")
    assert loser.returncode == 75
    assert f"pid {holder.proc.pid} on host " in loser.stderr
    assert " since " in loser.stderr
    assert "already being worked on by another process" in loser.stderr
    assert "Traceback" not in loser.stderr
    assert holder.ran() == [f"fetch {holder.proc.pid}"]  # the loser ran no step
    assert sorted(p.name for p in holder.run_dir.rglob("*")) == before  # nor swept, nor wrote
    assert debris.exists()

    for command in (["--force", "--run-id", "r1"], ["reset", "--run-id", "r1"]):
        refused = holder.cli(*command)
        assert refused.returncode == 75, refused.stderr
        assert f"pid {holder.proc.pid}" in refused.stderr
    assert holder.ran() == [f"fetch {holder.proc.pid}"]

    # The holder goes on and finishes normally once released.
    assert holder.proc.stdin is not None
    holder.proc.stdin.write("go\n")
    holder.proc.stdin.flush()
    holder.proc.communicate(timeout=60)
    assert holder.proc.returncode == 0
    assert [line.split()[0] for line in holder.ran()] == ["fetch", "transform", "upload"]


def test_other_run_ids_are_not_blocked(holder: Holder) -> None:
    other = holder.cli("--run-id", "r2")
    assert other.returncode == 0, other.stderr
    others = [line.split() for line in holder.ran()[1:]]
    assert [step for step, _ in others] == ["fetch", "transform", "upload"]
    assert {pid for _, pid in others} != {str(holder.proc.pid)}
    assert holder.proc.poll() is None  # the holder is still blocked, lock held


def test_status_names_the_running_holder(holder: Holder) -> None:
    status = holder.cli("status", "--run-id", "r1")
    assert status.returncode == 0, status.stderr
    assert f"running now: pid {holder.proc.pid}" in status.stdout
    rows = [line.split() for line in status.stdout.splitlines()]
    assert ["fetch", "running"] in [row[:2] for row in rows]


def test_sigkilled_holder_frees_the_lock(holder: Holder) -> None:
    lock_note = (holder.run_dir / ".lock").read_text()
    assert lock_note.startswith(f"pid {holder.proc.pid} ")
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.communicate(timeout=60)
    assert holder.proc.returncode == -signal.SIGKILL

    after = holder.cli("--run-id", "r1")
    assert after.returncode == 0, after.stderr
    steps = [line.split()[0] for line in holder.ran()]
    assert steps == ["fetch", "fetch", "transform", "upload"]  # fetch again: it never finished
    assert not list(holder.run_dir.rglob("*.tmp"))  # the killed writer's temp is swept
    assert (holder.run_dir / ".lock").read_text() == ""


def test_lock_in_process_is_exclusive_too(root: Path) -> None:
    pipeline = stalwart.Pipeline("orders", root=root)
    nested: list[BaseException] = []

    @pipeline.step()
    def outer(ctx: stalwart.Context) -> None:
        try:
            pipeline.run(run_id=ctx.run_id)
        except RunLockedError as exc:
            nested.append(exc)

    result = pipeline.run(run_id="r1")
    assert result.ran == ("outer",)
    assert len(nested) == 1
    assert f"pid {os.getpid()}" in str(nested[0])
