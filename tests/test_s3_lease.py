"""The run lock on object storage: a lease of create-only objects, judged by the store's
clock. One holder at a time (many processes, many rounds), takeover once a holder's lease
expired (killed holder), and a holder that lost its lease writes nothing more - even one
that was paused (SIGSTOP) past its expiry and wakes up while another process runs."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_python
from s3support import S3Server, contend, objects, wait_until
from stalwart._clock import sleep
from stalwart._errors import RunLockedError
from stalwart._lease import FencedStore, Lease, LeaseLostError, lease_holder, lease_ttl
from stalwart._remote_state import open_store, run_holder
from stalwart.testing import no_wait

SCRIPTS = Path(__file__).parent / "scripts"
STEPS = SCRIPTS / "steps_pipeline.py"
PAUSED = SCRIPTS / "s3_pause_pipeline.py"


def test_a_live_lease_refuses_a_second_holder_and_names_the_first(s3_root: str) -> None:
    store = open_store(s3_root)
    first = Lease(store, "p/runs/r1/.lease", ttl=30)
    first.acquire()
    try:
        second = Lease(store, "p/runs/r1/.lease", ttl=30)
        with pytest.raises(RunLockedError, match="already being worked on") as caught:
            second.acquire()
        assert caught.value.holder == first.holder
        assert f"pid {os.getpid()}" in caught.value.holder
        assert lease_holder(store, "p/runs/r1/.lease/") == first.holder
        assert first.renew()  # renewing makes the next epoch
        assert first.held
        with pytest.raises(RuntimeError, match="already held"):
            first.acquire()
    finally:
        first.release()
    assert lease_holder(store, "p/runs/r1/.lease/") is None
    with Lease(store, "p/runs/r1/.lease", ttl=30) as third:  # released: taken at once
        assert third.held
    assert len(store.list_keys("p/runs/r1/.lease/")) == 1  # older epochs tidied away


def test_an_expired_lease_is_taken_over_and_its_old_holder_writes_nothing(
    s3_server: S3Server, s3_root: str
) -> None:
    store = open_store(s3_root)
    old = Lease(store, "p/runs/r1/.lease", ttl=5)
    old.acquire()
    fenced = FencedStore(store, old)
    fenced.write("p/runs/r1/out", b"old holder")
    old._stop.set()  # its renewals stop: as if it hung
    s3_server.ahead = 10  # the store's clock says the lease expired
    try:
        new = Lease(store, "p/runs/r1/.lease", ttl=5)
        new.acquire()
    finally:
        s3_server.ahead = 0
    try:
        assert not old.renew()  # the next epoch is the new holder's: the old one lost
        with pytest.raises(LeaseLostError, match="another process took the run over"):
            fenced.write("p/runs/r1/out", b"late write")
        with pytest.raises(LeaseLostError):
            fenced.upload("p/runs/r1/out", str(STEPS))
        with pytest.raises(LeaseLostError):
            fenced.create("p/runs/r1/other", b"late")
        with pytest.raises(LeaseLostError):
            fenced.delete(["p/runs/r1/out"])
        assert store.read("p/runs/r1/out") == b"old holder"
        assert fenced.read("p/runs/r1/out") == b"old holder"  # reads need no lease
        old.release()  # a lost lease is not marked released
        assert lease_holder(store, "p/runs/r1/.lease/") == new.holder
    finally:
        new.release()


def test_a_holder_that_cannot_renew_in_time_stops_itself(s3_root: str) -> None:
    store = open_store(s3_root)
    lease = Lease(store, "p/runs/r1/.lease", ttl=4)
    lease.acquire()
    try:
        lease.check()
        with no_wait():
            sleep(3.5)  # past its deadline (3/4 of the lease) without a renewal
            with pytest.raises(LeaseLostError, match="not renewed for 3 s"):
                lease.check()
            assert not lease.renew()  # it does not even try: another may hold it by now
        assert not lease.held
    finally:
        lease.release()


def test_a_removed_lease_leaves_nothing_and_the_run_is_free_at_once(
    s3_server: S3Server, s3_root: str
) -> None:
    store = open_store(s3_root)
    lease = Lease(store, "p/runs/r1/.lease", ttl=30)
    with pytest.raises(RuntimeError, match="not held"):
        lease.remove()
    lease.acquire()
    assert lease.renew()
    lease.remove()  # while held: older epochs, then the newest
    assert store.list_keys("p/runs/r1/.lease/") == []
    assert not lease.held
    with Lease(store, "p/runs/r1/.lease", ttl=30) as next_one:  # nobody holds it: epoch 1
        assert store.list_keys("p/runs/r1/.lease/") == ["p/runs/r1/.lease/000000000001"]

        taken = Lease(store, "p/runs/r1/.lease", ttl=5)  # a holder that lost the run
        next_one._stop.set()
        s3_server.ahead = 40
        try:
            assert lease_holder(store, "p/runs/r1/.lease/") is None
            taken.acquire()
        finally:
            s3_server.ahead = 0
        with pytest.raises(LeaseLostError, match="another process took the run over"):
            next_one.remove()  # removes nothing
        assert lease_holder(store, "p/runs/r1/.lease/") == taken.holder
        taken.release()


def test_the_lease_duration_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lease_ttl() == 30
    monkeypatch.setenv("STALWART_LEASE_SECONDS", "5")
    assert lease_ttl() == 5
    monkeypatch.setenv("STALWART_LEASE_SECONDS", "1")
    with pytest.raises(ValueError, match="from 2 to 3600"):
        lease_ttl()
    monkeypatch.setenv("STALWART_LEASE_SECONDS", "soon")
    with pytest.raises(ValueError, match="from 2 to 3600"):
        lease_ttl()


ROUNDS = int(os.environ.get("STALWART_LEASE_ROUNDS", "100"))
"""Rounds of the exclusion test (8 processes x 100 rounds, as the issue asks)."""


def test_exactly_one_of_many_processes_holds_each_round(
    s3_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The contenders run untraced: coverage's tracer makes 8 x 100 rounds take 80 s instead of
    # 25 s on a busy 2-core machine, and the lease code they run is covered by the other tests.
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    processes, rounds = 8, ROUNDS
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=contend, args=(s3_root, rounds, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(processes * rounds)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    winners = Counter(n for n, _pid, won in outcomes if won)
    assert winners == dict.fromkeys(range(rounds), 1)
    assert len({pid for _n, pid, won in outcomes if won}) > 1  # not one process every time


def _start_holder(script: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    full.update(env)
    proc = subprocess.Popen(
        [sys.executable, str(script), *args, "--log-format", "text"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    assert ready == f"READY {proc.pid}\n", proc.communicate()
    return proc


def test_a_killed_holder_is_taken_over_once_its_lease_expires(
    s3_server: S3Server, s3_root: str, tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    env = {"STALWART_ROOT": s3_root, "TEST_TRACE": str(trace), "STALWART_LEASE_SECONDS": "5"}
    holder = _start_holder(STEPS, {**env, "TEST_BLOCK_STEP": "fetch"}, "--run-id", "r1")
    locked = run_python([str(STEPS), "--run-id", "r1"], env=env)
    assert locked.returncode == 75, locked.stderr
    assert "already being worked on" in locked.stderr
    holder.kill()
    holder.communicate()
    store = open_store(s3_root)
    assert run_holder(store, "orders/runs/r1") is not None  # its lease outlives it...
    s3_server.ahead = 10  # ...until the store's clock passes its expiry
    try:
        assert run_holder(store, "orders/runs/r1") is None
        resumed = run_python([str(STEPS), "--run-id", "r1"], env=env)
    finally:
        s3_server.ahead = 0
    assert resumed.returncode == 0, resumed.stderr
    assert [line.split()[0] for line in trace.read_text().splitlines()] == [
        "fetch",
        "fetch",
        "transform",
        "upload",
    ]
    assert objects(s3_server, s3_root)["orders/runs/r1/fetch.out"].endswith(b"orders of r1\n")


def test_a_paused_holder_wakes_past_its_expiry_and_overwrites_nothing(
    s3_server: S3Server, s3_root: str
) -> None:
    env = {"STALWART_ROOT": s3_root, "STALWART_LEASE_SECONDS": "2"}
    paused = _start_holder(PAUSED, {**env, "TEST_PAUSE": "1"}, "--run-id", "r1")
    try:
        _pid, status = os.waitpid(paused.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        store = open_store(s3_root)
        wait_until(lambda: run_holder(store, "paused/runs/r1") is None)  # real expiry
        taker = run_python([str(PAUSED), "--run-id", "r1"], env=env)
        assert taker.returncode == 0, taker.stderr
        before = objects(s3_server, s3_root)
        assert before["paused/runs/r1/second.out"] != f"by {paused.pid}\n".encode()
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    _out, err = paused.communicate(timeout=60)
    assert paused.returncode != 0
    assert "lost the run's lease" in err
    after = objects(s3_server, s3_root)
    outputs = {k: v for k, v in after.items() if "/." not in k}
    assert outputs == {k: v for k, v in before.items() if "/." not in k}
    assert {k for k in after if "/.checkpoints/" in k} == {
        k for k in before if "/.checkpoints/" in k
    }
