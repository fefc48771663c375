"""Map steps on a real Dask cluster (a scheduler and two worker processes on 127.0.0.1): a
``distributed.Client`` as the executor, a poison item that kills its worker, and workers on
another host refused with the reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import stalwart
from conftest import run_python
from stalwart._map_worker import RemoteRootRefused

distributed = pytest.importorskip("distributed")

SCRIPT = Path(__file__).parent / "scripts" / "map_pipeline.py"


@pytest.fixture
def client(dask_scheduler: str) -> Iterator[Any]:
    with distributed.Client(dask_scheduler, set_as_default=False) as found:
        yield found


def cube(ctx: stalwart.ItemContext, n: int) -> None:
    ctx.write_json(f"cubes/{ctx.key}.json", {"cube": n**3})


def test_a_client_runs_the_items_and_the_driver_journals_them(root: Path, client: Any) -> None:
    pipeline = stalwart.Pipeline("dasked", root=root, alerters=[])
    pipeline.map(items=list(range(30)), executor=client, chunk=5)(cube)
    pipeline.run(run_id="r1")
    run_dir = pipeline.run_dir("r1")
    assert json.loads((run_dir / "cubes" / "4.json").read_text()) == {"cube": 64}
    journal = (run_dir / ".checkpoints" / "cube.items").read_text().splitlines()
    assert sorted(line.split(" ")[0] for line in journal if " done" in line) == sorted(
        str(n) for n in range(30)
    )
    assert client.status == "running"  # the caller's client is left open


def test_workers_on_another_host_are_refused_with_the_reason(
    root: Path, dask_scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver believes it runs on driver.example; the workers say where they run.
    monkeypatch.setattr(
        "stalwart._map.socket", SimpleNamespace(gethostname=lambda: "driver.example")
    )
    pipeline = stalwart.Pipeline("far", root=root, alerters=[])
    pipeline.map(items=[1, 2], executor=dask_scheduler.replace("tcp://", "dask://"))(cube)
    with pytest.raises(RemoteRootRefused, match=r"runs on host \S+, but the state root"):
        pipeline.run(run_id="r1")
    assert not (pipeline.run_dir("r1") / "cubes").exists()


def test_a_poison_item_that_kills_its_worker_fails_alone(
    tmp_path: Path, dask_scheduler: str
) -> None:
    env = {
        "STALWART_ROOT": str(tmp_path / "state"),
        "MAP_EXECUTOR": dask_scheduler.replace("tcp://", "dask://"),
        "MAP_N": "8",
        "MAP_CHUNK": "4",
        "MAP_POISON": "3",
    }
    ran = run_python([str(SCRIPT), "--run-id", "r1", "--log-format", "text"], env=env, timeout=110)
    assert ran.returncode == 1, ran.stderr[-3000:]
    assert "1 of 8 items failed (first: item '3'" in ran.stderr
    status = run_python([str(SCRIPT), "status", "--run-id", "r1", "--json"], env=env)
    items = json.loads(status.stdout)["steps"][0]["items"]
    assert (items["done"], items["failed"], items["pending"]) == (7, 1, 0)
    listed = run_python([str(SCRIPT), "deadletter", "list", "--json"], env=env)
    [letter] = json.loads(listed.stdout)["dead_letters"]
    shown = run_python([str(SCRIPT), "deadletter", "show", letter["id"]], env=env)
    envelope = json.loads(shown.stdout)
    assert (envelope["kind"], envelope["key"], envelope["item"]) == ("item", "3", 3)
    assert envelope["error"]["type"] == "KilledWorker"
    assert "the worker running it died" in envelope["error"]["message"]
