"""Crash-test a user's own pipeline: SIGKILL it, resume it, compare with a clean run.

``run_chaos(target, kills=20, seed=0)`` drives the pipeline as separate processes (``stalwart
run TARGET --run-id ID`` under the fault injector of ``_fault_injector``), each case in a
scratch directory of its own (working directory and ``$STALWART_ROOT``), never the user's:

1. two clean runs (the references): their outputs, how many file-system calls each step
   makes, how long a run takes, and which files differ between two clean runs
   (non-deterministic: timestamps, random ids), compared afterwards by presence and size only;
2. ``kills`` cases, each from scratch: a SIGKILL at a random file-system call of a chosen step
   (the marker write counts as the step's) or at a random moment, then resumes - themselves
   killed now and then - until the pipeline finishes;
3. every file of the case compared byte for byte with the reference; temp files left behind
   (debris); markers whose recorded outputs are not the files on disk; steps that started
   more often than the kills explain; and the HTTP requests the pipeline sent through httpx:
   a POST/PATCH without ``Idempotency-Key``, repeated after a kill, or the same request sent
   with two different keys.

Every case's plan comes from ``random.Random(f"{seed}:{case}")``: the same seed gives the same
plans, and ``--kills K`` replays the first K cases of a longer run. A kill at a file-system
call lands at the same place every time; a kill at a moment depends on timing.

Crash safety of this module: it writes only inside its own scratch directory (removed at the
end), so killing ``stalwart chaos`` itself leaves at most that directory behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ._atomic import is_temp_name
from ._errors import StalwartError, UsageError
from ._fault_injector import PLAN_VARIABLE, SETUP
from ._records import Marker

__all__ = [
    "Breakage",
    "ChaosCase",
    "ChaosError",
    "ChaosReport",
    "HttpEffect",
    "Kill",
    "KillPlan",
    "StepChaos",
    "run_chaos",
]

log = logging.getLogger("stalwart.chaos")

BreakKind = Literal[
    "duplicated-rows",
    "missing-rows",
    "partial-file",
    "missing-file",
    "extra-file",
    "differs",
    "debris",
    "wrong-marker",
    "extra-runs",
    "did-not-finish",
    "http-no-key",
    "http-repeated",
    "http-two-keys",
]

_UNSAFE_METHODS = frozenset({"POST", "PATCH"})
_STATE_NAMES = frozenset({".lock", ".journal.jsonl", ".summary.json", ".alert-streak.json"})
"""stalwart's own bookkeeping in a run directory; markers are checked on their own."""
_DROPPED_VARIABLES = ("SLACK_WEBHOOK_URL", "STALWART_")
"""Never handed to a chaos child: no page to the real Slack, no push to real metrics."""
_MAX_RESUME_KILLS = 2
_RESUME_KILL_CHANCE = 0.3
_MAX_PROCESSES = 8


class ChaosError(StalwartError, RuntimeError):
    """The pipeline cannot be crash-tested: a clean run of it fails, or it writes its state
    somewhere else than the scratch root it was given."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Breakage:
    """One thing a kill broke (or, in ``ChaosReport.hazards``, that a clean run shows)."""

    kind: BreakKind
    step: str
    """The step the case's first kill landed in (or, for a hazard, the step that did it)."""
    path: str = ""
    """The file (relative to the case's scratch directory) or the request (``POST URL``)."""
    detail: str = ""

    def __str__(self) -> str:
        where = f" {self.path}" if self.path else ""
        return f"{self.kind}{where}: {self.detail}" if self.detail else f"{self.kind}{where}"


@dataclass(frozen=True, slots=True, kw_only=True)
class KillPlan:
    """Where a case's first process is killed: at call ``kill_at`` of ``step``, or
    ``kill_after`` seconds after the first step started (``step`` is then ``None``)."""

    step: str | None = None
    kill_at: int = 0
    kill_after: float = 0.0

    def describe(self) -> str:
        if self.step is not None:
            return f"file-system call {self.kill_at} of step {self.step}"
        return f"{self.kill_after:.3f} s after the first step started"


