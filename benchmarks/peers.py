"""Side by side: the same chains under the plain-Python floor, stalwart, Luigi and Prefect 3.

``make bench-peers`` (or ``.venv/bin/python benchmarks/peers.py [--repeats N] [--quick]``)
builds or reuses one virtualenv per peer in ``benchmarks/.venvs/`` (pinned versions, all
from the same base interpreter as the project's venv), then runs the workload scripts in
``benchmarks/peers/``, each as a new process (interpreter start included):

- cold run of a 3-step chain and of a 200-step chain (fresh state directory each time),
- re-run of the finished 200-step chain (everything already done),
- per-task cost: (200-step time - 3-step time) / 197, from the medians,
- peak RSS: ``ru_maxrss`` of the child from ``os.wait4`` (the largest process of its tree
  that was waited for, e.g. Prefect's temporary API server; not a sum).

Tools are interleaved within each repeat so drift on a noisy machine hits all of them
alike. Each tool first does one uncounted 3-step run (warm-up: bytecode caches, and
Prefect's SQLite database, which a real user has already). Medians over ``--repeats``
are printed as a table with the ratio to the floor, and written to
``benchmarks/results/peers.json``. A peer that cannot install or run here is recorded
with the reason, and the others go on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
VENVS_DIR = BENCH_DIR / ".venvs"
RESULTS_PATH = BENCH_DIR / "results" / "peers.json"
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"

# Pinned peer versions: the newest releases that install and run here (Python 3.11).
PINS: dict[str, str] = {"luigi": "3.8.1", "prefect": "3.9.1"}

SMALL, LARGE = 3, 200
METRICS: tuple[tuple[str, str], ...] = (
    ("cold_small_ms", f"cold {SMALL} steps"),
    ("cold_large_ms", f"cold {LARGE} steps"),
    ("rerun_large_ms", f"re-run {LARGE} done"),
    ("per_task_ms", "per task"),
    ("per_task_inproc_ms", "in-process"),
    ("peak_rss_mib", "peak RSS"),
)
UNITS: dict[str, str] = {
    "cold_small_ms": "ms",
    "cold_large_ms": "ms",
    "rerun_large_ms": "ms",
    "per_task_ms": "ms",
    "per_task_inproc_ms": "ms",
    "peak_rss_mib": "MiB",
}
# Variables that would change what a child does (coverage hooks, a real Prefect API,
# stalwart's metrics sinks and Slack alerts, a Luigi config): never passed on. Nor is
# PYTHONDONTWRITEBYTECODE: the peers' packages come with .pyc files from pip, while
# stalwart (installed editable from src/) would be recompiled at every start without it.
DROPPED_ENV_PREFIXES = ("PREFECT_", "STALWART_", "COVERAGE_", "LUIGI_")
DROPPED_ENV = {"SLACK_WEBHOOK_URL", "PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME"}
INSTALL_TIMEOUT_S = 1800


class SetupError(Exception):
    """A tool cannot be installed or imported here; the message says why."""


class RunError(Exception):
    """A measured run failed (exit code, timeout or missing outputs)."""


@dataclass
class Tool:
    name: str
    script: Path
    python: Path | None = None
    version: str = "-"
    error: str | None = None
    env_for: Callable[[Path, Path], dict[str, str]] = field(default=lambda _w, _s: {})


@dataclass
class Sample:
    wall_ms: float
    maxrss_mib: float
    chain_ms: float | None  # the workload's own timing of the chain alone (``chain_ms=``)


@dataclass
class ToolResult:
    tool: Tool
    first_run_ms: float | None = None
    cold_small: list[Sample] = field(default_factory=list)
    cold_large: list[Sample] = field(default_factory=list)
    rerun_large: list[Sample] = field(default_factory=list)
    rerun_skipped: bool | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.tool.error is None and self.error is None

    def medians(self) -> dict[str, float]:
        if not (self.cold_small and self.cold_large and self.rerun_large):
            return {}
        small = statistics.median(s.wall_ms for s in self.cold_small)
        large = statistics.median(s.wall_ms for s in self.cold_large)
        rss = [s.maxrss_mib for s in self.cold_small + self.cold_large + self.rerun_large]
        medians = {
            "cold_small_ms": small,
            "cold_large_ms": large,
            "rerun_large_ms": statistics.median(s.wall_ms for s in self.rerun_large),
            "per_task_ms": (large - small) / (LARGE - SMALL),
            "peak_rss_mib": statistics.median(rss),
        }
        chain_small = [s.chain_ms for s in self.cold_small if s.chain_ms is not None]
        chain_large = [s.chain_ms for s in self.cold_large if s.chain_ms is not None]
        if chain_small and chain_large:
            medians["per_task_inproc_ms"] = (
                statistics.median(chain_large) - statistics.median(chain_small)
            ) / (LARGE - SMALL)
        return medians


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def filesystem_of(path: Path) -> str:
    """The mount (device and type) holding ``path``, from /proc/mounts."""
    best: tuple[int, str] = (-1, "unknown")
    resolved = str(path.resolve())
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mount, fstype = parts[0], parts[1], parts[2]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best[0]:
            best = (len(mount), f"{fstype} on {device} (mounted at {mount})")
    return best[1]


def machine_info(workdir: Path) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory": mem_total(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "base_interpreter": str(base_python()),
        "state_filesystem": filesystem_of(workdir),
    }


# --------------------------------------------------------------------------- setup


def base_python() -> Path:
    """The interpreter the project's venv was made from: every venv here uses it too."""
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def tail(text: str, lines: int = 6, chars: int = 800) -> str:
    kept = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    # pip's notes about unreachable local indexes are noise, not the reason.
    kept = [line for line in kept if "is ignored: it is neither a file" not in line]
    return " | ".join(kept[-lines:])[-chars:]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in DROPPED_ENV and not key.startswith(DROPPED_ENV_PREFIXES)
    }
    env.update(extra or {})
    return env


