"""``make bench``: stalwart against the physical floor, both measured in the same run.

Usage: ``.venv/bin/python benchmarks/run.py [--quick] [--repeats N] [--steps N] ...``

Every metric is a ratio of stalwart to a baseline timed in this same process (or, for the
whole-process metrics, spawned by it), interleaved repeat by repeat with the order flipped
each time, so that drift on a noisy machine hits both sides alike. The table shows medians
over the repeats; the spread of each side is printed under it, and everything (every
sample, the machine, the package versions) goes to ``benchmarks/results/bench.json``.

1. per step: a pipeline of N trivial steps, each ``ctx.write_text`` of a small output,
   ``pipeline.run(run_id=...)`` on a fresh root, vs plain Python writing the same output and
   a marker durably (temp, write, fsync, ``os.replace``, fsync of the directory; twice).
2. skip path: the same finished run again (every step already done), vs ``stat`` of each
   marker and output.
3. start-up: ``import stalwart`` (and touching ``stalwart.Pipeline``) in a new process, vs
   ``python -c pass`` and ``python -c "import json"``; ``-X importtime`` lists the modules
   with the largest self time.
4. large output: ``stalwart.atomic_write(path, "wb")`` streaming 64 MiB in 1 MiB chunks, vs
   ``open``/``write``/``fsync`` of the same bytes.
5. retry wrapper: a call that succeeds at once under ``@stalwart.retry()`` (and through
   ``call_with_retries``), vs the bare call.
6. whole process: a 3-step pipeline file run with ``pipeline.main()`` in a new process, vs a
   plain script doing the same durable writes; the re-run of a finished N-step run as a new
   process, vs the plain script re-running its finished chain. Info rows split the gap with
   ``contract_floor.py``, the least plain Python must do to honour the documented contract (argparse
   CLI, JSON logs through ``logging`` and python-json-logger, JSON markers with a sha256 per
   output): the contract floor vs the plain script (what the contract costs by itself), and
   stalwart vs the contract floor (what stalwart adds), cold and on the re-run.

The benchmark configures no logging: in-process runs log through stalwart's loggers with no
handler, as a library does. The whole-process runs go through ``pipeline.main()``, whose CLI
logs JSON lines to stderr (into a file here), as a pipeline under cron would.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
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
PACKAGES = ("stalwart", "httpx", "tenacity", "python-json-logger")
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


# -- helpers ---------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternating(repeat: int, *pair: Callable[[], None]) -> None:
    """Run both sides of a repeat, flipping the order on odd repeats."""
    for side in pair if repeat % 2 == 0 else reversed(pair):
        side()


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

    for repeat in range(cfg.repeats):
        progress(f"per step and skip path: repeat {repeat + 1}/{cfg.repeats}")
        alternating(
            repeat,
            functools.partial(ours, f"steps-ours-{repeat}", cold, skip),
            functools.partial(floor, f"steps-floor-{repeat}", cold, skip),
        )
    with mock.patch("os.fsync", _no_fsync):
        for repeat in range(cfg.repeats):
            progress(f"per step, fsync stubbed: repeat {repeat + 1}/{cfg.repeats}")
            alternating(
                repeat,
                functools.partial(ours, f"nosync-ours-{repeat}", no_sync, None),
                functools.partial(floor, f"nosync-floor-{repeat}", no_sync, None),
            )
    return [cold, skip, no_sync]


def _no_fsync(fd: int) -> None:
    """``os.fsync`` for the diagnostic row: the data stays in the page cache."""


# -- 3: start-up ---------------------------------------------------------------------------


_IMPORTTIME = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\S.*)$")


def importtime_top(children: Children, code: str, runs: int, top: int = 12) -> list[Any]:
    """The modules with the largest median self time under ``-X importtime``."""
    samples: dict[str, list[int]] = {}
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
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
    ]
    progress("start-up: -X importtime")
    top = importtime_top(children, codes["pipeline"], min(5, cfg.processes))
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

    for repeat in range(cfg.repeats):
        progress(f"large output: repeat {repeat + 1}/{cfg.repeats}")
        alternating(
            repeat,
            functools.partial(one, tmp / "large-ours.bin", workloads.large_write, metric.ours),
            functools.partial(
                one, tmp / "large-plain.bin", plain_floor.plain_write_fsync, metric.base
            ),
        )
    return metric


# -- 5: retry wrapper ----------------------------------------------------------------------


def _succeed() -> int:
    return 1


def bench_retry(cfg: Config) -> list[Metric]:
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
    return [deco, call]


# -- 6: whole process ----------------------------------------------------------------------


def bench_process(cfg: Config, children: Children) -> list[Metric]:
    tmp = children.cwd
    log = tmp / "child-stderr.log"
    contract = "contract floor: contract_floor.py, no stalwart"
    contract_base = "contract_floor.py: argparse CLI, JSON logs, JSON markers with sha256"
    small = Metric(
        "process_3_steps",
        "process: 3-step pipeline",
        "ms",
        "plain script, same durable writes",
        Target("ratio", 2.0, text="<= 2x"),
    )
    contract_small: list[float] = []  # contract_floor.py, 3 steps: shared by two rows
    contract_vs_plain = Metric(
        "process_contract_floor",
        "process: 3-step, contract floor vs plain",
        "ms",
        small.baseline,
        Target("info"),
        contract_small,
        small.base,
        subject=contract,
    )
    small_vs_contract = Metric(
        "process_3_steps_vs_contract",
        "process: 3-step vs contract floor",
        "ms",
        contract_base,
        Target("info"),
        small.ours,
        contract_small,
    )
    rerun = Metric(
        "process_rerun",
        f"process: re-run {cfg.steps} done",
        "ms",
        "plain script re-running its finished chain",
        Target("value", 150.0, strict=True, text="< 150 ms"),
    )
    rerun_vs_contract = Metric(
        "process_rerun_vs_contract",
        f"process: re-run {cfg.steps} done vs contract floor",
        "ms",
        "contract_floor.py re-running its finished chain (parse markers, stat outputs, log)",
        Target("info"),
        rerun.ours,
    )

    def ours(steps: int, root: Path) -> float:
        script = str(BENCH_DIR / "workloads.py")
        return children.run([sys.executable, script, "chain", str(steps), str(root)], log)

    def floor(steps: int, state: Path) -> float:
        script = str(BENCH_DIR / "plain_floor.py")
        return children.run([sys.executable, script, "chain", str(steps), str(state)])

    def contract_floor(steps: int, state: Path) -> float:
        script = str(BENCH_DIR / "contract_floor.py")
        return children.run([sys.executable, script, "chain", str(steps), str(state)], log)

    def cold_round(index: int) -> None:
        alternating(
            index,
            lambda: small.ours.append(ours(3, tmp / f"p3-ours-{index}")),
            lambda: small.base.append(floor(3, tmp / f"p3-floor-{index}")),
            lambda: contract_small.append(contract_floor(3, tmp / f"p3-contract-{index}")),
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
    return [small, contract_vs_plain, small_vs_contract, rerun, rerun_vs_contract]


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


def render(metrics: list[Metric], info: dict[str, Any], top: list[Any], cfg: Config) -> str:
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
    if top:
        lines += ["", "largest self times under -X importtime (import stalwart; .Pipeline):"]
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
    args = parser.parse_args(argv)
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
        info = {"machine": machine(tmp), "packages": versions()}
        if info["machine"]["filesystem"]["fstype"] in ("tmpfs", "ramfs", "overlay"):
            progress(
                f"warning: {tmp} is on {info['machine']['filesystem']['fstype']}; the "
                "floor is not a disk's floor there (use --tmpdir on a real disk)"
            )
        metrics = bench_steps(cfg, tmp)
        children = Children(child_env(tmp / "pycache"), tmp)
        startup, top = bench_startup(cfg, children)
        metrics += startup
        metrics.append(bench_large(cfg, tmp))
        metrics += bench_retry(cfg)
        metrics += bench_process(cfg, children)
    report = render(metrics, info, top, cfg)
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
