"""``status`` peeking at the run lock never makes a starting run think the run is locked.

A holder killed with SIGKILL leaves its note in ``.lock``. A real process here polls
``lock_holder`` in a tight loop (what a dashboard running ``status`` does) while this process
takes and releases the run lock again and again: not one acquisition may fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stalwart import _lock
from stalwart._lock import RunLock, lock_holder

POLLER = """
import os, sys
from stalwart._lock import lock_holder
run_dir, stop = sys.argv[1], sys.argv[2]
print("ready", flush=True)
for i in range(50_000_000):
    lock_holder(run_dir)
    if i % 64 == 0 and os.path.exists(stop):
        break
"""


def test_a_polling_status_never_fails_a_starting_run(tmp_path: Path) -> None:
    lock_path = tmp_path / ".lock"
    lock_path.write_text("pid 4242 on host gone since 2026-11-28T00:00:00Z\n")  # killed holder
    assert lock_holder(tmp_path) is None  # a stale note: nobody holds it
    stop = tmp_path / "stop"
    pollers = [
        subprocess.Popen(
            [sys.executable, "-c", POLLER, str(tmp_path), str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    failures = 0
    try:
        for poller in pollers:
            assert poller.stdout is not None
            assert poller.stdout.readline() == "ready\n"
        for _ in range(400):
            lock = RunLock(lock_path)
            try:
                lock.acquire()
            except Exception:
                failures += 1
                lock_path.write_text("pid 4242 on host gone\n")
                continue
            # a live holder is seen by the peek, and its note is the holder's
            assert lock_holder(tmp_path) is not None
            lock.release()
            lock_path.write_text("pid 4242 on host gone\n")  # as if killed again
    finally:
        stop.touch()
        for poller in pollers:
            poller.wait(timeout=60)
            if poller.stdout is not None:
                poller.stdout.close()
    assert failures == 0


def test_without_a_readable_lock_table_the_peek_still_tells_live_from_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lock, "_TABLE", str(tmp_path / "no-such-table"))
    lock_path = tmp_path / ".lock"
    lock_path.write_text("pid 4242 on host gone\n")
    assert lock_holder(tmp_path) is None
    with RunLock(lock_path):
        holder = lock_holder(tmp_path)
        assert holder is not None
        assert f"pid {os.getpid()}" in holder


def test_an_inode_listed_on_another_device_is_unsure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    inode = os.stat(target).st_ino
    table = tmp_path / "locks"
    table.write_text(
        f"1: POSIX  ADVISORY  WRITE 7 00:01:{inode} 0 EOF\n"
        f"2: FLOCK  ADVISORY  WRITE 7 ff:ee:{inode} 0 EOF\n"
    )
    monkeypatch.setattr(_lock, "_TABLE", str(table))
    fd = os.open(target, os.O_RDONLY)
    try:
        assert _lock.flock_held(fd) is None
        table.write_text("garbage\n")
        assert _lock.flock_held(fd) is False
    finally:
        os.close(fd)
