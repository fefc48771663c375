"""The multi-machine setup: a map step on a real Dask cluster (a scheduler and two worker
processes on 127.0.0.1) with an ``s3://`` root (moto's S3 on loopback). The workers write
the items' outputs straight to S3 with their own credentials (from their environment: the
driver sends the root's URL, never a path or a secret); the driver alone writes the item
journal and the marker. SIGKILL the driver mid-map (on Dask, then on threads), resume from
another process in another, empty working directory: every item ends with exactly one
``done`` record and a correct output, and only the items in flight plus at most one journal
batch ran twice."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import stalwart
from conftest import dask_cluster, run_python
from s3support import S3Server, objects, wait_until
from stalwart._journal import parse_journal
from stalwart._map import BATCH
from stalwart._remote_state import open_store, run_holder, run_key
from test_map_kill_resume import CHUNK, N, start_until_reached

distributed = pytest.importorskip("distributed")

SCRIPT = Path(__file__).parent / "scripts" / "map_pipeline.py"
RUN = "mapped/runs/r1"
ITEMS = f"{RUN}/.checkpoints/square.items/"


@pytest.fixture(scope="module")
def s3_cluster(s3_server: S3Server) -> Iterator[str]:
    """A Dask cluster whose workers have the S3 endpoint and credentials in their own
    environment (as a worker on another machine would), started for this module."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "AWS_"))}
    env |= s3_server.env | {"AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    with dask_cluster(env) as address:
        yield address


def cube(ctx: stalwart.ItemContext, n: int) -> None:
    ctx.write_json(f"cubes/{ctx.key}.json", {"cube": n**3, "pid": os.getpid()})


def test_workers_on_other_hosts_write_straight_to_s3(
    s3_server: S3Server, s3_root: str, s3_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver believes it runs on driver.example: with a local root the workers would be
    # refused (test_map_dask); with an S3 root they are where the outputs go.
    monkeypatch.setattr(
        "stalwart._map.socket", SimpleNamespace(gethostname=lambda: "driver.example")
    )
    pipeline = stalwart.Pipeline("far", root=s3_root, alerters=[])
    with distributed.Client(s3_cluster, set_as_default=False) as client:
        pipeline.map(items=list(range(12)), executor=client, chunk=3)(cube)
        pipeline.run(run_id="r1")
        workers = set(client.run(os.getpid).values())
    stored = objects(s3_server, s3_root)
    written = [json.loads(stored[f"far/runs/r1/cubes/{n}.json"]) for n in range(12)]
    assert [w["cube"] for w in written] == [n**3 for n in range(12)]
    assert {w["pid"] for w in written} <= workers  # written by the workers themselves
    assert os.getpid() not in {w["pid"] for w in written}
    assert "far/runs/r1/.checkpoints/cube.done" in stored


def done_records(server: S3Server, root: str) -> Counter[str]:
    """Well-formed ``done`` lines per item, over every object of the item journal."""
    found: Counter[str] = Counter()
    for key, data in objects(server, root).items():
        if key.startswith(ITEMS):
            found.update(e.id for e in parse_journal(data).entries if e.state == "done")
    return found


def kill_then_resume_elsewhere(
    server: S3Server, root: str, tmp_path: Path, executor: str, window: int
) -> None:
    env = {
        "STALWART_ROOT": root,
        "STALWART_LEASE_SECONDS": "5",  # the killed driver's lease expires soon
        "MAP_EXECUTOR": executor,
        "MAP_N": str(N),
        "MAP_WORKERS": "2",
        "MAP_CHUNK": str(CHUNK),
        "MAP_LOG": str(tmp_path / "executions.log"),
    }
    process = start_until_reached(tmp_path, env, stop_at=N // 2)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    done_before = sum(done_records(server, root).values())
    assert 0 < done_before < N
    store = open_store(root)
    wait_until(lambda: run_holder(store, run_key("mapped", "r1")) is None, timeout=60)

    elsewhere = tmp_path / "another-machine"
    elsewhere.mkdir()
    resumed = run_python(
        [str(SCRIPT), "--run-id", "r1"],
        env={k: v for k, v in env.items() if k != "STALWART_LEASE_SECONDS"},
        cwd=elsewhere,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{done_before} already done" in resumed.stderr
    assert list(elsewhere.iterdir()) == []  # the state is on S3 only
    assert done_records(server, root) == Counter({str(n): 1 for n in range(N)})
    stored = objects(server, root)
    for n in range(N):
        assert json.loads(stored[f"{RUN}/out/{n}.json"]) == {"n": n, "square": n * n}
    assert f"{RUN}/.checkpoints/square.done" in stored
    executions = Counter((tmp_path / "executions.log").read_text().split())
    assert set(executions) == {str(n) for n in range(N)}
    twice = [key for key, count in executions.items() if count > 1]
    assert len(twice) <= BATCH + window, sorted(twice, key=int)


def test_sigkill_mid_map_on_dask_with_s3_then_resume_from_another_process(
    s3_server: S3Server, s3_root: str, s3_cluster: str, tmp_path: Path
) -> None:
    with distributed.Client(s3_cluster, set_as_default=False) as client:
        threads = sum(client.nthreads().values())
    window = threads * 2 * CHUNK  # two chunks per worker thread in flight, at most
    executor = s3_cluster.replace("tcp://", "dask://")
    kill_then_resume_elsewhere(s3_server, s3_root, tmp_path, executor, window)


def test_sigkill_mid_map_on_threads_with_s3_then_resume(
    s3_server: S3Server, s3_root: str, tmp_path: Path
) -> None:
    kill_then_resume_elsewhere(s3_server, s3_root, tmp_path, "threads", 2 * 2 * CHUNK)