def python_eval(python: Path, code: str, timeout: float = 120) -> str:
    """Run ``code`` in ``python`` and return its stdout; SetupError with the reason if not."""
    try:
        done = subprocess.run(
            [str(python), "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{type(exc).__name__}: {exc}") from exc
    if done.returncode != 0:
        raise SetupError(tail(done.stderr, lines=1) or f"exit code {done.returncode}")
    return done.stdout.strip()


def installed_version(python: Path, package: str) -> str | None:
    try:
        return python_eval(python, f"import importlib.metadata as m; print(m.version({package!r}))")
    except SetupError:
        return None


def ensure_venv(name: str, package: str | None = None) -> Path:
    """Create (or reuse) ``benchmarks/.venvs/<name>``, with ``package==PINS[package]``."""
    venv = VENVS_DIR / name
    python = venv / "bin" / "python"
    usable = False
    if python.exists():
        try:
            python_eval(python, "import sys")
            usable = True
        except SetupError:
            usable = False
    if not usable:
        log(f"creating virtualenv {venv.relative_to(REPO)}")
        VENVS_DIR.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [str(base_python()), "-m", "venv", "--clear", str(venv)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise SetupError(f"venv creation failed: {tail(done.stderr)}")
    if package is None:
        return python
    pin = PINS[package]
    if installed_version(python, package) == pin:
        return python
    log(f"installing {package}=={pin} into {venv.relative_to(REPO)} (this can take minutes)")
    try:
        done = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"{package}=={pin}",
            ],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            env=child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"pip install {package}=={pin} timed out after {exc.timeout} s") from exc
    if done.returncode != 0:
        raise SetupError(f"pip install {package}=={pin} failed: {tail(done.stderr)}")
    found = installed_version(python, package)
    if found != pin:
        raise SetupError(f"after pip install, {package} version is {found}, expected {pin}")
    return python


def prefect_env(workdir: Path, state: Path) -> dict[str, str]:
    """Prefect's default local mode, kept on this machine and out of the user's home.

    No PREFECT_API_URL (dropped from the environment), so Prefect starts its temporary
    API server; its SQLite database and profiles live in a PREFECT_HOME private to this
    benchmark; the server sends no analytics; results (the records that let a re-run
    skip finished tasks) go in the run's state directory.
    """
    return {
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(state / ".prefect-results"),
        "DO_NOT_TRACK": "1",
    }


