"""Map steps against plain Python and plain Dask, measured in the same run (ratios).

    python benchmarks/map_steps.py                    # 100,000 items, 3 repeats, a Dask cluster
    python benchmarks/map_steps.py --items 2000 --repeats 1 --dask-scheduler tcp://127.0.0.1:8786

Rows (medians):

- ``resume: decide`` - a finished 100,000-item step whose marker is gone (killed after its
  last item): the driver's decision (``_Drive._decide``: the journal read, the latest state
  per item, the step's start line), timed inside the real run. Target < 0.3 s.
- ``resume: keys and decision`` - the driver's whole run of that step (``_Drive.run``: the
  keys of the 100,000 items, the decision, what is left - nothing). Target < 1 s.
- ``resume: whole process`` - ``python <pipeline> --run-id r`` of that step as a new process
  (start-up, items, keys, decision, marker). Target < 2 s. Against ``python -c pass``.
- ``threads: per item`` - a trivial item (``pass``) through ``@pipeline.map`` on 4 threads,
  minus a plain loop calling the same function; per item. Target < 20 us. The baseline is
  the leanest code doing the same job: a ``ThreadPoolExecutor`` running the function over
  the items in chunks of 16, the driver appending ``<id> done`` to a journal, one
  ``fdatasync`` per 64 lines (minus the same loop).
- ``threads: durable output`` - each item writes one output (``ctx.write_text``), one
  thread, against plain Python: one atomic write per item (temp, fsync, rename, directory
  fsync) plus one ``fdatasync`` of a journal per 64 items. Target <= 1.3x. The row below it
  (``4 threads``) is the same step on 4 threads, against the same baseline: what parallel
  items buy, no target.
- ``dask: chunked vs client.map`` - the same trivial function over the items on a Dask
  cluster (two worker processes), chunked by stalwart, against ``client.map`` + ``gather``
  of that function; per item. Target < 0.3 ms per item.

Nothing here is a test: ``tests/test_benchmarks.py`` runs it on a tiny size, never timing it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import stalwart
from stalwart import _map
from stalwart._atomic import fsync_directory

WORKLOAD = """
import sys
import stalwart
pipeline = stalwart.Pipeline("bench", root=sys.argv[1])
N = int(sys.argv[2])

@pipeline.map(items=lambda ctx: range(N), workers=4)
def item(ctx, n):
    pass

if __name__ == "__main__":
    pipeline.main(sys.argv[3:])
"""


def trivial(ctx: Any, n: int) -> None:
    """The item of the per-item rows: nothing at all."""


def durable(ctx: Any, n: int) -> None:
    ctx.write_text(f"out/{n}.txt", "x" * 16)


def median_of(samples: list[float]) -> float:
    return statistics.median(samples)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pipeline_over(root: Path, n: int, fn: Callable[[Any, int], None], **options: Any) -> Any:
    pipeline = stalwart.Pipeline("bench", root=root, alerters=[], metrics=[])
    pipeline.map(items=lambda ctx: range(n), **options)(fn)
    return pipeline


def bench_resume(scratch: Path, n: int, repeats: int) -> dict[str, Any]:
    root = scratch / "resume"
    pipeline = pipeline_over(root, n, trivial, workers=4)
    pipeline.run(run_id="r")  # finish it once
    marker = Path(pipeline.run_dir("r")) / ".checkpoints" / f"{pipeline.steps[0].name}.done"
    decisions: list[float] = []
    drives: list[float] = []
    decide, drive = _map._Drive._decide, _map._Drive.run

    def timed_decide(self: Any, keyed: Any) -> Any:
        """The decision, timed: the journal read, the latest state per id, the step's start
        line (the driver's own ``_decide``, inside its pause of the garbage collector)."""
        start = time.perf_counter()
        try:
            return decide(self, keyed)
        finally:
            decisions.append(time.perf_counter() - start)

    def timed_drive(self: Any) -> None:
        """The driver's whole run of the step, timed: nothing is left to run, so it is the
        keys of the items, the decision and what is left."""
        start = time.perf_counter()
        try:
            drive(self)
        finally:
            drives.append(time.perf_counter() - start)

    _map._Drive._decide = timed_decide  # type: ignore[method-assign]
    _map._Drive.run = timed_drive  # type: ignore[method-assign]
    try:
        for _ in range(repeats):
            marker.unlink()  # killed after its last item: the journal says all are done
            pipeline.run(run_id="r")
    finally:
        _map._Drive._decide, _map._Drive.run = decide, drive  # type: ignore[method-assign]
    assert marker.exists()
    script = scratch / "workload.py"
    script.write_text(WORKLOAD)
    process_root = scratch / "process"
    subprocess.run(
        [sys.executable, str(script), str(process_root), str(n), "--run-id", "r"], check=True
    )
    whole, floor = [], []
    marker = process_root / "bench" / "runs" / "r" / ".checkpoints" / "item.done"
    for _ in range(repeats):
        marker.unlink()
        whole.append(
            timed(
                lambda: subprocess.run(
                    [sys.executable, str(script), str(process_root), str(n), "--run-id", "r"],
                    check=True,
                    stderr=subprocess.DEVNULL,
                )
            )
        )
        floor.append(timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)))
    assert marker.exists()
    return {
        "resume_decide_s": median_of(decisions),
        "resume_driver_s": median_of(drives),
        "resume_process_s": median_of(whole),
        "python_start_s": median_of(floor),
    }


