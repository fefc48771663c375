"""``make bench``: stalwart against the physical floor, both measured in the same run.

Usage: ``.venv/bin/python benchmarks/run.py [--quick] [--repeats N] [--steps N] ...``

Every metric is a ratio of stalwart to a baseline timed in this same process (or, for the
whole-process metrics, spawned by it), interleaved repeat by repeat with the order flipped
each time, so that drift on a noisy machine hits both sides alike. The table shows medians
over the repeats; the spread of each side is printed under it, and everything (every
sample, the machine, the package versions) goes to ``benchmarks/results/bench.json``.

1. per step: a pipeline of N trivial steps, each ``ctx.write_text`` of a small output,
   ``pipeline.run(run_id=...)`` on a fresh root (library mode: no log handler), vs plain
   Python writing the same output and a marker durably (temp, write, fsync,
   ``os.replace``, fsync of the directory; twice: the naive 4-fsync floor). The same as
   users run it: ``workloads.py timed-chain`` through ``pipeline.main()`` (the CLI, JSON
   lines to a file), vs ``plain_floor.py timed-chain``, each timing its own chain.
2. skip path: the same finished run again (every step already done), vs ``stat`` of each
   marker and output.
3. declaring steps (1k/10k/100k, and 20k against 2k: linear), vs the same functions put in
   a dict; memory per step (``tracemalloc``), declared and kept once a run is over.
4. start-up: ``import stalwart`` (and touching ``stalwart.Pipeline``, and a first
   ``@retry()`` call) in a new process, vs ``python -c pass``/``import json``/``import
   stalwart``; ``-X importtime`` lists the modules with the largest self time.
5. large output: ``stalwart.atomic_write(path, "wb")`` streaming 64 MiB in 1 MiB chunks, vs
   ``open``/``write``/``fsync`` of the same bytes.
6. retry wrapper: a call that succeeds at once under ``@stalwart.retry()`` (and through
   ``call_with_retries``; and inside a running step), vs the bare call.
7. whole process: a 3-step pipeline file (``chain.py``) run with ``pipeline.main()`` in a new
   process, vs a plain script doing the same durable writes, and vs ``contract_floor.py``, a lean
   implementation of the documented contract in plain Python (byte-compiled, as installed); the
   re-run of a finished N-step run as a new process, vs both re-running theirs.
8. system calls per step (``strace -f -c``, skipped when strace is missing): stalwart's CLI,
   the naive floor and the lean contract floor, (calls at N+20 steps - calls at 20) / N,
   and the syncs (``fsync`` + ``fdatasync``) among them.

The benchmark configures no logging: in-process runs log through stalwart's loggers with no
handler, as a library does. The whole-process runs go through ``pipeline.main()``, whose CLI
logs JSON lines to stderr (into a file here), as a pipeline under cron would.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # imported rather than run as a script
    sys.path.insert(0, str(BENCH_DIR))

import plain_floor  # noqa: E402 - after the path set-up above
import workloads  # noqa: E402

REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "bench.json"
PACKAGES = ("stalwart", "httpx", "tenacity")
FORMAT = 1
MiB = 1 << 20


# -- what a metric is ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What "good enough" means for a metric.

    ``kind``: ``"ratio"`` (stalwart / baseline), ``"value"`` (stalwart's own median),
    ``"delta"`` (stalwart - baseline) or ``"info"`` (no target). ``strict``: ``<`` not ``<=``.
    """

    kind: str
    limit: float = 0.0
    strict: bool = False
    text: str = "-"

    def met(self, ours: float, base: float) -> bool | None:
        value = {"ratio": _ratio(ours, base), "value": ours, "delta": ours - base}.get(self.kind)
        if value is None:
            return None
        return value < self.limit if self.strict else value <= self.limit


@dataclass(slots=True)
class Metric:
    key: str
    label: str
    unit: str
    baseline: str
    """What the baseline is, in words (printed in the legend, kept in the JSON)."""
    target: Target
    ours: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    subject: str = "stalwart"
    """What the "stalwart" column measures, when it is not stalwart (the contract floor)."""

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def base_median(self) -> float:
        return statistics.median(self.base)

    @property
    def ratio(self) -> float:
        return _ratio(self.ours_median, self.base_median)

    @property
    def paired_ratio(self) -> float:
        """Median of stalwart/baseline over the pairs measured back to back."""
        return statistics.median(_ratio(o, b) for o, b in zip(self.ours, self.base, strict=False))

    @property
    def passed(self) -> bool | None:
        return self.target.met(self.ours_median, self.base_median)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "baseline": self.baseline,
            "subject": self.subject,
            "stalwart_median": self.ours_median,
            "baseline_median": self.base_median,
            "ratio": self.ratio,
            "paired_ratio": self.paired_ratio,
            "target": self.target.text,
            "passed": self.passed,
            "stalwart_samples": self.ours,
            "baseline_samples": self.base,
        }


def _ratio(ours: float, base: float) -> float:
    return ours / base if base > 0 else float("inf")


@dataclass(frozen=True, slots=True)
class Config:
    repeats: int
    steps: int
    large_mib: int
    processes: int
    iterations: int
    tmpdir: Path
    json_path: Path | None
    strict: bool
    declare_sizes: tuple[int, int, int] = (1_000, 10_000, 100_000)
    floor_syncs: int | None = None
    """The lean floor's step commit (3 or 4 syncs); None: as many as stalwart's."""
    only: frozenset[str] = frozenset()
    """The groups of rows to measure (``--only``); empty: all of them."""

    def wants(self, group: str) -> bool:
        return not self.only or group in self.only


GROUPS = ("steps", "cli", "declare", "memory", "startup", "large", "retry", "process", "syscalls")


