"""``make bench`` on object storage: a step on an ``s3://`` root against a plain boto3 PUT of
the same output plus a marker, both against the same S3 API (moto's server on 127.0.0.1,
started here), interleaved repeat by repeat, medians.

Usage: ``.venv/bin/python benchmarks/s3.py [--repeats N] [--steps N] [--items N]
[--map-items N] [--item-outputs N]``

Rows:

1. per step: ``pipeline.run(run_id=...)`` of N steps, each ``ctx.write_text`` of a 9-byte
   output, a fresh run each repeat (so the lease, the marker listing and the journal are
   counted, spread over the steps), vs per step a boto3 ``put_object`` of the output and one
   of a marker of the same size as stalwart's. Target: <= 1.5x.
2. skip path: the same finished run again (every step done), per step.
3. journal of items (info): reading a ``SegmentedLog`` holding a snapshot of N records (one
   JSON line each) and 32 segments - what a resume of a map step's journal reads.
4. map step resume: a finished map step of ``--map-items`` items (100,000) whose marker is
   gone (its driver killed after the last item), its item journal a snapshot plus 31
   segments (the most there can be): ``pipeline.run`` in a warm process (the lease, the
   run's listing, the items and their keys, reading and deciding, the marker). Target < 1 s.
   Also: the decision alone (reading and parsing the journal), and the same resume as a new
   process (``python`` start-up, imports, s3fs and the probe included).
5. map item on S3: ``--item-outputs`` items on 8 threads, each ``ctx.write_text`` of a
   16-byte output, vs plain Python on 8 threads: a boto3 ``put_object`` per output plus one
   ``put_object`` of a journal segment per 64 items; per item.

moto is not a fast server (about 10 ms a request here); what matters is the ratio, since both
sides pay the same per request. The server runs without the test suite's request lock (it
serves requests concurrently, like a real store).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

import stalwart
from stalwart._map import _no_gc
from stalwart._remote_state import COMPACT_AFTER, RemoteItemJournal, item_journal_key, open_store
from stalwart._store import SegmentedLog, StateStore

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


def serve() -> None:
    """The server side (``s3.py --serve``, a process of its own): print the port, serve."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server(
        "127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True
    )
    print(server.server_port, flush=True)
    server.serve_forever()