def bench_threads(scratch: Path, n: int, durable_n: int, repeats: int) -> dict[str, Any]:
    mapped, lean, plain = [], [], []

    def loop() -> None:
        for i in range(n):
            trivial(None, i)

    for index in range(repeats):  # interleaved: the machine's load falls on all three
        pipeline = pipeline_over(scratch / f"threads-{index}", n, trivial, workers=4)
        mapped.append(timed(partial(pipeline.run, run_id="r")))
        lean.append(timed(partial(lean_threads, scratch / f"lean-{index}", n)))
        plain.append(timed(loop))
    durable_one, durable_four, durable_plain = [], [], []
    for index in range(repeats):
        pipeline = pipeline_over(scratch / f"durable-{index}", durable_n, durable, workers=1)
        durable_one.append(timed(partial(pipeline.run, run_id="r")))
        target = scratch / f"plain-{index}"
        durable_plain.append(timed(partial(plain_durable, target, durable_n)))
        pipeline = pipeline_over(scratch / f"durable4-{index}", durable_n, durable, workers=4)
        durable_four.append(timed(partial(pipeline.run, run_id="r")))
    return {
        "threads_per_item_us": (median_of(mapped) - median_of(plain)) / n * 1e6,
        "lean_per_item_us": (median_of(lean) - median_of(plain)) / n * 1e6,
        "threads_durable_ratio": median_of(durable_one) / median_of(durable_plain),
        "threads_durable_s": median_of(durable_one),
        "threads_durable_4_s": median_of(durable_four),
        "plain_durable_s": median_of(durable_plain),
    }