@dataclass(frozen=True, slots=True, kw_only=True)
class Kill:
    """A SIGKILL that landed: in which step, and at what (``os.write #3``, ``0.25 s``)."""

    step: str
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosCase:
    """One case: a fresh scratch directory, a kill, resumes until the pipeline finished."""

    index: int
    """0 for the first case (the report counts from 1)."""
    plan: KillPlan
    kills: tuple[Kill, ...]
    """Every SIGKILL that landed, the first one and those of killed resumes, in order."""
    processes: int
    broke: tuple[Breakage, ...]

    @property
    def landed(self) -> bool:
        return bool(self.kills)

    @property
    def survived(self) -> bool:
        return not self.broke

    @property
    def step(self) -> str | None:
        """The step the first kill landed in (``None`` when no kill landed)."""
        return self.kills[0].step if self.kills else None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepChaos:
    """Per step: the kills that landed in it (first kills and killed resumes), how many of
    them were survived (a case that broke counts against the step of its first kill), and
    what the cases whose first kill landed in it broke."""

    step: str
    kills_landed: int
    survived: int
    broke: tuple[Breakage, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpEffect:
    """One kind of request a step sends (method and URL without the query), counted by
    ``Idempotency-Key`` over every chaos case (``None``: sent without a key)."""

    step: str
    method: str
    url: str
    clean_requests: int
    """How many a clean run sends."""
    by_key: tuple[tuple[str | None, int], ...]
    """(key, requests sent with it across all cases), most sent first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosReport:
    """What ``run_chaos`` found. ``ok`` when every kill was survived and nothing is hazardous."""

    target: str
    run_id: str
    seed: int
    kills: int
    params: tuple[str, ...]
    steps: tuple[StepChaos, ...]
    cases: tuple[ChaosCase, ...]
    nondeterministic: tuple[str, ...]
    """Files that differ between two clean runs (compared by presence and size only)."""
    hazards: tuple[Breakage, ...]
    """What a clean run already does wrong (a POST/PATCH without Idempotency-Key)."""
    http: tuple[HttpEffect, ...]
    reproduce: str | None
    """The command that replays the cases up to the first failure (``None`` if ok)."""
    only_steps: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.hazards and all(case.survived for case in self.cases)

    @property
    def kills_landed(self) -> int:
        return sum(len(case.kills) for case in self.cases)

    @property
    def first_failure(self) -> ChaosCase | None:
        return next((case for case in self.cases if not case.survived), None)

    def render(self) -> str:
        """The report for a person: a table per step, then what broke and how to replay it."""
        lines = [
            f"stalwart chaos {self.target}: {len(self.cases)} case(s), "
            f"{self.kills_landed} SIGKILL(s) landed, seed {self.seed}, run id {self.run_id}",
            "",
            f"  {'step':<24} {'kills':>6} {'survived':>9}",
        ]
        lines += [f"  {s.step:<24} {s.kills_landed:>6} {s.survived:>9}" for s in self.steps]
        if self.nondeterministic:
            lines += [
                "",
                "non-deterministic between two clean runs (compared by presence and size):",
            ]
            lines += [f"  {name}" for name in self.nondeterministic]
        if self.http:
            lines += ["", "HTTP requests across all cases, by Idempotency-Key:"]
            for effect in self.http:
                keys = ", ".join(f"{_short(key)} x{count}" for key, count in effect.by_key)
                lines.append(
                    f"  {effect.step}: {effect.method} {effect.url} "
                    f"({effect.clean_requests} in a clean run): {keys or 'none sent'}"
                )
        if self.hazards:
            lines += ["", "hazards (a clean run already does this):"]
            lines += [f"  {h.step}: {h}" for h in self.hazards]
        broken = [s for s in self.steps if s.broke]
        for step in broken:
            lines += ["", f"a kill in step {step.step} broke:"]
            lines += [f"  {b}" for b in _unique(step.broke)]
        first = self.first_failure
        if first is not None:
            lines += [
                "",
                f"first failure: case {first.index + 1} ({first.plan.describe()}; "
                f"{len(first.kills)} kill(s), {first.processes} process(es))",
            ]
            lines += [f"  {b}" for b in first.broke]
        if self.reproduce:
            lines += ["", f"reproduce: {self.reproduce}"]
        verdict = "every kill was survived" if self.ok else "FAILED: not crash-safe"
        lines += ["", verdict]
        return "\n".join(lines)

    def to_json(self) -> str:
        """The report as JSON (``"version": 1``), for CI dashboards."""
        from dataclasses import asdict  # noqa: PLC0415

        data = asdict(self)
        data["version"] = 1
        data["ok"] = self.ok
        return json.dumps(data, indent=2, sort_keys=True)


def _short(key: str | None) -> str:
    return "no key" if key is None else (key if len(key) <= 16 else key[:13] + "...")


def _unique(items: Iterable[Breakage]) -> list[Breakage]:
    return list(dict.fromkeys(items))


# -- what a process left behind ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _File:
    size: int
    sha256: str


def _walk(base: Path) -> Iterable[tuple[str, Path]]:
    for directory, _dirs, names in os.walk(base):
        for name in names:
            path = Path(directory, name)
            yield path.relative_to(base).as_posix(), path


def _snapshot(base: Path) -> dict[str, _File]:
    """Every regular file under ``base`` except stalwart's own state and temp files."""
    files: dict[str, _File] = {}
    for rel, path in _walk(base):
        parts = rel.split("/")
        if ".checkpoints" in parts or parts[-1] in _STATE_NAMES or is_temp_name(parts[-1]):
            continue
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        files[rel] = _File(len(data), hashlib.sha256(data).hexdigest())
    return files


def _debris(base: Path) -> list[str]:
    return sorted(rel for rel, _path in _walk(base) if is_temp_name(rel.rsplit("/", 1)[-1]))


def _classify(reference: bytes, got: bytes) -> tuple[BreakKind, str]:
    """How ``got`` differs from ``reference`` (they do differ)."""
    if len(got) < len(reference) and reference.startswith(got):
        return "partial-file", f"{len(got)} of {len(reference)} bytes (cut short)"
    ref_lines = Counter(reference.splitlines(keepends=True))
    got_lines = Counter(got.splitlines(keepends=True))
    if got_lines != ref_lines and got_lines >= ref_lines:
        extra = got_lines - ref_lines
        sample = next(iter(extra))
        return (
            "duplicated-rows",
            f"{extra.total()} line(s) more than a clean run, e.g. {_line(sample)}",
        )
    if got_lines != ref_lines and got_lines <= ref_lines:
        missing = ref_lines - got_lines
        sample = next(iter(missing))
        return (
            "missing-rows",
            f"{missing.total()} line(s) fewer than a clean run, e.g. {_line(sample)}",
        )
    offset = next(
        (i for i, (a, b) in enumerate(zip(reference, got, strict=False)) if a != b),
        min(len(reference), len(got)),
    )
    return (
        "differs",
        f"{len(got)} bytes against {len(reference)} in a clean run; first difference at "
        f"byte {offset}",
    )


def _line(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").rstrip("\n")
    return repr(text if len(text) <= 60 else text[:57] + "...")


# -- the engine --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Trace:
    """What one child process wrote in its trace file."""

    steps: list[str] = field(default_factory=list)
    http: list[dict[str, str | None]] = field(default_factory=list)
    kill: dict[str, object] | None = None
    ops: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @classmethod
    def read(cls, path: Path) -> _Trace:
        trace = cls()
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if "step" in record:
                        trace.steps.append(str(record["step"]))
                    elif "http" in record:
                        trace.http.append(record["http"])
                    elif "kill" in record:
                        trace.kill = record["kill"]
                    elif "ops" in record:
                        trace.ops = {str(k): int(v) for k, v in record["ops"].items()}
                        trace.elapsed = float(record.get("elapsed", 0.0))
        return trace


@dataclass(frozen=True, slots=True)
class _Outcome:
    code: int
    trace: _Trace
    message: str


@dataclass(slots=True)
class _Reference:
    """What the two clean runs established."""

    base: Path
    files: dict[str, _File]
    sizes: dict[str, int | None]
    """Non-deterministic files: their size when both clean runs agree on it, else None."""
    unstable: set[str]
    steps: list[str]
    ops: dict[str, int]
    elapsed: float
    http: list[list[dict[str, str | None]]]
    """The requests of each clean run."""


class _Chaos:
    def __init__(
        self,
        target: str,
        *,
        kills: int,
        seed: int,
        run_id: str,
        params: Sequence[str],
        steps: Sequence[str] | None,
        env: Mapping[str, str] | None,
        python: str,
        timeout: float,
        moments: float,
        scratch: Path,
    ) -> None:
        self.target = target
        self.kills = kills
        self.seed = seed
        self.run_id = run_id
        self.params = tuple(params)
        self.only = tuple(steps or ())
        self.python = python
        self.timeout = timeout
        self.moments = moments
        self.scratch = scratch
        self.child_target = _absolute_target(target)
        self.env = _child_environment(env)
        self.reference_steps: list[str] = []
        self.ops: dict[str, int] = {}
        self.elapsed = 0.0
        self.sent_by_case: list[list[dict[str, str | None]]] = []

    # -- processes

    def command(self) -> list[str]:
        words = [self.python, "-m", "stalwart._fault_injector", "run", self.child_target]
        words += ["--run-id", self.run_id, "--log-format", "json"]
        for param in self.params:
            words += ["--param", param]
        return words

    def process(self, case_dir: Path, trace_path: Path, plan: Mapping[str, object]) -> _Outcome:
        env = dict(self.env)
        env["STALWART_ROOT"] = str(case_dir / "root")
        env[PLAN_VARIABLE] = json.dumps({"trace": str(trace_path), **plan})
        log.debug("chaos: %s=%s %s", PLAN_VARIABLE, env[PLAN_VARIABLE], shlex.join(self.command()))
        try:
            done = subprocess.run(
                self.command(),
                cwd=case_dir,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return _Outcome(-1, _Trace.read(trace_path), f"still running after {self.timeout:g} s")
        return _Outcome(done.returncode, _Trace.read(trace_path), _last_words(done.stderr))

    # -- the references

    def reference(self, work: Path) -> tuple[_Reference, Path]:
        runs = []
        for n in (1, 2):
            case_dir = work / f"clean-{n}"
            (case_dir / "root").mkdir(parents=True)
            outcome = self.process(case_dir, work / f"clean-{n}.trace", {})
            if outcome.code != 0:
                self.refuse(outcome)
            runs.append((case_dir, outcome.trace))
        (first, trace1), (second, trace2) = runs
        self.find_run_dir(first)
        snap1, snap2 = _snapshot(first), _snapshot(second)
        same = {k: v for k, v in snap1.items() if snap2.get(k) == v}
        sizes = {
            k: (v.size if snap2[k].size == v.size else None)
            for k, v in snap1.items()
            if k in snap2 and k not in same
        }
        unstable = set(snap1) ^ set(snap2)
        steps = list(dict.fromkeys(trace1.steps))
        if self.only:
            unknown = [s for s in self.only if s not in steps]
            if unknown:
                raise UsageError(
                    f"--steps: no step {', '.join(map(repr, unknown))} in {self.target} "
                    f"(steps: {', '.join(steps)})"
                )
        ops = {s: min(trace1.ops.get(s, 0), trace2.ops.get(s, 0)) for s in steps}
        reference = _Reference(
            base=first,
            files=same,
            sizes=sizes,
            unstable=unstable,
            steps=steps,
            ops=ops,
            elapsed=max(trace1.elapsed, trace2.elapsed),
            http=[trace1.http, trace2.http],
        )
        return reference, second

    def refuse(self, outcome: _Outcome) -> None:
        """A clean run failed: say why, as a usage error when the pipeline could not start."""
        message = outcome.message or "no message"
        if outcome.code == 2:
            if "--param" in message:
                raise UsageError(
                    f"{self.target} rejected --param: this version of `stalwart run` has no "
                    f"run parameters ({message})"
                )
            raise UsageError(f"{self.target}: {message}")
        raise ChaosError(
            f"a clean run of {self.target} (run id {self.run_id}) did not succeed (exit "
            f"{outcome.code}): {message}. stalwart chaos needs a pipeline that finishes; "
            f"run it once with `stalwart run {self.target} --run-id {self.run_id}` to see why"
        )

    def find_run_dir(self, case_dir: Path) -> None:
        root = case_dir / "root"
        if not any(root.glob(f"*/runs/{self.run_id}")) and not any(
            case_dir.glob(f"**/runs/{self.run_id}")
        ):
            raise ChaosError(
                f"{self.target} wrote no run directory under the scratch root it was given "
                "($STALWART_ROOT): a pipeline crash-tested by stalwart chaos must not set an "
                "absolute root=, or chaos would touch your real state"
            )

    # -- the cases

    def plans(self) -> list[tuple[KillPlan, random.Random]]:
        """Every case's first kill, and the random source of its resumes.

        File-system-call kills go round the chosen steps (from a seeded offset), so the first
        cases cover every step; with no ``--steps``, a share (``moments``) of the cases after
        those kills at a random moment instead."""
        chosen = [s for s in (self.only or self.reference_steps) if self.ops.get(s, 0) > 0]
        turn = random.Random(f"{self.seed}:steps").randrange(max(1, len(chosen)))
        plans = []
        for index in range(self.kills):
            rng = random.Random(f"{self.seed}:{index}")
            at_moment = not self.only and index >= len(chosen) and rng.random() < self.moments
            if at_moment or not chosen:
                plans.append((KillPlan(kill_after=round(rng.uniform(0.0, self.elapsed), 4)), rng))
                continue
            step = chosen[turn % len(chosen)]
            turn += 1
            plans.append((KillPlan(step=step, kill_at=rng.randint(1, self.ops[step])), rng))
        return plans

    def run_case(
        self, index: int, plan: KillPlan, rng: random.Random, work: Path, ref: _Reference
    ) -> ChaosCase:
        case_dir = work / f"case-{index}"
        (case_dir / "root").mkdir(parents=True)
        spec: dict[str, object] = (
            {"kill_step": plan.step, "kill_at": plan.kill_at}
            if plan.step is not None
            else {"kill_after": plan.kill_after}
        )
        kills: list[Kill] = []
        broke: list[Breakage] = []
        http: list[dict[str, str | None]] = []
        total_ops = max(1, sum(ref.ops.values()))
        processes = 0
        finished = False
        while processes < _MAX_PROCESSES:
            processes += 1
            outcome = self.process(case_dir, work / f"case-{index}-{processes}.trace", spec)
            http += outcome.trace.http
            if outcome.code == -signal.SIGKILL and outcome.trace.kill is not None:
                kills.append(_kill_of(outcome.trace.kill))
                broke += self.partial_after_kill(case_dir, ref, kills[0].step)
                spec = {}
                if len(kills) <= _MAX_RESUME_KILLS and rng.random() < _RESUME_KILL_CHANCE:
                    spec = {"kill_step": "*", "kill_at": rng.randint(1, total_ops)}
                continue
            if outcome.code != 0:
                step = kills[0].step if kills else SETUP
                why = (
                    outcome.message
                    if outcome.code == -1
                    else f"process {processes} of the case exited {outcome.code}: {outcome.message}"
                )
                broke.append(Breakage(kind="did-not-finish", step=step, detail=why))
            finished = outcome.code == 0
            break
        step = kills[0].step if kills else SETUP
        if finished:
            broke += self.compare(case_dir, ref, step)
            broke += self.check_markers(case_dir, kills, ref.steps, step)
        elif not broke:
            broke.append(
                Breakage(
                    kind="did-not-finish",
                    step=step,
                    detail=f"still not finished after {processes} processes",
                )
            )
        broke += self.check_http(http, ref, step)
        self.sent_by_case.append(http)
        return ChaosCase(
            index=index,
            plan=plan,
            kills=tuple(kills),
            processes=processes,
            broke=tuple(_unique(broke)),
        )

    # -- the checks

    def partial_after_kill(self, case_dir: Path, ref: _Reference, step: str) -> list[Breakage]:
        """Right after a kill: a deterministic file that is a strict prefix of the clean
        run's is a half-written file another program could read."""
        found = []
        for rel, expected in ref.files.items():
            path = case_dir / rel
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                if size < expected.size:
                    reference = (ref.base / rel).read_bytes()
                    if reference.startswith(path.read_bytes()):
                        found.append(
                            Breakage(
                                kind="partial-file",
                                step=step,
                                path=rel,
                                detail=f"{size} of {expected.size} bytes on disk right after "
                                "a kill (written in place, not atomically)",
                            )
                        )
        return found

    def compare(self, case_dir: Path, ref: _Reference, step: str) -> list[Breakage]:
        got = _snapshot(case_dir)
        found = []
        for rel, expected in sorted(ref.files.items()):
            have = got.get(rel)
            if have is None:
                found.append(Breakage(kind="missing-file", step=step, path=rel))
            elif have != expected:
                kind, detail = _classify(
                    (ref.base / rel).read_bytes(), (case_dir / rel).read_bytes()
                )
                found.append(Breakage(kind=kind, step=step, path=rel, detail=detail))
        for rel, size in sorted(ref.sizes.items()):
            have = got.get(rel)
            if have is None:
                found.append(Breakage(kind="missing-file", step=step, path=rel))
            elif size is not None and have.size != size:
                found.append(
                    Breakage(
                        kind="differs",
                        step=step,
                        path=rel,
                        detail=f"{have.size} bytes against {size} in both clean runs "
                        "(non-deterministic file: sizes compared)",
                    )
                )
        for rel in sorted(set(got) - set(ref.files) - set(ref.sizes) - ref.unstable):
            found.append(
                Breakage(kind="extra-file", step=step, path=rel, detail="not in a clean run")
            )
        found += [
            Breakage(kind="debris", step=step, path=rel, detail="temp file left behind")
            for rel in _debris(case_dir)
        ]
        return found

    def check_markers(
        self, case_dir: Path, kills: Sequence[Kill], order: Sequence[str], step: str
    ) -> list[Breakage]:
        found = []
        for marker_path in sorted(case_dir.glob(f"**/runs/{self.run_id}/.checkpoints/*.done")):
            run_dir = marker_path.parent.parent
            rel = marker_path.relative_to(case_dir).as_posix()
            try:
                marker = Marker.from_json(marker_path.read_bytes())
            except ValueError as exc:
                found.append(Breakage(kind="wrong-marker", step=step, path=rel, detail=str(exc)))
                continue
            for output in marker.outputs:
                path = run_dir / output.name
                try:
                    data = path.read_bytes()
                except OSError:
                    data = None
                if (
                    data is None
                    or len(data) != output.size
                    or (hashlib.sha256(data).hexdigest() != output.sha256)
                ):
                    found.append(
                        Breakage(
                            kind="wrong-marker",
                            step=step,
                            path=rel,
                            detail=f"records {output.name} ({output.size} bytes) but the file "
                            f"on disk is {'missing' if data is None else f'{len(data)} bytes'}"
                            + ("" if data is None or len(data) != output.size else ", other bytes"),
                        )
                    )
            allowed = 1 + _kills_explaining(marker.step, kills, order)
            if marker.runs > allowed:
                found.append(
                    Breakage(
                        kind="extra-runs",
                        step=step,
                        path=rel,
                        detail=f"step {marker.step} started {marker.runs} times; the kills "
                        f"explain at most {allowed}",
                    )
                )
        return found

    def check_http(
        self, sent: Sequence[Mapping[str, str | None]], ref: _Reference, step: str
    ) -> list[Breakage]:
        clean = [_effects(run) for run in ref.http]
        found = []
        for effect, keys in _effects(sent).items():
            method, url = effect[1], effect[2]
            if method not in _UNSAFE_METHODS:
                continue
            expected = [run.get(effect, Counter()) for run in clean]
            unkeyed = keys[None]
            expected_unkeyed = max(run[None] for run in expected)
            if unkeyed > expected_unkeyed:
                found.append(
                    Breakage(
                        kind="http-repeated",
                        step=step,
                        path=f"{method} {url}",
                        detail=f"sent {unkeyed} times without Idempotency-Key "
                        f"({expected_unkeyed} in a clean run): the receiver got it again",
                    )
                )
            distinct = sum(1 for k in keys if k is not None)
            expected_distinct = max(sum(1 for k in run if k is not None) for run in expected)
            if distinct > max(1, expected_distinct):
                found.append(
                    Breakage(
                        kind="http-two-keys",
                        step=step,
                        path=f"{method} {url}",
                        detail=f"the same request went out under {distinct} different "
                        f"Idempotency-Keys ({expected_distinct} in a clean run): a receiver "
                        "cannot dedupe it",
                    )
                )
        return found

    # -- the whole thing

    def run(self, progress: Callable[[ChaosCase, int], None] | None) -> ChaosReport:
        work = self.scratch
        ref, _second = self.reference(work)
        self.reference_steps, self.ops, self.elapsed = ref.steps, ref.ops, ref.elapsed
        hazards = _hazards(ref.http[0])
        cases = []
        for index, (plan, rng) in enumerate(self.plans()):
            case = self.run_case(index, plan, rng, work, ref)
            cases.append(case)
            shutil.rmtree(work / f"case-{index}", ignore_errors=True)
            if progress is not None:
                progress(case, self.kills)
        return self.report(ref, cases, hazards)

    def report(
        self, ref: _Reference, cases: Sequence[ChaosCase], hazards: Sequence[Breakage]
    ) -> ChaosReport:
        rows = []
        for step in [SETUP, *ref.steps]:
            landed = [c for c in cases if c.step == step]
            kills = sum(1 for c in cases for k in c.kills if k.step == step)
            if step == SETUP and not kills:
                continue
            rows.append(
                StepChaos(
                    step=step,
                    kills_landed=kills,
                    survived=kills - sum(1 for c in landed if not c.survived),
                    broke=tuple(_unique(b for c in landed for b in c.broke)),
                )
            )
        first = next((c for c in cases if not c.survived), None)
        reproduce = None
        if first is not None or hazards:
            words = ["stalwart", "chaos", self.target, "--seed", str(self.seed)]
            words += ["--kills", str(first.index + 1 if first is not None else 0)]
            words += ["--run-id", self.run_id]
            for param in self.params:
                words += ["--param", param]
            if self.only:
                words += ["--steps", ",".join(self.only)]
            reproduce = shlex.join(words)
            if first is not None and first.plan.step is None:
                reproduce += "  # the first kill was at a moment: timing may differ"
        return ChaosReport(
            target=self.target,
            run_id=self.run_id,
            seed=self.seed,
            kills=self.kills,
            params=self.params,
            steps=tuple(rows),
            cases=tuple(cases),
            nondeterministic=tuple(sorted(set(ref.sizes) | ref.unstable)),
            hazards=tuple(hazards),
            http=_http_table(ref.http[0], self.sent_by_case),
            reproduce=reproduce,
            only_steps=self.only,
        )


def _kill_of(record: Mapping[str, object]) -> Kill:
    step = str(record.get("step", SETUP))
    if "call" in record:
        return Kill(step=step, at=f"os.{record['call']} #{record.get('n')}")
    return Kill(step=step, at=f"{record.get('after')} s")


def _kills_explaining(step: str, kills: Sequence[Kill], order: Sequence[str]) -> int:
    """Kills that can make ``step`` start again: those in it, and those between the marker
    of the step before it and its start (counted in the step before, or - in a resume that
    skipped the steps before it - in the set-up), where its start may already be recorded."""
    index = order.index(step) if step in order else -1
    before = order[index - 1] if index > 0 else SETUP
    return sum(1 for kill in kills if kill.step in (step, before, SETUP))


def _effects(
    sent: Iterable[Mapping[str, str | None]],
) -> dict[tuple[str, str, str], Counter[str | None]]:
    """Requests grouped by (step, method, URL), counted by Idempotency-Key."""
    grouped: dict[tuple[str, str, str], Counter[str | None]] = {}
    for request in sent:
        effect = (str(request["step"]), str(request["method"]), str(request["url"]))
        grouped.setdefault(effect, Counter())[request.get("key")] += 1
    return grouped


def _hazards(clean: Sequence[Mapping[str, str | None]]) -> list[Breakage]:
    found = []
    for (step, method, url), keys in _effects(clean).items():
        if method in _UNSAFE_METHODS and keys[None]:
            found.append(
                Breakage(
                    kind="http-no-key",
                    step=step,
                    path=f"{method} {url}",
                    detail="sent without an Idempotency-Key: a kill between sending it and the "
                    "step's marker sends it again, and the receiver cannot tell",
                )
            )
    return found


def _http_table(
    clean: Sequence[Mapping[str, str | None]],
    sent_by_case: Sequence[Sequence[Mapping[str, str | None]]],
) -> tuple[HttpEffect, ...]:
    reference = _effects(clean)
    total: dict[tuple[str, str, str], Counter[str | None]] = {k: Counter() for k in reference}
    for sent in sent_by_case:
        for effect, keys in _effects(sent).items():
            total.setdefault(effect, Counter()).update(keys)
    return tuple(
        HttpEffect(
            step=step,
            method=method,
            url=url,
            clean_requests=sum(reference.get((step, method, url), Counter()).values()),
            by_key=tuple(total[(step, method, url)].most_common()),
        )
        for step, method, url in sorted(total)
    )


def _last_words(stderr: str) -> str:
    """The last meaningful line a child wrote on stderr (its JSON log's message, if JSON)."""
    for line in reversed(stderr.strip().splitlines()):
        text = line.strip()
        if not text:
            continue
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            record = json.loads(text)
            message = str(record["message"])
            error = record.get("error")
            return f"{message} ({error})" if error and str(error) not in message else message
        return text.removeprefix("stalwart: ")
    return ""


def _absolute_target(target: str) -> str:
    """``TARGET`` as the chaos children (which run in scratch directories) can find it."""
    spec, colon, attribute = target.partition(":")
    if spec.endswith(".py") or "/" in spec or Path(spec).is_file():
        return str(Path(spec).resolve()) + colon + attribute
    return target


def _child_environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_VARIABLES)}
    env.update(extra or {})
    here = os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


def run_chaos(
    target: str,
    *,
    kills: int = 20,
    seed: int = 0,
    run_id: str = "chaos",
    params: Sequence[str] = (),
    steps: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    timeout: float = 300.0,
    moments: float = 0.25,
    progress: Callable[[ChaosCase, int], None] | None = None,
) -> ChaosReport:
    """Crash-test the pipeline ``target`` (``path/to/file.py[:name]`` or ``module[:name]``).

    ``kills`` cases, each killed once (and its resumes now and then) and resumed until it
    finishes; ``seed`` makes the plans reproducible; ``params`` (``"KEY=VALUE"``) are passed
    as ``--param``; ``steps`` limits the file-system-call kills to those steps; ``env`` adds
    variables for the pipeline's processes (``SLACK_WEBHOOK_URL`` and ``STALWART_*`` of this
    process are never passed on); ``timeout`` bounds each process (seconds); ``moments`` is
    the share of kills at a random moment rather than at a file-system call; ``progress`` is
    called after each case with the case and the number of cases.

    Raises ``UsageError`` for a bad argument or a pipeline that cannot be loaded, and
    ``ChaosError`` when a clean run of the pipeline does not succeed.
    """
    if kills < 0:
        raise UsageError(f"--kills must be 0 or more, not {kills}")
    if not 0.0 <= moments <= 1.0:
        raise UsageError(f"moments must be between 0 and 1, not {moments}")
    from ._records import validate_name  # noqa: PLC0415

    validate_name(run_id, "run ID")
    for param in params:
        key, eq, _value = param.partition("=")
        if not eq or not key:
            raise UsageError(f"--param {param!r}: expected KEY=VALUE")
    work = Path(tempfile.mkdtemp(prefix="stalwart-chaos-"))
    engine = _Chaos(
        target,
        kills=kills,
        seed=seed,
        run_id=run_id,
        params=params,
        steps=steps,
        env=env,
        python=python or sys.executable,
        timeout=timeout,
        moments=moments,
        scratch=work,
    )
    try:
        return engine.run(progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
