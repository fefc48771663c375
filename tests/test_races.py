"""Races: several processes on one run ID. Each side effect happens once; the rest exit 75."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stalwart.testing import FlakyServer, Reply

PIPELINE = textwrap.dedent(
    """
    import os, sys
    import stalwart

    pipeline = stalwart.Pipeline("race", root=os.environ["ROOT"], alerters=[])

    @pipeline.step()
    def prepare(ctx):
        if os.environ.get("GATE"):
            print("in-step", flush=True)
            sys.stdin.readline()          # hold the lock until the test says go
        ctx.write_text("payload.txt", "the one upload")

    @pipeline.step()
    def upload(ctx):
        ctx.http.post(os.environ["SINK"], content=ctx.read_bytes("payload.txt"))

    if __name__ == "__main__":
        pipeline.main()
    """
)


def spawn(script: Path, env: dict[str, str], *, gate: bool = False) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    full.update(env)
    if gate:
        full["GATE"] = "1"
    return subprocess.Popen(
        [sys.executable, str(script), "--run-id", "r1", "--log-format", "json"],
        env=full,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "race_pipeline.py"
    path.write_text(PIPELINE)
    return path


def test_contenders_exit_75_at_once_and_touch_nothing(script: Path, tmp_path: Path) -> None:
    with FlakyServer() as server:
        server.route("POST", "/sink", Reply(status=201))
        env = {"ROOT": str(tmp_path / "state"), "SINK": server.url("/sink")}
        holder = spawn(script, env, gate=True)
        assert holder.stdout is not None
        assert holder.stdin is not None
        assert holder.stdout.readline().strip() == "in-step"  # the holder has the lock
        run_dir = tmp_path / "state" / "race" / "runs" / "r1"
        before = sorted(p.name for p in run_dir.rglob("*"))
        contenders = [spawn(script, env) for _ in range(5)]
        results = [c.communicate(timeout=60) for c in contenders]
        assert [c.returncode for c in contenders] == [75] * 5
        for _out, err in results:
            assert f"pid {holder.pid}" in err  # the message names the holder
        assert sorted(p.name for p in run_dir.rglob("*")) == before  # touched nothing
        holder.stdin.write("go\n")
        holder.stdin.flush()
        holder.communicate(timeout=60)
        assert holder.returncode == 0
        assert server.count("POST", "/sink") == 1


def test_free_for_all_of_eight_uploads_exactly_once(script: Path, tmp_path: Path) -> None:
    with FlakyServer() as server:
        server.route("POST", "/sink", Reply(status=201))
        env = {"ROOT": str(tmp_path / "state"), "SINK": server.url("/sink")}
        racers = [spawn(script, env) for _ in range(8)]
        for racer in racers:
            racer.communicate(timeout=60)
        codes = sorted(r.returncode for r in racers)
        assert set(codes) <= {0, 75}, codes
        assert codes.count(0) >= 1
        assert server.count("POST", "/sink") == 1  # each side effect happened once


def test_a_sigkilled_holder_frees_the_lock_at_once(script: Path, tmp_path: Path) -> None:
    with FlakyServer() as server:
        server.route("POST", "/sink", Reply(status=201))
        env = {"ROOT": str(tmp_path / "state"), "SINK": server.url("/sink")}
        holder = spawn(script, env, gate=True)
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "in-step"
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
        assert holder.returncode == -signal.SIGKILL
        successor = spawn(script, env)
        _out, err = successor.communicate(timeout=60)
        assert successor.returncode == 0, err
        assert server.count("POST", "/sink") == 1