def start_server() -> tuple[str, subprocess.Popen[str]]:
    """moto in its own process (its CPU is not the client's), on a free port."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    endpoint = f"http://127.0.0.1:{int(proc.stdout.readline())}"
    os.environ.update(
        CREDENTIALS,
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    for name in list(os.environ):
        if name.startswith(("STALWART_", "SLACK_")):
            del os.environ[name]
    return endpoint, proc


def pipeline_of(steps: int, root: str) -> stalwart.Pipeline:
    pipeline = stalwart.Pipeline("bench", root=root)
    for n in range(steps):

        def step(ctx: stalwart.Context) -> None:
            ctx.write_text(f"{ctx.step}.txt", "9 bytes!\n")

        pipeline.step(name=f"s{n:03d}")(step)
    return pipeline


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--map-items", type=int, default=100_000)
    parser.add_argument("--item-outputs", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    endpoint, server = start_server()
    try:
        return measure(args, endpoint)
    finally:
        server.kill()
        server.wait()


def measure(args: argparse.Namespace, endpoint: str) -> int:
    client: Any = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    root = "s3://bench/state"
    pipeline = pipeline_of(args.steps, root)
    pipeline.run(run_id="warm-up")  # s3fs, the probe, the bytecode: not counted
    marker = "state/bench/runs/warm-up/.checkpoints/s000.done"
    marker_json = client.get_object(Bucket="bench", Key=marker)["Body"].read()

    def plain(run: str) -> None:
        for n in range(args.steps):
            prefix = f"plain/runs/{run}"
            client.put_object(Bucket="bench", Key=f"{prefix}/s{n:03d}.txt", Body=b"9 bytes!\n")
            client.put_object(
                Bucket="bench", Key=f"{prefix}/.checkpoints/s{n:03d}.done", Body=marker_json
            )

    plain("warm-up")
    ours: list[float] = []
    theirs: list[float] = []
    skips: list[float] = []
    for repeat in range(args.repeats):
        run = f"r{repeat}"
        sides: list[tuple[list[float], Callable[[], object]]] = [
            (ours, functools.partial(pipeline.run, run_id=run)),
            (theirs, functools.partial(plain, run)),
        ]
        for samples, fn in sides if repeat % 2 == 0 else reversed(sides):
            samples.append(timed(fn) / args.steps)
        skips.append(timed(functools.partial(pipeline.run, run_id=run)) / args.steps)

    journal = "bench/runs/items/.journal"
    log = SegmentedLog(open_store(root), journal)
    log.read()
    log.append(b"first\n")
    log.compact(
        b"".join(
            json.dumps({"item": n, "state": "done", "sha256": "0" * 64}).encode() + b"\n"
            for n in range(args.items)
        )
    )
    for n in range(32):
        log.append(f"segment {n}\n".encode())
    reads = [timed(SegmentedLog(open_store(root), journal).read) for _ in range(3)]

    resume = bench_map_resume(root, args.map_items, args.repeats)
    item, plain_item = bench_map_items(client, root, args.item_outputs, args.repeats)

    step, plain_step = statistics.median(ours), statistics.median(theirs)
    ratio = step / plain_step
    verdict = "PASS" if ratio <= 1.5 else "FAIL"
    skip = statistics.median(skips)
    rows = [
        (
            "per step on S3",
            f"{step * 1000:.1f} ms",
            f"{plain_step * 1000:.1f} ms",
            f"{ratio:.2f}x",
            "<= 1.5x",
            verdict,
        ),
        ("skip path on S3 (per step)", f"{skip * 1000:.2f} ms", "-", "-", "-", "info"),
        (
            f"journal: {args.items} + 32 segments",
            f"{statistics.median(reads):.3f} s",
            "-",
            "-",
            "-",
            "info",
        ),
        (
            f"map resume: {args.map_items} items",
            f"{resume['run']:.3f} s",
            "-",
            "-",
            "< 1 s",
            "PASS" if resume["run"] < 1 else "FAIL",
        ),
        ("  of which decide", f"{resume['decide']:.3f} s", "-", "-", "-", "info"),
        ("  as a new process", f"{resume['process']:.3f} s", "-", "-", "-", "info"),
        (
            "map item on S3 (per item)",
            f"{item * 1000:.2f} ms",
            f"{plain_item * 1000:.2f} ms",
            f"{item / plain_item:.2f}x",
            "-",
            "info",
        ),
    ]
    python = sys.version.split()[0]
    print(f"moto on {endpoint}, {args.steps} steps x {args.repeats} repeats, python {python}")
    print(f"{'metric':<34} {'stalwart':>10} {'boto3 PUTs':>11} {'ratio':>6}  {'target':<8} result")
    for row in rows:
        print(f"{row[0]:<34} {row[1]:>10} {row[2]:>11} {row[3]:>6}  {row[4]:<8} {row[5]}")
    print(
        f"spread: stalwart {min(ours) * 1000:.1f}..{max(ours) * 1000:.1f} ms/step, "
        f"boto3 {min(theirs) * 1000:.1f}..{max(theirs) * 1000:.1f} ms/step"
    )
    print(
        f"map resume: journal {resume['snapshot_mib']:.1f} MiB snapshot + "
        f"{resume['segments']} segments; runs {resume['runs']}"
    )
    return 0


MAP_WORKLOAD = """
import sys
import stalwart
pipeline = stalwart.Pipeline("bench-map", root=sys.argv[1])
N = int(sys.argv[2])

@pipeline.map(items=lambda ctx: range(N), workers=8)
def item(ctx, n):
    pass

if __name__ == "__main__":
    pipeline.main(sys.argv[3:])