def setup_floor(tool: Tool) -> None:
    # A venv without packages: the same interpreter and start-up path as the others,
    # minus any framework (the base install's site-packages may run .pth hooks that no
    # venv here runs).
    tool.python = ensure_venv("floor")
    tool.version = "CPython " + python_eval(
        tool.python, "import platform; print(platform.python_version())"
    )


def setup_stalwart(tool: Tool) -> None:
    tool.script = PEERS_DIR / "stalwart_chain.py"
    tool.python = PROJECT_PYTHON
    if not PROJECT_PYTHON.exists():
        raise SetupError(f"{PROJECT_PYTHON} missing (run `make venv`)")
    tool.version = python_eval(
        PROJECT_PYTHON,
        "import importlib.metadata as m, stalwart;"
        " stalwart.Pipeline; stalwart.Context; print(m.version('stalwart'))",
    )


def setup_peer(tool: Tool) -> None:
    tool.script = PEERS_DIR / f"{tool.name}_chain.py"
    tool.python = ensure_venv(tool.name, tool.name)
    tool.version = PINS[tool.name]
    python_eval(tool.python, f"import {tool.name}", timeout=300)
    if tool.name == "prefect":
        tool.env_for = prefect_env


def setup_tools(names: list[str]) -> list[Tool]:
    tools: list[Tool] = []
    for name in names:
        tool = Tool(name=name, script=PEERS_DIR / f"{name}.py")
        setup = {"floor": setup_floor, "stalwart": setup_stalwart}.get(name, setup_peer)
        try:
            setup(tool)
        except SetupError as exc:
            tool.error = str(exc)
            log(f"{name}: not available ({tool.error})")
        tools.append(tool)
    return tools


# --------------------------------------------------------------------------- running


