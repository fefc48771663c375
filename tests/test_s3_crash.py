"""Crashes on an ``s3://`` root, with real processes: a SIGKILL in the middle of a streamed
output leaves no partial object, and another process (another working directory, another
temp directory: another machine, as far as the run can tell) resumes it to outputs
byte-identical to an uninterrupted run; Ctrl-C mid-write publishes nothing; a second
process on a running run exits 75 at once and touches nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import run_python
from s3support import S3Server, objects

SCRIPT = Path(__file__).parent / "scripts" / "steps_pipeline.py"


def outputs(server: S3Server, root: str) -> dict[str, bytes]:
    """The step outputs of run r1 (not stalwart's own objects)."""
    prefix = "orders/runs/r1/"
    return {
        key[len(prefix) :]: data
        for key, data in objects(server, root).items()
        if key.startswith(prefix) and not key[len(prefix) :].startswith(".")
    }


class Holder:
    """The steps pipeline in a real process, blocked inside ``step`` with part of its
    output streamed (to the local temp file that is uploaded only on success)."""

    def __init__(self, root: str, step: str, trace: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
        env.update(STALWART_ROOT=root, TEST_TRACE=str(trace), TEST_BLOCK_STEP=step)
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--run-id", "r1", "--log-format", "text"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        assert ready == f"READY {self.proc.pid}\n", self.proc.communicate()

    def end(self, sig: signal.Signals) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


def test_a_sigkill_mid_write_leaves_no_partial_object_and_resumes_elsewhere(
    s3_server: S3Server, s3_root: str, tmp_path: Path
) -> None:
    reference_root = s3_root + "-reference"
    clean = run_python([str(SCRIPT), "--run-id", "r1"], env={"STALWART_ROOT": reference_root})
    assert clean.returncode == 0, clean.stderr
    expected = outputs(s3_server, reference_root)
    assert set(expected) == {"fetch.out", "transform.out", "upload.out"}

    trace = tmp_path / "trace"
    holder = Holder(s3_root, "transform", trace)
    code, _err = holder.end(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert outputs(s3_server, s3_root) == {"fetch.out": expected["fetch.out"]}

    elsewhere = tmp_path / "other-machine"
    (elsewhere / "tmp").mkdir(parents=True)
    env = {"STALWART_ROOT": s3_root, "TMPDIR": str(elsewhere / "tmp"), "TEST_TRACE": str(trace)}
    args = [str(SCRIPT), "--run-id", "r1", "--log-format", "text"]
    # The killed holder's lease (30 s) outlives it: a resume exits 75 at once...
    resumed = run_python(args, env=env, cwd=elsewhere)
    assert resumed.returncode == 75, resumed.stderr
    s3_server.ahead = 40  # ...until the store's clock says the lease expired
    try:
        resumed = run_python(args, env=env, cwd=elsewhere)
    finally:
        s3_server.ahead = 0
    assert resumed.returncode == 0, resumed.stderr
    assert "step fetch already done, skipping" in resumed.stderr
    assert outputs(s3_server, s3_root) == expected  # byte for byte
    ran = [line.split()[0] for line in trace.read_text().splitlines()]
    assert ran == ["fetch", "transform", "transform", "upload"]


def test_ctrl_c_mid_write_publishes_nothing(
    s3_server: S3Server, s3_root: str, tmp_path: Path
) -> None:
    holder = Holder(s3_root, "fetch", tmp_path / "trace")
    code, err = holder.end(signal.SIGINT)
    assert code == 130, err
    assert "interrupted" in err
    stored = objects(s3_server, s3_root)
    assert "orders/runs/r1/fetch.out" not in stored
    assert not any("/.checkpoints/" in key for key in stored)
    status = run_python([str(SCRIPT), "status", "--run-id", "r1"], env={"STALWART_ROOT": s3_root})
    assert "interrupted" in status.stdout  # the journal was flushed before exiting
    assert status.stdout.count("running now") == 0  # the lease was released


def test_a_second_process_exits_75_at_once_and_touches_nothing(
    s3_server: S3Server, s3_root: str, tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    holder = Holder(s3_root, "fetch", trace)
    try:
        before = objects(s3_server, s3_root)
        second = run_python(
            [str(SCRIPT), "--run-id", "r1", "--log-format", "text"],
            env={"STALWART_ROOT": s3_root, "TEST_TRACE": str(trace)},
            timeout=30,
        )
        assert second.returncode == 75, second.stderr
        assert "already being worked on by another process" in second.stderr
        assert f"pid {holder.proc.pid}" in second.stderr
        after = objects(s3_server, s3_root)
        # (The holder's own journal may have gained a segment meanwhile.)
        assert {k: v for k, v in after.items() if "/.journal/" not in k} == {
            k: v for k, v in before.items() if "/.journal/" not in k
        }
        leases = [v for k, v in after.items() if "/.lease/" in k]
        assert leases
        assert all(f"pid {holder.proc.pid} ".encode() in lease for lease in leases)
        status = run_python(
            [str(SCRIPT), "status", "--run-id", "r1"], env={"STALWART_ROOT": s3_root}
        )
        assert f"running now: pid {holder.proc.pid}" in status.stdout
    finally:
        assert holder.proc.stdin is not None
        holder.proc.stdin.write("go\n")
        holder.proc.stdin.flush()
        holder.proc.communicate(timeout=60)
    assert holder.proc.returncode == 0
    assert [line.split()[0] for line in trace.read_text().splitlines()] == [
        "fetch",
        "transform",
        "upload",
    ]