"""


def _trivial(ctx: stalwart.ItemContext, n: int) -> None:
    """An item that does nothing: the resume row measures the journal, not the items."""


def _sixteen_bytes(ctx: stalwart.ItemContext, n: int) -> None:
    ctx.write_text(f"out/{n}.txt", "x" * 16)


def pile_up(store: StateStore, run: str) -> tuple[int, int]:
    """The worst case for a resume: the item journal of ``run`` holding a snapshot and the
    most segments after it (``COMPACT_AFTER - 1``), so that the resume's own commit folds
    them into a new snapshot too. Returns (segments, snapshot size)."""
    key = item_journal_key(f"bench-map/runs/{run}", "item")
    journal = RemoteItemJournal(store, key, max_batch=64, max_delay=3600)
    journal.replay()
    while True:
        names = [k.rpartition("/")[2] for k in store.list_keys(key + "/")]
        segments = sum(1 for name in names if name.startswith("seg-"))
        if segments >= COMPACT_AFTER - 1:
            break
        for i in range(64):
            journal.append(str(i), "done", '{"a":1,"t":1e-05}', durable=True)
    snapshots = [name for name in names if name.startswith("snap-")]
    info = store.head(f"{key}/{snapshots[-1]}") if snapshots else None
    store.delete([f"bench-map/runs/{run}/.checkpoints/item.done"])  # killed before it
    return segments, info.size if info else 0


def bench_map_resume(root: str, n: int, repeats: int) -> dict[str, Any]:
    """Row 4: a finished n-item map step resumed without its marker (see the docstring)."""
    pipeline = stalwart.Pipeline("bench-map", root=root, alerters=[], metrics=[])
    pipeline.map(items=lambda ctx: range(n), workers=8, name="item")(_trivial)
    pipeline.run(run_id="r")  # every item done, its journal folded as it grew
    store = open_store(root)
    key = item_journal_key("bench-map/runs/r", "item")

    def decide() -> None:
        with _no_gc():
            replay = RemoteItemJournal(store, key).replay()
            latest = {entry.id: entry.state for entry in replay.entries}
            left = [k for k in map(str, range(n)) if latest.get(k) not in ("done", "skipped")]
        assert not left

    runs, decisions, processes = [], [], []
    for _ in range(repeats):
        segments, snapshot = pile_up(store, "r")
        decisions.append(timed(decide))
        runs.append(timed(functools.partial(pipeline.run, run_id="r")))
        assert store.head("bench-map/runs/r/.checkpoints/item.done") is not None
    with tempfile.TemporaryDirectory() as scratch:  # the same resume, as a new process
        script = os.path.join(scratch, "map_workload.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(MAP_WORKLOAD)
        command = [sys.executable, script, root, str(n), "--run-id", "p", "--log-format", "json"]
        quiet = functools.partial(subprocess.run, command, check=True, stderr=subprocess.DEVNULL)
        quiet()  # its own run "p", finished once
        for _ in range(repeats):
            pile_up(store, "p")
            processes.append(timed(quiet))
    return {
        "run": statistics.median(runs),
        "decide": statistics.median(decisions),
        "process": statistics.median(processes),
        "snapshot_mib": snapshot / 2**20,
        "segments": segments,
        "runs": ", ".join(f"{t:.3f}" for t in runs),
    }


def bench_map_items(client: Any, root: str, n: int, repeats: int) -> tuple[float, float]:
    """Row 5: per item, a map step writing one output per item vs plain boto3 PUTs."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    pipeline = stalwart.Pipeline("bench-items", root=root, alerters=[], metrics=[])
    pipeline.map(items=lambda ctx: range(n), workers=8, name="item")(_sixteen_bytes)
    pipeline.run(run_id="warm-up")

    def plain(run: str) -> None:
        prefix = f"plain-items/runs/{run}"

        def put(i: int) -> None:
            client.put_object(Bucket="bench", Key=f"{prefix}/out/{i}.txt", Body=b"x" * 16)

        with ThreadPoolExecutor(8) as pool:
            for start in range(0, n, 64):
                list(pool.map(put, range(start, min(n, start + 64))))
                lines = "".join(f"{i} done {{}}\n" for i in range(start, min(n, start + 64)))
                client.put_object(
                    Bucket="bench", Key=f"{prefix}/journal/seg-{start}", Body=lines.encode()
                )

    ours: list[float] = []
    theirs: list[float] = []
    for repeat in range(repeats):
        run = f"i{repeat}"
        sides: list[tuple[list[float], Callable[[], object]]] = [
            (ours, functools.partial(pipeline.run, run_id=run)),
            (theirs, functools.partial(plain, run)),
        ]
        for samples, fn in sides if repeat % 2 == 0 else reversed(sides):
            samples.append(timed(fn) / n)
    return statistics.median(ours), statistics.median(theirs)


if __name__ == "__main__":
    sys.exit(main())