# -- helpers ---------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternating(repeat: int, *sides: Callable[[], None]) -> None:
    """Run every side of a repeat once: the order reversed on odd repeats, and rotated by
    one every two repeats (with more than two sides, each takes every position in turn)."""
    shift = (repeat // 2) % len(sides)
    order = sides[shift:] + sides[:shift]
    for side in order if repeat % 2 == 0 else reversed(order):
        side()


def rounds(cfg: Config, what: str, *sides: Callable[[int], None]) -> None:
    """``cfg.repeats`` rounds of ``sides``, each called with the round's number, in the order
    ``alternating`` gives them, saying which round runs."""
    for repeat in range(cfg.repeats):
        progress(f"{what}: repeat {repeat + 1}/{cfg.repeats}")
        alternating(repeat, *(functools.partial(side, repeat) for side in sides))


def child_env(pycache: Path) -> dict[str, str]:
    """Our environment without what would change stalwart's behaviour, with bytecode caches.

    Children write and reuse ``.pyc`` files (as after ``pip install``) under ``pycache``, even
    when ``PYTHONDONTWRITEBYTECODE`` is set here: without caches every start-up would
    recompile stalwart's modules, which no installed package does.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STALWART_", "SLACK_"))
        and k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME")
    }
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


@dataclass(frozen=True, slots=True)
class Children:
    """How child processes are started: same interpreter, clean environment, in ``cwd``."""

    env: dict[str, str]
    cwd: Path

    def run(self, argv: Sequence[str], log: Path | None = None) -> float:
        """Run ``argv`` to completion; return its wall time in ms (fork and exec included)."""
        with contextlib.ExitStack() as stack:
            err = stack.enter_context(open(log, "wb")) if log is not None else subprocess.DEVNULL
            start = time.perf_counter()
            proc = subprocess.run(  # noqa: PLW1510 - the exit code is checked below
                list(argv), cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=err
            )
            elapsed = (time.perf_counter() - start) * 1000
        if proc.returncode != 0:
            shown = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}\n{shown}")
        return elapsed

    def output(self, argv: Sequence[str], log: Path | None = None) -> str:
        """Run ``argv`` to completion; return its stdout (the timed workloads print there)."""
        with contextlib.ExitStack() as stack:
            err = stack.enter_context(open(log, "wb")) if log is not None else subprocess.DEVNULL
            proc = subprocess.run(  # noqa: PLW1510 - the exit code is checked below
                list(argv),
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        if proc.returncode != 0:
            shown = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}\n{shown}")
        return proc.stdout


_NO_SYNC = "import os, sys; os.fsync = os.fdatasync = lambda fd: None; "
"""A prefix for ``python -c``: both syncs become no-ops for the rest of the process."""

LEAN_FLOOR = (
    "import sys; sys.path.insert(0, {bench!r}); import contract_floor as c; "
    "sys.exit(c.main(sys.argv[1:]))"
)


def lean_floor_argv(steps: int, state: Path, syncs: int = 4, mode: str = "chain") -> list[str]:
    """The lean contract floor as a new process, byte-compiled (imported, not run as
    ``__main__``, which Python compiles from source every time): as an installed package runs.
    ``syncs``: its step commit, 4 (marker synced like an output) or 3 (journal fdatasync)."""
    code = LEAN_FLOOR.format(bench=str(BENCH_DIR))
    return [sys.executable, "-c", code, mode, str(steps), str(state), "--syncs", str(syncs)]


def stalwart_syncs_per_step(tmp: Path) -> float:
    """How many ``fsync`` + ``fdatasync`` calls stalwart's step commit makes, counted in
    process: (calls for 23 steps - calls for 3) / 20. The lean floor's commit is chosen to
    match it: 2 with the journal's shared ``fdatasync`` (the 23 steps of a library run take
    well under its second: one sync for the first step, one at the end), 3 with one per
    step, 4 with the marker synced like an output."""
    calls = [0]
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def count(real: Callable[[int], None]) -> Callable[[int], None]:
        def counted(fd: int) -> None:
            calls[0] += 1
            real(fd)

        return counted

    seen = []
    with (
        mock.patch("os.fsync", count(real_fsync)),
        mock.patch("os.fdatasync", count(real_fdatasync)),
    ):
        for steps in (3, 23):
            calls[0] = 0
            workloads.build_chain(steps, tmp / f"syncs-{steps}").run(run_id=workloads.RUN_ID)
            seen.append(calls[0])
    return (seen[1] - seen[0]) / 20


def snapshot(directory: Path) -> dict[str, int]:
    """mtime of every file under ``directory`` but the lock and the run summary (the
    process's own bookkeeping), to prove a re-run did nothing else."""
    return {
        str(path.relative_to(directory)): path.stat().st_mtime_ns
        for path in directory.rglob("*")
        if path.is_file() and path.name not in (".lock", ".summary.json")
    }


# -- 1 and 2: per step and skip path, in process ------------------------------------------------


def bench_steps(cfg: Config, tmp: Path) -> list[Metric]:
    n = cfg.steps
    cold = Metric(
        "per_step",
        f"per step ({n} steps)",
        "ms/step",
        "plain Python: output + marker, each temp/write/fsync/replace/fsync(dir)",
        Target("ratio", 1.5, text="<= 1.5x"),
    )
    skip = Metric(
        "skip_path",
        f"skip path ({n} done)",
        "ms/step",
        "stat(marker) + stat(output) per step",
        Target("value", 0.5, strict=True, text="< 0.5 ms/step"),
    )
    no_sync = Metric(
        "per_step_no_fsync",
        "per step, fsync stubbed",
        "ms/step",
        "the floor, fsync stubbed too (what is left: CPU and metadata syscalls)",
        Target("info"),
    )
    workloads.build_chain(3, tmp / "warm-up").run(run_id=workloads.RUN_ID)  # lazy imports
    plain_floor.run_chain(3, str(tmp / "warm-up-floor"))

    def ours(name: str, into: Metric, skipped: Metric | None) -> None:
        pipeline = workloads.build_chain(n, tmp / name)
        seconds = timed(lambda: pipeline.run(run_id=workloads.RUN_ID))
        into.ours.append(seconds * 1000 / n)
        if skipped is not None:
            again: list[Any] = []
            seconds = timed(lambda: again.append(pipeline.run(run_id=workloads.RUN_ID)))
            if len(again[0].skipped) != n:
                raise RuntimeError(f"the re-run skipped {len(again[0].skipped)} of {n} steps")
            skipped.ours.append(seconds * 1000 / n)

    def floor(name: str, into: Metric, skipped: Metric | None) -> None:
        state = str(tmp / name)
        into.base.append(timed(lambda: plain_floor.run_chain(n, state)) * 1000 / n)
        if skipped is not None:
            seconds = timed(lambda: plain_floor.check_chain(n, state))
            if plain_floor.check_chain(n, state) != n:
                raise RuntimeError("the floor chain did not finish")
            skipped.base.append(seconds * 1000 / n)

    rounds(
        cfg,
        "per step and skip path",
        lambda r: ours(f"steps-ours-{r}", cold, skip),
        lambda r: floor(f"steps-floor-{r}", cold, skip),
    )
    with mock.patch("os.fsync", _no_fsync), mock.patch("os.fdatasync", _no_fsync):
        rounds(
            cfg,
            "per step, fsync stubbed",
            lambda r: ours(f"nosync-ours-{r}", no_sync, None),
            lambda r: floor(f"nosync-floor-{r}", no_sync, None),
        )
    return [cold, skip, no_sync]


def _no_fsync(fd: int) -> None:
    """``os.fsync`` for the diagnostic row: the data stays in the page cache."""


# -- 1c: what the disk alone allows: the step commit's I/O, no stalwart ----------------------


def _commit_io(root: str, n: int, *, extra_io: bool) -> None:
    """``n`` steps of stalwart's step commit in bare ``os`` calls, no CPU to speak of: the
    output durable (``plain_floor.durable_write``), the marker renamed into place unsynced,
    the journal's done line appended, and ``fdatasync``ed as stalwart shares it when steps
    come faster than one a second: after the first step, every 32nd and the last.
    ``extra_io``: also what stalwart writes unsynced around it, the journal's start line and
    two JSON log lines to a file."""
    checkpoints = os.path.join(root, ".checkpoints")
    os.makedirs(checkpoints)
    journal = os.open(os.path.join(root, ".journal.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    log = os.open(os.path.join(root, "log.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    marker = b'{"format":1,"pipeline":"bench","step":"step_000","outputs":[]}' * 4
    try:
        for index in range(n):
            step = plain_floor.step_name(index).encode()
            if extra_io:
                os.write(journal, b'{"step":"%s","runs":1,"outcome":"running"}\n' % step)
                os.write(log, b'{"level":"INFO","message":"step %s started"}\n' % step)
            path = os.path.join(root, plain_floor.output_name(index))
            plain_floor.durable_write(path, plain_floor.output_bytes(index))
            tmp = os.path.join(checkpoints, f".{index}.done.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, marker)
            os.close(fd)
            os.replace(tmp, os.path.join(checkpoints, f"{index}.done"))
            os.write(journal, b'{"step":"%s","runs":1,"outcome":"done"}\n' % step)
            if index % 32 == 0 or index == n - 1:
                os.fdatasync(journal)
            if extra_io:
                os.write(log, b'{"level":"INFO","message":"step %s done"}\n' % step)
    finally:
        os.close(journal)
        os.close(log)


def bench_commit_io(cfg: Config, tmp: Path) -> list[Metric]:
    """The per-step rows' floor in I/O: what stalwart's commit (two syncs and a shared one)
    saves on this disk when no CPU is spent at all, against the naive four syncs
    (``plain_floor.run_chain``)."""
    n = cfg.steps
    base = "plain_floor.run_chain: output + marker, each temp/write/fsync/replace/fsync(dir)"
    bare = Metric(
        "commit_io_vs_4",
        "per step, commit I/O alone vs 4 syncs",
        "ms/step",
        base,
        Target("info"),
        subject="stalwart's step commit in bare os calls",
    )
    extra = Metric(
        "commit_io_vs_4_with_logs",
        "  + journal start line, 2 log lines",
        "ms/step",
        base,
        Target("info"),
        base=bare.base,
        subject="the same, with the unsynced writes stalwart makes around it",
    )

    def commit(name: str, into: Metric, extra_io: bool) -> None:
        root = str(tmp / name)
        into.ours.append(timed(lambda: _commit_io(root, n, extra_io=extra_io)) * 1000 / n)

    def floor(name: str) -> None:
        state = str(tmp / name)
        bare.base.append(timed(lambda: plain_floor.run_chain(n, state)) * 1000 / n)

    rounds(
        cfg,
        "per step, the commit's I/O alone",
        lambda r: commit(f"io-3-{r}", bare, False),
        lambda r: floor(f"io-4-{r}"),
        lambda r: commit(f"io-3x-{r}", extra, True),
    )
    return [bare, extra]


# -- 1b: per step as users run it: the CLI, JSON logs to a file ---------------------------------


def bench_cli_steps(cfg: Config, children: Children, syncs: int) -> list[Metric]:
    """The per-step row as users run it, and the lean contract floor doing the same work
    (``contract_floor.py timed-chain``: its CLI, JSON logs to a file, journal, markers, the
    same step commit), in the same repeats: what any implementation of the contract pays."""
    n = cfg.steps
    metric = Metric(
        "per_step_cli",
        f"per step, CLI + JSON logs ({n} steps)",
        "ms/step",
        "plain_floor.py timed-chain: output + marker, each temp/write/fsync/replace/fsync(dir)",
        Target("ratio", 1.0, text="<= 1.0x"),
    )
    lean = Metric(
        "per_step_cli_lean_floor",
        "  the lean floor, CLI + JSON logs",
        "ms/step",
        metric.baseline,
        Target("info"),
        base=metric.base,
        subject=f"contract_floor.py timed-chain --syncs {syncs}, byte-compiled",
    )
    ours_vs_lean = Metric(
        "per_step_cli_vs_lean_floor",
        "  stalwart vs the lean floor, CLI",
        "ms/step",
        f"contract_floor.py timed-chain --syncs {syncs}",
        Target("info"),
        ours=metric.ours,
        base=lean.ours,
    )
    unsynced = Metric(
        "per_step_cli_vs_lean_floor_no_fsync",
        "  the same, fsync stubbed",
        "ms/step",
        f"contract_floor.py timed-chain --syncs {syncs}, fsync and fdatasync stubbed",
        Target("info"),
        subject="stalwart's CLI row, fsync and fdatasync stubbed (CPU and metadata work)",
    )
    tmp = children.cwd
    log = tmp / "cli-steps.log"

    def ours(name: str) -> None:
        script = str(BENCH_DIR / "workloads.py")
        out = children.output([sys.executable, script, "timed-chain", str(n), str(tmp / name)], log)
        metric.ours.append(float(out.split()[-1]) * 1000 / n)

    def floor(name: str) -> None:
        script = str(BENCH_DIR / "plain_floor.py")
        out = children.output([sys.executable, script, "timed-chain", str(n), str(tmp / name)])
        metric.base.append(float(out.split()[-1]) * 1000 / n)

    def contract(name: str) -> None:
        argv = lean_floor_argv(n, tmp / name, syncs, mode="timed-chain")
        out = children.output(argv, tmp / "cli-lean-floor.log")  # JSON lines to a file too
        lean.ours.append(float(out.split()[-1]) * 1000 / n)

    def no_sync(argv: list[str], into: list[float], name: str) -> None:
        """``argv`` (``python -c CODE ...`` or ``python SCRIPT ...``) with both syncs made
        no-ops before it starts: what a step costs without the disk's sync latency."""
        if argv[1] == "-c":
            argv = [argv[0], "-c", _NO_SYNC + argv[2], *argv[3:]]
        else:
            code = _NO_SYNC + "import runpy; sys.argv = sys.argv[1:]; "
            code += "sys.path.insert(0, os.path.dirname(sys.argv[0])); "
            code += "runpy.run_path(sys.argv[0], run_name='__main__')"
            argv = [argv[0], "-c", code, *argv[1:]]
        out = children.output(argv, tmp / f"{name}.log")
        into.append(float(out.split()[-1]) * 1000 / n)

    ours("cli-ours-warm-up")
    floor("cli-floor-warm-up")
    contract("cli-lean-warm-up")
    metric.ours.clear()
    metric.base.clear()
    lean.ours.clear()
    rounds(
        cfg,
        "per step, CLI",
        lambda r: ours(f"cli-ours-{r}"),
        lambda r: floor(f"cli-floor-{r}"),
        lambda r: contract(f"cli-lean-{r}"),
    )
    if not any('"logger": "stalwart.run"' in line for line in log.read_text().splitlines()):
        raise RuntimeError(f"the CLI runs logged no JSON line to {log}")
    workload = [sys.executable, str(BENCH_DIR / "workloads.py"), "timed-chain", str(n)]

    def ours_no_sync(name: str) -> None:
        no_sync([*workload, str(tmp / name)], unsynced.ours, "cli-no-sync")

    def contract_no_sync(name: str) -> None:
        argv = lean_floor_argv(n, tmp / name, syncs, mode="timed-chain")
        no_sync(argv, unsynced.base, "cli-no-sync-lean")

    rounds(
        cfg,
        "per step, CLI, fsync stubbed",
        lambda r: ours_no_sync(f"cli-ns-{r}"),
        lambda r: contract_no_sync(f"cli-ns-lean-{r}"),
    )
    return [metric, lean, ours_vs_lean, unsynced]


# -- 1c: declaring steps, memory per step ----------------------------------------------------


def plain_declare(steps: int) -> dict[str, Callable[..., None]]:
    """The leanest declaration: the same step functions in a dict, duplicates refused."""
    declared: dict[str, Callable[..., None]] = {}
    for index in range(steps):
        fn = workloads.make_step(index)
        if fn.__name__ in declared:
            raise ValueError(f"duplicate step {fn.__name__}")
        declared[fn.__name__] = fn
    return declared


def _declare_ms(declare: Callable[[], object], size: int, *, collector: bool = True) -> float:
    """One sample: the median of 3 to 10 declarations (~20,000 steps in all; one of 100,000:
    a 2k declaration takes a few ms, and one scheduler hiccup would be its whole sample),
    each after a garbage collection, so that no sample pays for the previous one's garbage.

    ``collector=False`` pauses the garbage collector while declaring: its full passes walk
    every object of the process, so they make any growing structure (a plain dict of the
    same functions too) super-linear at these sizes; paused, what is left is the
    declaration's own work."""
    times = []
    for _ in range(max(1 if size > 20_000 else 3, min(10, 20_000 // size))):
        gc.collect()
        if not collector:
            gc.disable()
        try:
            times.append(timed(declare) * 1000)
        finally:
            gc.enable()
    return statistics.median(times)


def _declare_into(
    samples: list[float], declare: Callable[[], object], size: int, collector: bool
) -> None:
    samples.append(_declare_ms(declare, size, collector=collector))


def bench_declare(cfg: Config, tmp: Path) -> list[Metric]:
    small, large = cfg.declare_sizes[0] * 2, cfg.declare_sizes[1] * 2  # 2k and 20k by default
    rows = {
        size: Metric(
            f"declare_{size}",
            f"declare {size:,} steps",
            "ms",
            "the same step functions into a dict (duplicates refused)",
            Target("info"),
        )
        for size in (*cfg.declare_sizes, small, large)
    }
    paused = {  # the linearity rows: the same declarations, the collector paused
        size: Metric(f"declare_{size}_paused", "", "ms", "", Target("info"))
        for size in (small, large)
    }
    root = tmp / "declare"
    for size in rows:  # warm-up: the heap grows to its size once, outside the samples
        workloads.build_chain(size, root)
        plain_declare(size)
    for repeat in range(cfg.repeats):
        progress(f"declaring steps: repeat {repeat + 1}/{cfg.repeats}")
        sides = [(size, m, True) for size, m in rows.items()]
        sides += [(size, m, False) for size, m in paused.items()]
        for size, metric, collector in sides:
            if size >= 100_000 and repeat >= 3:
                continue  # 3 samples are enough for the largest
            ours = functools.partial(
                _declare_into,
                metric.ours,
                functools.partial(workloads.build_chain, size, root),
                size,
                collector,
            )
            base = functools.partial(
                _declare_into, metric.base, functools.partial(plain_declare, size), size, collector
            )
            alternating(repeat, ours, base)
    linear = Metric(
        "declare_linear",
        f"declare {large:,} vs {small:,} steps",
        "ms",
        f"stalwart declaring {small:,} steps (garbage collector paused)",
        Target("ratio", 15.0, text="<= 15x"),
        paused[large].ours,
        paused[small].ours,
        subject=f"stalwart declaring {large:,} steps, garbage collector paused",
    )
    with_collector = Metric(
        "declare_linear_collector",
        f"declare {large:,} vs {small:,}, collector on",
        "ms",
        f"stalwart declaring {small:,} steps, the garbage collector running",
        Target("info"),
        rows[large].ours,
        rows[small].ours,
        subject=f"stalwart declaring {large:,} steps, the garbage collector running",
    )
    plain_linear = Metric(
        "declare_linear_plain",
        f"declare {large:,} vs {small:,}, plain dict",
        "ms",
        f"the same functions into a dict, {small:,} of them, the collector running",
        Target("info"),
        rows[large].base,
        rows[small].base,
        subject=f"the same functions into a dict, {large:,} of them, the collector running",
    )
    return [
        *(rows[size] for size in cfg.declare_sizes),
        linear,
        with_collector,
        plain_linear,
    ]


def bench_memory(cfg: Config, tmp: Path) -> list[Metric]:
    """Bytes per step (``tracemalloc``): declared, and kept once a run of them is over."""
    n = cfg.steps * 10
    declared = Metric(
        "memory_declared",
        f"memory per step declared ({n:,} steps)",
        "B/step",
        "the same step functions in a dict",
        Target("info"),
    )
    kept = Metric(
        "memory_kept_after_run",
        f"memory kept per step after a run ({n:,} steps)",
        "B/step",
        "the same step functions in a dict (for scale)",
        Target("value", 64.0, strict=True, text="< 64 B/step"),
    )

    def measure(steps: int, name: str) -> tuple[float, float, float]:
        """(plain declared, declared, kept after the run), bytes per step."""
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            functions = plain_declare(steps)
            plain = tracemalloc.get_traced_memory()[0] - start
            del functions
            gc.collect()
            start = tracemalloc.get_traced_memory()[0]
            pipeline = workloads.build_chain(steps, tmp / name)
            after_declare = tracemalloc.get_traced_memory()[0]
            with mock.patch("os.fsync", _no_fsync), mock.patch("os.fdatasync", _no_fsync):
                pipeline.run(run_id=workloads.RUN_ID)
            gc.collect()
            after_run = tracemalloc.get_traced_memory()[0]
            del pipeline
            gc.collect()
        finally:
            tracemalloc.stop()
        return plain / steps, (after_declare - start) / steps, (after_run - after_declare) / steps

    measure(min(n, 100), "memory-warm-up")  # first-time allocations: caches, interned names
    for repeat in range(max(1, min(cfg.repeats, 3))):
        progress(f"memory per step: repeat {repeat + 1}")
        plain, ours, after = measure(n, f"memory-{repeat}")
        declared.base.append(plain)
        declared.ours.append(ours)
        kept.ours.append(max(0.0, after))
        kept.base.append(plain)
    return [declared, kept]


# -- 1d: syscalls per step (strace -c) -------------------------------------------------------


_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def strace_counts(children: Children, argv: list[str], out: Path) -> dict[str, int]:
    """Calls per system call of ``argv`` and its children, from ``strace -f -c``."""
    strace = shutil.which("strace")
    if strace is None:
        raise FileNotFoundError("strace")
    children.run([strace, "-f", "-c", "-o", str(out), "--", *argv])
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        match = _STRACE_ROW.match(line)
        if match and match[2] != "total":
            counts[match[2]] = int(match[1])
    return counts


def bench_syscalls(cfg: Config, children: Children, syncs: int) -> tuple[list[Metric], str]:
    """System calls and syncs per step: (calls at N + 20 steps - calls at 20 steps) / N, for
    stalwart's CLI (``chain.py``), the naive floor and the lean floor (``--syncs``)."""
    if shutil.which("strace") is None:
        return [], "strace is not installed: the syscall rows were skipped"
    tmp, n, base_n = children.cwd, cfg.steps, 20
    sides: dict[str, Callable[[int, Path], list[str]]] = {
        "stalwart": lambda steps, d: [
            sys.executable,
            str(BENCH_DIR / "chain.py"),
            str(steps),
            str(d),
        ],
        "floor": lambda steps, d: [
            sys.executable,
            str(BENCH_DIR / "plain_floor.py"),
            "chain",
            str(steps),
            str(d),
        ],
        "lean": lambda steps, d: lean_floor_argv(steps, d, syncs),
    }
    per_step: dict[str, dict[str, float]] = {}
    for side, argv in sides.items():
        progress(f"syscalls per step (strace -c): {side}")
        small = strace_counts(children, argv(base_n, tmp / f"st-{side}-s"), tmp / f"{side}-s.txt")
        large = strace_counts(
            children, argv(base_n + n, tmp / f"st-{side}-l"), tmp / f"{side}-l.txt"
        )
        names = set(small) | set(large)
        per_step[side] = {k: (large.get(k, 0) - small.get(k, 0)) / n for k in names}

    def total(side: str) -> float:
        return sum(per_step[side].values())

    def synced(side: str) -> float:
        return sum(per_step[side].get(k, 0.0) for k in ("fsync", "fdatasync", "sync_file_range"))

    lean = f"lean contract floor: contract_floor.py --syncs {syncs}"
    rows = [
        Metric(
            "syscalls_per_step",
            "syscalls per step (strace -c, CLI)",
            "calls",
            "plain_floor.py",
            Target("info"),
            [total("stalwart")],
            [total("floor")],
        ),
        Metric(
            "syscalls_per_step_vs_lean",
            "syscalls per step vs lean floor",
            "calls",
            f"contract_floor.py --syncs {syncs}",
            Target("info"),
            [total("stalwart")],
            [total("lean")],
        ),
        Metric(
            "syncs_per_step",
            "fsync+fdatasync per step",
            "calls",
            "plain_floor.py (4: output, its directory, marker, its directory)",
            Target("info"),
            [synced("stalwart")],
            [synced("floor")],
        ),
        Metric(
            "syncs_per_step_lean",
            "fsync+fdatasync per step, lean floor",
            "calls",
            "plain_floor.py",
            Target("info"),
            [synced("lean")],
            [synced("floor")],
            subject=lean,
        ),
    ]

    def top(side: str) -> str:
        ranked = sorted(per_step[side].items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        return ", ".join(f"{k} {v:.2f}" for k, v in ranked if v > 0)

    note = (
        f"calls per step, stalwart: {top('stalwart')}\n"
        f"calls per step, lean floor (--syncs {syncs}): {top('lean')}"
    )
    return rows, note


# -- 3: start-up ---------------------------------------------------------------------------


_IMPORTTIME = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\S.*)$")


def importtime_top(children: Children, runs: int, top: int = 15) -> list[Any]:
    """The modules with the largest median self time under ``-X importtime`` in a 3-step
    run as a new process (``chain.py``: imports, the CLI, three steps that write)."""
    samples: dict[str, list[int]] = {}
    for index in range(runs):
        state = children.cwd / f"importtime-{index}"
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", str(BENCH_DIR / "chain.py"), "3", str(state)],
            cwd=children.cwd,
            env=children.env,
            capture_output=True,
            text=True,
            check=True,
        )
        for line in proc.stderr.splitlines():
            match = _IMPORTTIME.match(line)
            if match:
                samples.setdefault(match[3].strip(), []).append(int(match[1]))
    medians = {name: statistics.median(us) for name, us in samples.items()}
    ranked = sorted(medians.items(), key=lambda item: -item[1])[:top]
    return [{"module": name, "self_ms": round(us / 1000, 2)} for name, us in ranked]


def bench_startup(cfg: Config, children: Children) -> tuple[list[Metric], list[Any]]:
    python = sys.executable
    codes = {
        "pass": "pass",
        "json": "import json",
        "import": "import stalwart",
        "pipeline": "import stalwart; stalwart.Pipeline",
        "retry": "import stalwart\n@stalwart.retry()\ndef f(): return 1\nf()",
    }
    times: dict[str, list[float]] = {key: [] for key in codes}
    for code in codes.values():  # warm-up: bytecode caches, page cache
        children.run([python, "-c", code])
    keys = list(codes)
    for index in range(cfg.processes):
        progress(f"start-up: round {index + 1}/{cfg.processes}")
        rotated = keys[index % len(keys) :] + keys[: index % len(keys)]
        for key in rotated:
            times[key].append(children.run([python, "-c", codes[key]]))
    plus = Target("delta", 150.0, text="<= +150 ms")
    metrics = [
        Metric(
            "startup_import",
            "start-up: import stalwart",
            "ms",
            "python -c pass",
            plus,
            times["import"],
            times["pass"],
        ),
        Metric(
            "startup_import_vs_json",
            "start-up: import stalwart vs json",
            "ms",
            'python -c "import json"',
            Target("info"),
            times["import"],
            times["json"],
        ),
        Metric(
            "startup_pipeline",
            "start-up: + stalwart.Pipeline",
            "ms",
            "python -c pass",
            plus,
            times["pipeline"],
            times["pass"],
        ),
        Metric(
            "startup_retry",
            "start-up: + @retry() and a call",
            "ms",
            'python -c "import stalwart"',
            Target("info"),
            times["retry"],
            times["import"],
        ),
    ]
    progress("start-up: -X importtime")
    top = importtime_top(children, min(5, cfg.processes))
    return metrics, top


# -- 4: large output -------------------------------------------------------------------------


def bench_large(cfg: Config, tmp: Path) -> Metric:
    metric = Metric(
        "large_output",
        f"atomic_write {cfg.large_mib} MiB",
        "ms",
        "open + write 1 MiB chunks + fsync",
        Target("ratio", 1.05, text="<= 1.05x"),
    )
    chunk = os.urandom(MiB)
    workloads.large_write(str(tmp / "warm-up.bin"), chunk, 1)
    os.unlink(tmp / "warm-up.bin")

    def one(path: Path, write: Callable[[str, bytes, int], None], into: list[float]) -> None:
        into.append(timed(lambda: write(str(path), chunk, cfg.large_mib)) * 1000)
        if path.stat().st_size != cfg.large_mib * MiB:
            raise RuntimeError(f"{path} has the wrong size")
        path.unlink()

    rounds(
        cfg,
        "large output",
        lambda _r: one(tmp / "large-ours.bin", workloads.large_write, metric.ours),
        lambda _r: one(tmp / "large-plain.bin", plain_floor.plain_write_fsync, metric.base),
    )
    return metric


# -- 5: retry wrapper ----------------------------------------------------------------------


def _succeed() -> int:
    return 1


def bench_retry(cfg: Config, tmp: Path) -> list[Metric]:
    from stalwart._retry import RetryPolicy, call_with_retries  # noqa: PLC0415

    decorated = workloads.retried(_succeed)
    direct = functools.partial(call_with_retries, _succeed, RetryPolicy(), operation="bench")
    under = Target("delta", 5.0, strict=True, text="< +5 us")
    deco = Metric("retry_decorator", "retry: @retry() call", "us/call", "the bare call", under)
    call = Metric(
        "retry_call_with_retries", "retry: call_with_retries", "us/call", "the bare call", under
    )
    bare: list[float] = []
    number = cfg.iterations

    def per_call(fn: Callable[[], object]) -> float:
        return timeit.Timer(fn).timeit(number) / number * 1e6

    warm_up: tuple[Callable[[], object], ...] = (_succeed, decorated, direct)
    for fn in warm_up:
        per_call(fn)
    for repeat in range(cfg.repeats):
        progress(f"retry wrapper: repeat {repeat + 1}/{cfg.repeats}")
        sides: list[tuple[Callable[[], object], list[float]]] = [
            (_succeed, bare),
            (decorated, deco.ours),
            (direct, call.ours),
        ]
        if repeat % 2:
            sides.reverse()
        for side, into in sides:
            into.append(per_call(side))
    deco.base = call.base = bare
    return [deco, call, bench_retry_in_step(cfg, tmp)]


def bench_retry_in_step(cfg: Config, tmp: Path) -> Metric:
    """``@retry()`` called inside a running step (its scope set: retries are counted)."""
    import stalwart  # noqa: PLC0415

    metric = Metric(
        "retry_in_step",
        "retry: @retry() call inside a step",
        "us/call",
        "the bare call, inside the same step",
        Target("delta", 5.0, strict=True, text="< +5 us"),
    )
    decorated = workloads.retried(_succeed)
    number = cfg.iterations

    def per_call(fn: Callable[[], object]) -> float:
        return timeit.Timer(fn).timeit(number) / number * 1e6

    pipeline = stalwart.Pipeline("retry-in-step", root=tmp / "retry-in-step", metrics=[])

    @pipeline.step(name="measure")
    def measure(ctx: stalwart.Context) -> None:
        per_call(decorated)  # warm-up
        repeat = int(ctx.run_id.rpartition("-")[2])
        sides = [(_succeed, metric.base), (decorated, metric.ours)]
        for side, into in sides if repeat % 2 == 0 else reversed(sides):
            into.append(per_call(side))

    for repeat in range(cfg.repeats):
        progress(f"retry inside a step: repeat {repeat + 1}/{cfg.repeats}")
        pipeline.run(run_id=f"r-{repeat}")
    return metric


# -- 6: whole process ----------------------------------------------------------------------


def bench_process(cfg: Config, children: Children, syncs: int) -> list[Metric]:
    """``syncs``: the lean floor's step commit (stalwart's own count); the other commit is
    measured in the same rounds, for the info row comparing the two."""
    tmp = children.cwd
    log = tmp / "child-stderr.log"
    other = 4 if syncs < 4 else 3  # the naive commit, or the per-step journal sync
    contract = f"lean contract floor: contract_floor.py --syncs {syncs}, byte-compiled"
    contract_base = (
        f"contract_floor.py --syncs {syncs}: the contract in plain Python (CLI, JSON logs, "
        "lock, journal, markers)"
    )
    small = Metric(
        "process_3_steps",
        "process: 3-step pipeline",
        "ms",
        "plain script, same durable writes",
        Target("ratio", 2.5, text="<= 2.5x"),
    )
    contract_small: list[float] = []  # contract_floor.py, 3 steps: shared by three rows
    contract_vs_plain = Metric(
        "process_contract_floor",
        "process: 3-step, lean floor vs plain",
        "ms",
        small.baseline,
        Target("info"),
        contract_small,
        small.base,
        subject=contract,
    )
    small_vs_contract = Metric(
        "process_3_steps_vs_contract",
        "process: 3-step vs lean floor",
        "ms",
        contract_base,
        Target("ratio", 1.2, text="<= 1.2x"),
        small.ours,
        contract_small,
    )
    commits = Metric(
        "process_lean_floor_commits",
        f"process: 3-step, lean floor {other} vs {syncs} syncs",
        "ms",
        f"contract_floor.py --syncs {syncs}",
        Target("info"),
        [],
        contract_small,
        subject=f"lean contract floor: contract_floor.py --syncs {other}",
    )
    small_vs_frozen = Metric(
        "process_3_steps_vs_frozen_plain",
        "process: 3-step vs plain, both frozen",
        "ms",
        "plain script, same durable writes, its start-up frozen (plain_floor.py ... --freeze)",
        Target("info"),
        small.ours,
        [],
        subject="stalwart, whose main() freezes its start-up (gc.freeze)",
    )
    rerun = Metric(
        "process_rerun",
        f"process: re-run {cfg.steps} done",
        "ms",
        "plain script re-running its finished chain",
        Target("ratio", 3.5, text="<= 3.5x"),
    )
    rerun_vs_contract = Metric(
        "process_rerun_vs_contract",
        f"process: re-run {cfg.steps} done vs lean floor",
        "ms",
        "contract_floor.py re-running its finished chain (parse markers, stat outputs, log)",
        Target("info"),
        rerun.ours,
    )

    def ours(steps: int, root: Path) -> float:
        script = str(BENCH_DIR / "chain.py")
        return children.run([sys.executable, script, str(steps), str(root)], log)

    def floor(steps: int, state: Path, *extra: str) -> float:
        script = str(BENCH_DIR / "plain_floor.py")
        return children.run([sys.executable, script, "chain", str(steps), str(state), *extra])

    def contract_floor(steps: int, state: Path, commit: int = syncs) -> float:
        return children.run(lean_floor_argv(steps, state, commit), log)

    def cold_round(index: int) -> None:
        alternating(
            index,
            lambda: small.ours.append(ours(3, tmp / f"p3-ours-{index}")),
            lambda: small.base.append(floor(3, tmp / f"p3-floor-{index}")),
            lambda: contract_small.append(contract_floor(3, tmp / f"p3-contract-{index}")),
            lambda: commits.ours.append(contract_floor(3, tmp / f"p3-other-{index}", other)),
            lambda: small_vs_frozen.base.append(floor(3, tmp / f"p3-frozen-{index}", "--freeze")),
        )

    ours_root, floor_state = tmp / "rerun-ours", tmp / "rerun-floor"
    contract_state = tmp / "rerun-contract"

    def rerun_round(index: int) -> None:
        alternating(
            index,
            lambda: rerun.ours.append(ours(cfg.steps, ours_root)),
            lambda: rerun.base.append(floor(cfg.steps, floor_state)),
            lambda: rerun_vs_contract.base.append(contract_floor(cfg.steps, contract_state)),
        )

    ours(3, tmp / "p3-ours-warm-up")
    floor(3, tmp / "p3-floor-warm-up")
    contract_floor(3, tmp / "p3-contract-warm-up")
    contract_floor(3, tmp / "p3-other-warm-up", other)
    floor(3, tmp / "p3-frozen-warm-up", "--freeze")
    for index in range(cfg.processes):
        progress(f"whole process, 3 steps: run {index + 1}/{cfg.processes}")
        cold_round(index)
    ours(cfg.steps, ours_root)
    floor(cfg.steps, floor_state)
    contract_floor(cfg.steps, contract_state)
    before = {root: snapshot(root) for root in (ours_root, contract_state)}
    for index in range(cfg.processes):
        progress(f"whole process, re-run of {cfg.steps} done: run {index + 1}/{cfg.processes}")
        rerun_round(index)
    for root, files in before.items():
        if snapshot(root) != files:
            raise RuntimeError(f"the re-run of the finished {root.name} rewrote files")
    return [
        small,
        contract_vs_plain,
        small_vs_contract,
        small_vs_frozen,
        commits,
        rerun,
        rerun_vs_contract,
    ]


# -- the machine, the report ---------------------------------------------------------------


def filesystem_of(path: Path) -> dict[str, str]:
    """The mount holding ``path`` (longest mount point that is a prefix), from /proc/mounts."""
    target = os.path.realpath(path)
    best: dict[str, str] = {"fstype": "unknown", "mountpoint": "", "device": ""}
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mountpoint, fstype, *_ = line.split()
            mountpoint = mountpoint.replace("\\040", " ")
            inside = target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")
            if inside and len(mountpoint) >= len(best["mountpoint"]):
                best = {"fstype": fstype, "mountpoint": mountpoint, "device": device}
    return best


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_state() -> dict[str, str]:
    """The commit, and whether src/ differs from it (read-only git commands)."""
    git = shutil.which("git")
    if git is None:
        return {}
    try:
        head = subprocess.run(
            [git, "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head, "src": "modified" if dirty else "clean"}


def machine(tmp: Path) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "tmp": str(tmp.parent),
        "filesystem": filesystem_of(tmp),
        "loadavg_start": os.getloadavg(),
        **git_state(),
    }


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _value(value: float, unit: str) -> str:
    digits = 3 if value < 1 else 2 if value < 100 else 1
    return f"{value:.{digits}f} {unit}"


def _spread(samples: list[float]) -> str:
    median = statistics.median(samples)
    width = (max(samples) - min(samples)) / median * 100 if median else 0.0
    return f"{min(samples):.3g}..{max(samples):.3g} (±{width / 2:.0f}%)"


def render(
    metrics: list[Metric], info: dict[str, Any], top: list[Any], cfg: Config, notes: list[str]
) -> str:
    mach, pkgs = info["machine"], info["packages"]
    fs = mach["filesystem"]
    lines = [
        f"machine: {mach['nproc']} CPUs ({mach['cpus_usable']} usable), {mach['cpu']}; "
        f"Python {mach['python']} ({mach['implementation']}); {mach['platform']}",
        f"temp dir: {mach['tmp']} on {fs['fstype']} ({fs['device']} at {fs['mountpoint']}); "
        f"load average at start {', '.join(f'{x:.2f}' for x in mach['loadavg_start'])}",
        "packages: "
        + ", ".join(f"{k} {v}" for k, v in pkgs.items())
        + (f"; git {mach['commit']} (src {mach['src']})" if "commit" in mach else ""),
        f"medians of {cfg.repeats} repeats (process metrics: {cfg.processes} processes); "
        f"{cfg.steps} steps; {cfg.large_mib} MiB; {cfg.iterations} calls per retry sample",
        f"step commit: stalwart makes {info['syncs']['stalwart_per_step']:g} syncs per step; "
        f"the lean floor runs with --syncs {info['syncs']['lean_floor']}; load average at end "
        f"{', '.join(f'{x:.2f}' for x in info['loadavg_end'])}",
        "",
    ]
    header = ("metric", "stalwart", "baseline", "ratio", "target", "result")
    rows = [
        (
            m.label,
            _value(m.ours_median, m.unit),
            _value(m.base_median, m.unit),
            f"{m.ratio:.2f}x",
            m.target.text,
            {True: "PASS", False: "FAIL", None: "info"}[m.passed],
        )
        for m in metrics
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:-2], widths[1:-2], strict=True)
        ]
        cells += [row[-2].ljust(widths[-2]), row[-1]]
        return "  ".join(cells)

    lines += [line(header), "  ".join("-" * w for w in widths), *map(line, rows), ""]
    verdicts = [m.passed for m in metrics if m.passed is not None]
    lines.append(f"targets met: {sum(verdicts)} of {len(verdicts)}")
    lines += [
        "",
        "baselines and spread: min..max of the samples (± half the range, % of the median);",
        "paired = median of the ratios of the back-to-back pairs; best = ratio of the minimums",
    ]
    for m in metrics:
        lines.append(
            f"  {m.label}: baseline = {m.baseline}"
            + ("" if m.subject == "stalwart" else f"; measured = {m.subject}")
            + f"\n      {m.subject.split(':')[0]} {_spread(m.ours)}, baseline {_spread(m.base)}; "
            f"paired {m.paired_ratio:.2f}x, best {_ratio(min(m.ours), min(m.base)):.2f}x"
        )
    if notes:
        lines += ["", *notes]
    if top:
        lines += ["", "largest self times under -X importtime (a 3-step run, chain.py 3):"]
        lines += [f"  {item['self_ms']:7.2f} ms  {item['module']}" for item in top]
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 repeats, fewer calls")
    parser.add_argument("--repeats", type=int, help="repeats per metric (default 7; quick 2)")
    parser.add_argument("--steps", type=int, default=200, help="steps in a chain (200)")
    parser.add_argument("--large-mib", type=int, default=64, help="size of the large output")
    parser.add_argument("--processes", type=int, help="processes per process metric (3x repeats)")
    parser.add_argument("--iterations", type=int, help="calls per retry sample (100000)")
    parser.add_argument("--tmpdir", type=Path, help="where state goes (default: the temp dir)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument("--no-json", action="store_true", help="do not write the JSON file")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--floor-syncs",
        choices=("auto", "2", "3", "4"),
        default="auto",
        help="the lean floor's step commit: 4 syncs, 3 (a journal fdatasync per step), 2 (the "
        "journal's fdatasync shared by fast steps), or auto: as many as stalwart's own "
        "step commit makes (counted in process)",
    )
    parser.add_argument(
        "--declare-sizes",
        default="1000,10000,100000",
        help="three step counts to declare (1000,10000,100000); twice the first two also",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated groups of rows to measure ({','.join(GROUPS)}); default: all",
    )
    args = parser.parse_args(argv)
    only = frozenset(g for g in args.only.split(",") if g)
    if unknown := sorted(only - set(GROUPS)):
        parser.error(f"--only takes groups from {','.join(GROUPS)}, not {','.join(unknown)}")
    try:
        sizes = tuple(int(x) for x in args.declare_sizes.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        parser.error("--declare-sizes takes three positive integers: 1000,10000,100000")
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    for name in ("repeats", "steps", "large_mib", "processes", "iterations"):
        value = repeats if name == "repeats" else getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return Config(
        repeats=repeats,
        steps=args.steps,
        large_mib=args.large_mib,
        processes=args.processes if args.processes is not None else 3 * repeats,
        iterations=args.iterations or (20_000 if args.quick else 100_000),
        tmpdir=args.tmpdir or Path(tempfile.gettempdir()),
        json_path=None if args.no_json else args.json,
        strict=args.strict,
        declare_sizes=(sizes[0], sizes[1], sizes[2]),
        floor_syncs=None if args.floor_syncs == "auto" else int(args.floor_syncs),
        only=only,
    )


@contextlib.contextmanager
def scratch(parent: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stalwart-bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(argv)
    for name in [k for k in os.environ if k.startswith(("STALWART_", "SLACK_"))]:
        del os.environ[name]  # the in-process runs see defaults, like the children
    started = time.time()
    with scratch(cfg.tmpdir) as tmp:
        info: dict[str, Any] = {"machine": machine(tmp), "packages": versions()}
        if info["machine"]["filesystem"]["fstype"] in ("tmpfs", "ramfs", "overlay"):
            progress(
                f"warning: {tmp} is on {info['machine']['filesystem']['fstype']}; the "
                "floor is not a disk's floor there (use --tmpdir on a real disk)"
            )
        counted = stalwart_syncs_per_step(tmp)
        syncs = cfg.floor_syncs or min(4, max(2, round(counted)))
        info["syncs"] = {"stalwart_per_step": counted, "lean_floor": syncs}
        progress(f"stalwart's step commit: {counted:g} syncs per step; lean floor: {syncs}")
        metrics: list[Metric] = []
        top: list[Any] = []
        notes: list[str] = []
        if cfg.wants("steps"):
            metrics += bench_steps(cfg, tmp)
        children = Children(child_env(tmp / "pycache"), tmp)
        if cfg.wants("cli"):
            metrics += bench_cli_steps(cfg, children, syncs)
            metrics += bench_commit_io(cfg, tmp)
        if cfg.wants("declare"):
            metrics += bench_declare(cfg, tmp)
        if cfg.wants("memory"):
            metrics += bench_memory(cfg, tmp)
        if cfg.wants("startup"):
            startup, top = bench_startup(cfg, children)
            metrics += startup
        if cfg.wants("large"):
            metrics.append(bench_large(cfg, tmp))
        if cfg.wants("retry"):
            metrics += bench_retry(cfg, tmp)
        if cfg.wants("process"):
            metrics += bench_process(cfg, children, syncs)
        if cfg.wants("syscalls"):
            syscalls, note = bench_syscalls(cfg, children, syncs)
            metrics += syscalls
            notes.append(note)
        info["loadavg_end"] = os.getloadavg()
    report = render(metrics, info, top, cfg, notes)
    print(report)
    if cfg.json_path is not None:
        cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "format": FORMAT,
            "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
            "duration_s": round(time.time() - started, 1),
            "command": [Path(sys.executable).name, *sys.argv],
            "config": {
                "repeats": cfg.repeats,
                "steps": cfg.steps,
                "large_mib": cfg.large_mib,
                "processes": cfg.processes,
                "iterations": cfg.iterations,
            },
            **info,
            "metrics": [m.as_json() for m in metrics],
            "importtime_top": top,
        }
        cfg.json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {cfg.json_path}")
    missed = [m.label for m in metrics if m.passed is False]
    return 1 if cfg.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