def log(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def kill_group(pgid: int) -> None:
    """Kill the process group of a child we started (only while it is not yet reaped)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def output_mtimes(state: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in state.rglob("out-*.txt")}


def run_once(
    tool: Tool, steps: int, state: Path, *, workdir: Path, label: str, timeout: float
) -> Sample:
    """One fresh process of ``tool`` running a ``steps``-step chain in ``state``."""
    assert tool.python is not None
    state.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{tool.name}-{label}.log"
    env = child_env(tool.env_for(workdir, state))
    argv = [str(tool.python), str(tool.script), str(steps), str(state)]
    timed_out = threading.Event()
    reaped = threading.Lock()  # held once the child is reaped: its group id is no longer ours

    def on_timeout(pgid: int) -> None:
        if reaped.acquire(blocking=False):
            try:
                timed_out.set()
                kill_group(pgid)
            finally:
                reaped.release()

    with log_path.open("wb") as out:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=state,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise RunError(f"{label}: cannot start {argv[0]}: {exc}") from exc
        timer = threading.Timer(timeout, on_timeout, args=(proc.pid,))
        timer.daemon = True
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: the child is in its own session, so end it here
            kill_group(proc.pid)
            os.wait4(proc.pid, 0)
            raise
        finally:
            reaped.acquire()
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    output = log_path.read_text(errors="replace")
    if timed_out.is_set():
        raise RunError(f"{label}: timed out after {timeout:.0f} s; last output: {tail(output)}")
    if proc.returncode != 0:
        raise RunError(f"{label}: exit code {proc.returncode}: {tail(output)}")
    found = len(output_mtimes(state))
    if found != steps:
        raise RunError(f"{label}: {found} of {steps} outputs written: {tail(output)}")
    return Sample(
        wall_ms=wall * 1000, maxrss_mib=usage.ru_maxrss / 1024, chain_ms=chain_ms_of(output)
    )


def chain_ms_of(output: str) -> float | None:
    """The last ``chain_ms=<float>`` line a workload printed, if any."""
    for line in reversed(output.splitlines()):
        if line.startswith("chain_ms="):
            try:
                return float(line.removeprefix("chain_ms="))
            except ValueError:
                return None
    return None


def measure(tools: list[Tool], repeats: int, workdir: Path, timeout: float) -> list[ToolResult]:
    results = [ToolResult(tool) for tool in tools]
    for result in results:
        if not result.ok:
            continue
        try:
            first = run_once(
                result.tool,
                SMALL,
                workdir / "warmup" / result.tool.name,
                workdir=workdir,
                label="warmup",
                timeout=timeout,
            )
        except RunError as exc:
            result.error = str(exc)
            log(f"{result.tool.name}: failed ({result.error})")
            continue
        result.first_run_ms = first.wall_ms
        log(f"{result.tool.name}: warm-up {first.wall_ms:.0f} ms")
    for rep in range(1, repeats + 1):
        for result in results:
            if not result.ok:
                continue
            name = result.tool.name
            base = workdir / f"rep{rep}" / name
            try:
                small = run_once(
                    result.tool,
                    SMALL,
                    base / "small",
                    workdir=workdir,
                    label=f"cold{SMALL}-{rep}",
                    timeout=timeout,
                )
                large = run_once(
                    result.tool,
                    LARGE,
                    base / "large",
                    workdir=workdir,
                    label=f"cold{LARGE}-{rep}",
                    timeout=timeout,
                )
                before = output_mtimes(base / "large")
                rerun = run_once(
                    result.tool,
                    LARGE,
                    base / "large",
                    workdir=workdir,
                    label=f"rerun{LARGE}-{rep}",
                    timeout=timeout,
                )
            except RunError as exc:
                result.error = str(exc)
                log(f"{name}: failed ({result.error})")
                continue
            skipped = output_mtimes(base / "large") == before
            result.rerun_skipped = skipped and result.rerun_skipped is not False
            result.cold_small.append(small)
            result.cold_large.append(large)
            result.rerun_large.append(rerun)
            log(
                f"[{rep}/{repeats}] {name}: cold{SMALL} {small.wall_ms:.0f} ms, "
                f"cold{LARGE} {large.wall_ms:.0f} ms, re-run {rerun.wall_ms:.0f} ms"
                + ("" if skipped else " (re-run rewrote outputs!)")
            )
    return results


# --------------------------------------------------------------------------- report


def status_of(result: ToolResult) -> str:
    if result.tool.error is not None:
        return "not available"
    if result.error is not None:
        return "failed"
    return "ok"


def reason_of(result: ToolResult) -> str | None:
    return result.tool.error or result.error


def format_value(metric: str, value: float) -> str:
    if metric.startswith("per_task"):
        return f"{value:.3f}"
    return f"{value:.1f}"


def render_table(results: list[ToolResult]) -> str:
    floor = next((r.medians() for r in results if r.tool.name == "floor" and r.ok), {})
    header = ["tool", "version"] + [f"{title} ({UNITS[metric]})" for metric, title in METRICS]
    rows: list[list[str]] = []
    notes: list[str] = []
    for result in results:
        medians = result.medians() if result.ok else {}
        if not medians:
            reason = reason_of(result) or "no samples"
            rows.append([result.tool.name, result.tool.version, f"{status_of(result)} (see below)"])
            notes.append(f"{result.tool.name}: {status_of(result)} ({reason})")
            continue
        row = [result.tool.name, result.tool.version]
        for metric, _ in METRICS:
            if metric not in medians:
                row.append("-")
                continue
            cell = format_value(metric, medians[metric])
            if floor.get(metric, 0) > 0 and medians[metric] > 0:
                cell += f" ({medians[metric] / floor[metric]:.2f}x)"
            elif medians[metric] <= 0:
                cell += " (noise)"
                notes.append(
                    f"{result.tool.name}: {metric} is below the run-to-run noise of its "
                    "start-up; see the samples in the JSON"
                )
            row.append(cell)
        rows.append(row)
        if result.rerun_skipped is False:
            notes.append(f"{result.tool.name}: the re-run rewrote outputs (did not skip)")
    widths = [len(h) for h in header]
    for row in rows:
        full = len(row) == len(header)
        for column, cell in enumerate(row if full else row[:2]):
            widths[column] = max(widths[column], len(cell))
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    lines.append(
        f"(medians; ratio to the floor in parentheses; per task = (cold {LARGE} - cold {SMALL})"
        f" / {LARGE - SMALL} from process wall times;\n in-process = the same from each"
        " workload's own timing of the chain, without interpreter, imports or server start)"
    )
    lines.extend(notes)
    return "\n".join(lines)


def to_json(
    results: list[ToolResult], machine: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    floor = next((r.medians() for r in results if r.tool.name == "floor" and r.ok), {})
    tools: list[dict[str, Any]] = []
    for result in results:
        medians = result.medians() if result.ok else {}
        entry: dict[str, Any] = {
            "name": result.tool.name,
            "version": result.tool.version,
            "python": str(result.tool.python) if result.tool.python else None,
            "script": str(result.tool.script.relative_to(REPO)),
            "status": status_of(result),
            "error": reason_of(result),
            "first_run_ms": result.first_run_ms,
            "samples": {
                "cold_small_ms": [s.wall_ms for s in result.cold_small],
                "cold_large_ms": [s.wall_ms for s in result.cold_large],
                "rerun_large_ms": [s.wall_ms for s in result.rerun_large],
                "chain_small_ms": [s.chain_ms for s in result.cold_small],
                "chain_large_ms": [s.chain_ms for s in result.cold_large],
                "chain_rerun_ms": [s.chain_ms for s in result.rerun_large],
                "maxrss_mib": [
                    s.maxrss_mib for s in result.cold_small + result.cold_large + result.rerun_large
                ],
            },
            "median": medians,
            "ratio_to_floor": {
                k: v / floor[k] for k, v in medians.items() if floor.get(k, 0) > 0 and v > 0
            },
            "per_task_above_floor_ms": (
                medians["per_task_ms"] - floor["per_task_ms"] if medians and floor else None
            ),
            "rerun_skipped": result.rerun_skipped,
        }
        tools.append(entry)
    return {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "chains": {"small": SMALL, "large": LARGE},
        "machine": machine,
        "settings": settings,
        "tools": tools,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=None, help="repeats per metric (5)")
    parser.add_argument("--quick", action="store_true", help="one repeat: a smoke run")
    parser.add_argument(
        "--peer-fsync",
        action="store_true",
        help="Luigi and Prefect fsync each output and its directory (they do not by default)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per run, seconds (300)")
    parser.add_argument(
        "--tools",
        default="floor,stalwart,luigi,prefect",
        help="comma-separated subset of floor,stalwart,luigi,prefect",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="state dirs (a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, state)")
    parser.add_argument("--json", type=Path, default=RESULTS_PATH, help="results file")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    known = {"floor", "stalwart", "luigi", "prefect"}
    args.tool_names = [t.strip() for t in args.tools.split(",") if t.strip()]
    if unknown := set(args.tool_names) - known:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="stalwart-peers-"))
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(workdir)
    if args.peer_fsync:  # read by peers/luigi_chain.py and peers/prefect_chain.py
        os.environ["PEERS_FSYNC"] = "1"
    tools = setup_tools(args.tool_names)
    try:
        results = measure(tools, args.repeats, workdir, args.timeout)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    settings = {
        "repeats": args.repeats,
        "quick": args.quick,
        "peer_fsync": args.peer_fsync,
        "timeout_s": args.timeout,
        "workdir": str(workdir) if args.keep or args.workdir else None,
    }
    print(
        f"machine: {machine['nproc']} CPUs ({machine['usable_cpus']} usable), "
        f"{machine['cpu_model']}, {machine['memory']}, Linux {machine['kernel']}"
    )
    print(f"python: {machine['python']} ({machine['base_interpreter']})")
    print(f"state on: {machine['state_filesystem']}")
    print("versions: " + ", ".join(f"{t.name} {t.version}" for t in tools))
    print(f"repeats: {args.repeats} (each a new process, tools interleaved)")
    fsync = "yes (--peer-fsync)" if args.peer_fsync else "no (their default)"
    print(f"Luigi and Prefect fsync each output and its directory: {fsync}\n")
    print(render_table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(to_json(results, machine, settings), indent=2) + "\n")
    print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