def lean_threads(directory: Path, n: int, workers: int = 4, chunk: int = 16) -> None:
    """The leanest code doing what a map step of trivial items does: a thread pool runs the
    function over the items in chunks; the driver appends ``<id> done`` per item to a
    journal, ``fdatasync`` per 64 lines and at the end."""

    def run(first: int) -> list[int]:
        done = []
        for i in range(first, min(n, first + chunk)):
            trivial(None, i)
            done.append(i)
        return done

    directory.mkdir(parents=True)
    journal = os.open(directory / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with cf.ThreadPoolExecutor(workers) as pool:
            waiting = 0
            for future in cf.as_completed([pool.submit(run, i) for i in range(0, n, chunk)]):
                for i in future.result():
                    os.write(journal, f"{i} done\n".encode())
                    waiting += 1
                    if waiting == 64:
                        os.fdatasync(journal)
                        waiting = 0
        os.fdatasync(journal)
    finally:
        os.close(journal)


def plain_durable(directory: Path, n: int) -> None:
    """Plain Python: each output written atomically and durably; a journal line per item,
    ``fdatasync`` per 64 lines."""
    out = directory / "out"
    out.mkdir(parents=True)
    journal = os.open(directory / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for i in range(n):
            target = out / f"{i}.txt"
            temp = out / f".{i}.txt.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            os.write(fd, b"x" * 16)
            os.fsync(fd)
            os.close(fd)
            os.replace(temp, target)
            fsync_directory(out)
            os.write(journal, f"{i} done\n".encode())
            if i % 64 == 63:
                os.fdatasync(journal)
        os.fdatasync(journal)
    finally:
        os.close(journal)


def bench_dask(scratch: Path, n: int, repeats: int, scheduler: str | None) -> dict[str, Any]:
    from distributed import Client, LocalCluster  # noqa: PLC0415 - only the Dask row

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        scheduler = cluster.scheduler_address
    try:
        with Client(scheduler, set_as_default=False) as client:  # type: ignore[no-untyped-call]
            chunked, plain = [], []
            for index in range(repeats):
                pipeline = pipeline_over(scratch / f"dask-{index}", n, trivial, executor=client)
                chunked.append(timed(partial(pipeline.run, run_id="r")))
                plain.append(timed(partial(client_map, client, n)))
    finally:
        if cluster is not None:
            cluster.close()
    return {
        "dask_chunked_per_item_ms": median_of(chunked) / n * 1e3,
        "dask_client_map_per_item_ms": median_of(plain) / n * 1e3,
    }


def client_map(client: Any, n: int) -> None:
    """Plain Dask: one task per item of the same function, gathered."""
    client.gather(client.map(partial(trivial, None), range(n), pure=False))


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(metric, stalwart, baseline, ratio, target/result)."""
    shown = []

    def row(  # noqa: PLR0917
        label: str, value: float, base: float | None, unit: str, target: str, ok: bool | None
    ) -> tuple[str, str, str, str, str]:
        ratio = f"{value / base:.2f}x" if base else "-"
        return (
            label,
            f"{value:.3f} {unit}",
            f"{base:.3f} {unit}" if base else "-",
            ratio,
            target if ok is None else f"{target} {'PASS' if ok else 'FAIL'}",
        )

    if "resume_decide_s" in results:
        shown.append(
            row(
                "resume: decide",
                results["resume_decide_s"],
                None,
                "s",
                "< 0.3 s",
                results["resume_decide_s"] < 0.3,
            )
        )
        shown.append(
            row(
                "resume: keys and decision",
                results["resume_driver_s"],
                None,
                "s",
                "< 1 s",
                results["resume_driver_s"] < 1,
            )
        )
        shown.append(
            row(
                "resume: whole process",
                results["resume_process_s"],
                results["python_start_s"],
                "s",
                "< 2 s",
                results["resume_process_s"] < 2,
            )
        )
    if "threads_per_item_us" in results:
        shown.append(
            row(
                "threads: per item",
                results["threads_per_item_us"],
                results["lean_per_item_us"],
                "us",
                "< 20 us",
                results["threads_per_item_us"] < 20,
            )
        )
        shown.append(
            row(
                "threads: durable output",
                results["threads_durable_s"],
                results["plain_durable_s"],
                "s",
                "<= 1.3x",
                results["threads_durable_ratio"] <= 1.3,
            )
        )
        shown.append(
            row(
                "  4 threads",
                results["threads_durable_4_s"],
                results["plain_durable_s"],
                "s",
                "info",
                None,
            )
        )
    if "dask_chunked_per_item_ms" in results:
        shown.append(
            row(
                "dask: chunked vs client.map",
                results["dask_chunked_per_item_ms"],
                results["dask_client_map_per_item_ms"],
                "ms",
                "< 0.3 ms",
                results["dask_chunked_per_item_ms"] < 0.3,
            )
        )
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=100_000, help="items of the resume rows")
    parser.add_argument("--thread-items", type=int, help="items of the thread rows (items/5)")
    parser.add_argument("--durable-items", type=int, default=2000, help="items writing outputs")
    parser.add_argument("--dask-items", type=int, help="items on Dask (items/10)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dask-scheduler", help="use this scheduler (default: a LocalCluster)")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask row")
    parser.add_argument("--tmpdir", type=Path, help="where state goes (default: the temp dir)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.items < 1:
        parser.error("--repeats and --items must be at least 1")
    scratch = Path(tempfile.mkdtemp(prefix="stalwart-map-bench-", dir=args.tmpdir))
    try:
        results: dict[str, Any] = {"items": args.items}
        results |= bench_resume(scratch, args.items, args.repeats)
        results |= bench_threads(
            scratch, args.thread_items or max(1, args.items // 5), args.durable_items, args.repeats
        )
        if not args.no_dask:
            dask_items = args.dask_items or max(1, args.items // 10)
            results |= bench_dask(scratch, dask_items, args.repeats, args.dask_scheduler)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{'metric':<30} {'stalwart':>14} {'baseline':>14} {'ratio':>8}  target")
    for label, value, base, ratio, target in rows(results):
        print(f"{label:<30} {value:>14} {base:>14} {ratio:>8}  {target}")
    if args.json:
        args.json.write_text(json.dumps({"format": 1, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
