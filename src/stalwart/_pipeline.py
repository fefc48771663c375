"""The runner: steps in declaration order, skipped when done, checkpointed when they finish.

One run of one step, in order: take the run lock (once per run), read the marker (skip if it
is valid and its outputs are intact), record the start, call the step, and only after it
returned - its outputs already durable, since every ``ctx`` write is atomic - write its
marker atomically. A crash anywhere before the marker means the step runs again next time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, overload

from ._atomic import (
    FileDigest,
    atomic_write,
    json_dumps,
    replace_bytes_exclusive,
    sweep_temp_files,
)
from ._checkpoint import (
    CheckpointStore,
    Marker,
    OutputRecord,
    RunLock,
    StepRecord,
    normalize_output_name,
    utc_now,
    validate_name,
)
from ._errors import UsageError
from ._logging import ContextAdapter
from ._scope import StepScope, current_scope


class _LazyModule:
    """A module imported on first attribute access (the event records cost ~10 ms to
    import; a run without metric sinks never needs them)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(self._name), attribute)


if TYPE_CHECKING:
    from . import _events as events
    from ._events import Event
    from ._http import HttpClient, StepHttp
    from ._retry import RetryPolicy
else:
    events = _LazyModule("stalwart._events")

__all__ = ["Context", "Pipeline", "RunResult", "Step", "Terminated", "today"]

log = logging.getLogger("stalwart.run")

StepFunction = Callable[["Context"], object]
F = TypeVar("F", bound=StepFunction)


_METRICS_VARIABLES = ("STALWART_PUSHGATEWAY", "STALWART_STATSD", "STALWART_PROM_TEXTFILE")


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so a run stops the way Ctrl-C stops it."""


def today() -> str:
    """Today's UTC date, the default run ID: ``2026-11-28``."""
    return time.strftime("%Y-%m-%d", time.gmtime())


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    fn: StepFunction
    retry: RetryPolicy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What ``Pipeline.run`` did (returned on success; failures raise)."""

    pipeline: str
    run_id: str
    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    duration_s: float
    run_dir: Path


def real_directories(base: Path, path: Path, *, mode: int = 0o700) -> None:
    """Make every directory from below ``base`` down to ``path`` exist as a real directory
    (created with ``mode``); refuse a symlink or a non-directory on the way, so nothing planted
    in the state root can redirect stalwart's writes outside it."""
    current = base
    for part in path.relative_to(base).parts:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(current, mode)
            info = os.lstat(current)
        if not stat.S_ISDIR(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
            raise UsageError(
                f"refusing to use {current}: it is {kind}; stalwart's state must be made of "
                f"real directories inside {base}"
            )


def _output_name(name: object) -> str:
    """An output name relative to the run directory; never absolute, never climbing out,
    never hidden (dot names are stalwart's: markers, lock, temp files)."""
    clean = normalize_output_name(name)
    if clean is None:
        raise UsageError(
            f"invalid output name {name!r}: use a relative path inside the run directory "
            f"with no '..' and no part starting with '.'"
        )
    return clean


class Context:
    """What a step receives: where to write, how to call HTTP, how to log, which run it is.

    Every ``write_*`` (and ``atomic_write``) is atomic and recorded as an output of the step,
    so the step's marker can check on restart that its outputs are still there.
    """

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        run_id: str,
        step: Step,
        run_dir: Path,
        scope: StepScope,
        runs: int,
    ) -> None:
        self._pipeline = pipeline
        self._step = step
        self._scope = scope
        self._outputs: dict[str, OutputRecord] = {}
        self._http: StepHttp | None = None
        self.run_id = run_id
        self.run_dir = run_dir
        self._run_dir = os.fspath(run_dir)
        self.attempt = runs
        self.log = ContextAdapter(
            logging.getLogger(f"stalwart.step.{step.name}"),
            {"pipeline": pipeline.name, "run_id": run_id, "step": step.name, "attempt": runs},
        )

    @property
    def step(self) -> str:
        return self._step.name

    @property
    def pipeline(self) -> str:
        return self._pipeline.name

    @property
    def outputs(self) -> tuple[OutputRecord, ...]:
        return tuple(self._outputs.values())

    @property
    def http(self) -> StepHttp:
        """The pipeline's ``HttpClient``, bound to this step (Idempotency-Keys, retries)."""
        if self._http is None:
            from ._http import StepHttp  # noqa: PLC0415 - httpx only when a step uses HTTP

            self._http = StepHttp(self._pipeline.http, self._scope)
        return self._http

    def path(self, name: str) -> Path:
        """Where output ``name`` lives: inside this run's directory, nowhere else."""
        return self.run_dir / _output_name(name)

    def _target(self, name: str) -> tuple[str, Path]:
        clean = _output_name(name)
        target = self.run_dir / clean
        if "/" in clean:
            real_directories(self.run_dir, target.parent, mode=0o777)
        return clean, target

    def _target_string(self, name: str) -> tuple[str, str]:
        """``_target`` on plain strings: the hot path of ``write_bytes``."""
        clean = _output_name(name)
        if "/" in clean:
            return self._target(name)[0], os.path.join(self._run_dir, clean)
        return clean, os.path.join(self._run_dir, clean)

    def _record(self, name: str, digest: FileDigest) -> None:
        self._outputs[name] = OutputRecord(name=name, size=digest.size, sha256=digest.sha256)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write ``data`` to output ``name`` atomically; returns its path."""
        clean, target = self._target_string(name)
        digest = FileDigest()
        replace_bytes_exclusive(target, data)  # the run lock makes the directory ours
        digest.update(data)
        self._record(clean, digest)
        return Path(target)

    def write_text(self, name: str, data: str, *, encoding: str = "utf-8") -> Path:
        """Write the text ``data`` to output ``name`` atomically; returns its path."""
        return self.write_bytes(name, data.encode(encoding))

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as JSON to output ``name`` atomically (serialised first: a value
        that is not JSON raises ``TypeError`` before anything is written)."""
        return self.write_bytes(name, json_dumps(data).encode("utf-8"))

    @overload
    def atomic_write(
        self, name: str, mode: Literal["w", "wt"] = ..., *, encoding: str = ...
    ) -> contextlib.AbstractContextManager[IO[str]]: ...
    @overload
    def atomic_write(
        self, name: str, mode: Literal["wb"], *, encoding: str = ...
    ) -> contextlib.AbstractContextManager[IO[bytes]]: ...
    def atomic_write(
        self, name: str, mode: str = "w", *, encoding: str = "utf-8"
    ) -> contextlib.AbstractContextManager[IO[Any]]:
        """Stream output ``name`` to a temp file, renamed into place when the block ends
        cleanly (discarded if it raises). For outputs too big to hold in memory."""
        return self._stream(name, mode, encoding)

    @contextlib.contextmanager
    def _stream(self, name: str, mode: str, encoding: str) -> Iterator[IO[Any]]:
        clean, target = self._target(name)
        digest = FileDigest()
        with atomic_write(target, mode, encoding=encoding, digest=digest) as handle:  # type: ignore[call-overload]
            yield handle
        self._record(clean, digest)

    def read_bytes(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def read_text(self, name: str, *, encoding: str = "utf-8") -> str:
        return self.path(name).read_text(encoding=encoding)

    def read_json(self, name: str) -> Any:
        """Parse output ``name`` as JSON (``ValueError`` naming the file if it is not)."""
        raw = self.read_bytes(name)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{self.path(name)} is not valid JSON: {exc}") from None

    def dead_letter(self, payload: bytes | str | Any, *, reason: str) -> str:
        """Keep ``payload`` (bytes, text or JSON-able) as a dead letter; return its id."""
        if self._scope.dead_letter is None:
            raise UsageError("dead letters are not available in this pipeline")
        envelope_id: str = self._scope.dead_letter.keep_payload(payload, reason=reason)
        return envelope_id


class Pipeline:
    """A named sequence of steps with checkpoints under ``root``.

    ``root``: ``$STALWART_ROOT`` or ``./stalwart-data``. ``http``: the ``HttpClient`` behind
    ``ctx.http``. ``alerters``: default a ``SlackWebhook`` if ``SLACK_WEBHOOK_URL`` is set;
    the log alerter is always there. ``metrics``: default the sinks named by
    ``STALWART_PUSHGATEWAY``, ``STALWART_STATSD`` and ``STALWART_PROM_TEXTFILE``.
    """

    def __init__(
        self,
        name: str,
        *,
        root: str | os.PathLike[str] | None = None,
        http: HttpClient | None = None,
        alerters: Sequence[Any] | None = None,
        metrics: Sequence[Any] | None = None,
    ) -> None:
        self.name = validate_name(name, "pipeline name")
        chosen = root if root is not None else (os.environ.get("STALWART_ROOT") or "stalwart-data")
        self.root = Path(chosen).absolute()
        self._http = http
        self._own_http = http is None
        self._guard = threading.Lock()
        self._active_runs = 0
        self._alerters = None if alerters is None else list(alerters)
        self._metrics = None if metrics is None else list(metrics)
        self.steps: list[Step] = []
        self.source: str | None = None
        """``file.py:name`` when the ``stalwart`` command loaded it (for resume hints)."""

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, root={str(self.root)!r}, steps={self.step_names})"

    # -- declaring ---------------------------------------------------------------------------

    @overload
    def step(self, fn: F, /) -> F: ...
    @overload
    def step(
        self, fn: None = None, /, *, name: str | None = None, retry: RetryPolicy | None = None
    ) -> Callable[[F], F]: ...
    def step(
        self,
        fn: StepFunction | None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Register a step (``@pipeline.step()`` or ``@pipeline.step``); steps run in the
        order they are declared. ``retry`` overrides the client's policy for this step's
        HTTP calls."""

        def register(function: StepFunction) -> StepFunction:
            step_name = validate_name(name or function.__name__, "step name")
            if step_name in self.step_names:
                raise UsageError(f"pipeline {self.name!r} already has a step {step_name!r}")
            self.steps.append(Step(step_name, function, retry))
            return function

        return register(fn) if fn is not None else register

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    # -- collaborators -----------------------------------------------------------------------

    @property
    def http(self) -> HttpClient:
        with self._guard:
            if self._http is None:
                from ._http import HttpClient  # noqa: PLC0415 - httpx only when HTTP is used

                self._http = HttpClient()
            return self._http

    @property
    def alerters(self) -> list[Any]:
        from ._alerts import LogAlerter, SlackWebhook  # noqa: PLC0415 - only when failing

        configured = self._alerters
        if configured is None:
            slack = SlackWebhook.from_env()
            configured = [slack] if slack else []
        return [LogAlerter(), *configured]

    def metric_sinks(self) -> list[Any]:
        if self._metrics is not None:
            return list(self._metrics)
        if not any(os.environ.get(name) for name in _METRICS_VARIABLES):
            return []  # the common case costs no import
        from ._metrics import sinks_from_env  # noqa: PLC0415

        return sinks_from_env()

    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    def run_dir(self, run_id: str) -> Path:
        return self.state_dir / "runs" / validate_name(run_id, "run ID")

    def checkpoints(self, run_id: str | None = None) -> CheckpointStore:
        return CheckpointStore(self.run_dir(today() if run_id is None else run_id))

    @property
    def deadletters(self) -> Any:
        from ._deadletter import DeadLetterStore  # noqa: PLC0415

        return DeadLetterStore(self.state_dir / "deadletter", pipeline=self.name)

    def _prepare_state(self, run_dir: Path) -> None:
        """Create the run's state directories (0700), refusing planted symlinks."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"the state root {self.root} is not a directory ($STALWART_ROOT?)")
        if not self.root.is_dir():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        real_directories(self.root, run_dir / ".checkpoints")
        real_directories(self.root, self.state_dir / "deadletter")
        lock = run_dir / ".lock"
        if lock.is_symlink():
            raise UsageError(f"refusing to use {lock}: it is a symbolic link")

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        *,
        run_id: str | None = None,
        force: bool = False,
        from_step: str | None = None,
        resume_command: str | None = None,
    ) -> RunResult:
        """Run the pipeline; return a ``RunResult``, or raise the failing step's exception
        (after alerting). ``force`` clears every marker of the run first; ``from_step``
        clears the markers of that step and of every step after it.

        Raises ``UsageError`` (bad run ID or step name, bad metrics setting) and
        ``RunLockedError`` (another process holds the run) before touching anything.
        """
        run_id = validate_name(run_id if run_id is not None else today(), "run ID")
        if not self.steps:
            raise UsageError(f"pipeline {self.name!r} has no steps")
        if from_step is not None:
            self._check_step(from_step)
        sinks = self.metric_sinks()
        run_dir = self.run_dir(run_id)
        self._prepare_state(run_dir)
        lock = RunLock(run_dir / ".lock")
        lock.acquire()
        with self._guard:
            self._active_runs += 1
        try:
            run = _Run(self, run_id, run_dir, _Emitter(sinks), resume_command)
            return run.execute(force=force, from_step=from_step)
        finally:
            with self._guard:  # the default client is closed by the last run that ends
                self._active_runs -= 1
                if self._own_http and self._http is not None and not self._active_runs:
                    self._http.close()
                    self._http = None
            lock.release()

    def _check_step(self, name: str) -> None:
        if name not in self.step_names:
            raise UsageError(
                f"unknown step {name!r}; the steps of {self.name!r} are: "
                + ", ".join(self.step_names)
            )

    # -- operating ---------------------------------------------------------------------------

    def reset(self, *, run_id: str | None = None, step: str | None = None) -> list[str]:
        """Clear the run's markers (all, or ``step`` and the steps after it) without running;
        return the steps whose marker was removed. Takes the run lock."""
        run_id = validate_name(run_id if run_id is not None else today(), "run ID")
        if step is not None:
            self._check_step(step)
        run_dir = self.run_dir(run_id)
        if not run_dir.is_dir():
            return []
        with RunLock(run_dir / ".lock"):
            store = CheckpointStore(run_dir)
            if step is None:
                return store.clear_all()
            return store.clear(self.step_names[self.step_names.index(step) :])

    def main(self, argv: Sequence[str] | None = None) -> NoReturn:
        """The command line: ``[run] [--run-id ID] [--force] [--step NAME]``, ``status``,
        ``reset``, ``deadletter ...``. Exits with 0, 1, 2, 75, 130 or 143."""
        from ._cli import run_cli  # noqa: PLC0415

        sys.exit(run_cli(list(sys.argv[1:] if argv is None else argv), pipeline=self))


def resume_command(pipeline: Pipeline, run_id: str) -> str:
    """The command that resumes this run, for alerts and the failure paragraph."""
    import shlex  # noqa: PLC0415 - only when a step fails

    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if pipeline.source is None and script.endswith(".py"):
        return f"python {shlex.quote(script)} --run-id {shlex.quote(run_id)}"
    target = pipeline.source or f"<file>.py:{pipeline.name}"
    return f"stalwart run {shlex.quote(target)} --run-id {shlex.quote(run_id)}"


def _replay_command(resume: str, envelope_id: str) -> str:
    """``python x.py --run-id R`` -> ``python x.py deadletter replay ID``;
    ``stalwart run T --run-id R`` -> ``stalwart deadletter replay T ID``."""
    base = resume.split(" --run-id", 1)[0]
    if base.startswith("stalwart run "):
        return f"stalwart deadletter replay {base.removeprefix('stalwart run ')} {envelope_id}"
    return f"{base} deadletter replay {envelope_id}"


class _Emitter:
    """Dispatches events to the metric sinks; a sink that raises is logged once, then ignored
    for the rest of the run."""

    def __init__(self, sinks: list[Any]) -> None:
        self._sinks = sinks
        self._broken: set[int] = set()

    def __bool__(self) -> bool:
        """False without sinks: then no event is even built (nor ``_events`` imported)."""
        return bool(self._sinks)

    def __call__(self, event: Event) -> None:
        for index, sink in enumerate(self._sinks):
            if index in self._broken:
                continue
            try:
                sink.handle(event)
            except Exception:
                self._broken.add(index)
                log.warning(
                    "metrics sink %r failed on %s; ignoring it for the rest of this run",
                    sink,
                    type(event).__name__,
                    exc_info=True,
                )


class _Run:
    """One run of a pipeline, lock held: decides, runs and records each step."""

    def __init__(
        self,
        pipeline: Pipeline,
        run_id: str,
        run_dir: Path,
        emit: _Emitter,
        resume_command: str | None,
    ) -> None:
        self.pipeline = pipeline
        self.name = pipeline.name
        self.run_id = run_id
        self.run_dir = run_dir
        self._run_dir = os.fspath(run_dir)
        self.emit = emit
        self._resume = resume_command
        self.store = CheckpointStore(run_dir)
        self.ran: list[str] = []
        self.skipped: list[str] = []

    @property
    def resume(self) -> str:
        if self._resume is None:
            self._resume = resume_command(self.pipeline, self.run_id)
        return self._resume

    def _context(self, step: str, **more: Any) -> dict[str, Any]:
        return {"pipeline": self.name, "run_id": self.run_id, "step": step, **more}

    def execute(self, *, force: bool, from_step: str | None) -> RunResult:
        started = time.monotonic()
        outcome: Literal["success", "failure", "interrupted"] = "failure"
        try:
            self._prepare(force, from_step)
            for step in self.pipeline.steps:
                self._visit(step)
            outcome = "success"
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        finally:
            duration = time.monotonic() - started
            self.store.close()
            self._finish(outcome, duration)
        return RunResult(
            pipeline=self.name,
            run_id=self.run_id,
            ran=tuple(self.ran),
            skipped=tuple(self.skipped),
            duration_s=duration,
            run_dir=self.run_dir,
        )

    def _prepare(self, force: bool, from_step: str | None) -> None:
        swept = sweep_temp_files(self.run_dir) + sweep_temp_files(
            self.pipeline.state_dir / "deadletter"
        )
        context = {"pipeline": self.name, "run_id": self.run_id}
        for leftover in swept:
            log.info("removed a temp file left by an interrupted run: %s", leftover, extra=context)
        names = self.pipeline.step_names
        if force:
            cleared = self.store.clear_all()
            log.info(
                "--force: cleared %d marker(s) of run %s", len(cleared), self.run_id, extra=context
            )
        elif from_step is not None:
            later = names[names.index(from_step) :]
            self.store.clear(later)
            log.info(
                "re-running from step %s: cleared %s",
                from_step,
                ", ".join(later),
                extra=context,
            )
        if self.emit:
            self.emit(events.RunStarted(pipeline=self.name, run_id=self.run_id, steps=tuple(names)))

    def _visit(self, step: Step) -> None:
        decision = self.store.check(step.name, run_id=self.run_id)
        context = self._context(step.name)
        if decision.done:
            log.info("step %s already done, skipping", step.name, extra=context)
            self.skipped.append(step.name)
            if self.emit:
                self.emit(
                    events.StepSkipped(pipeline=self.name, run_id=self.run_id, step=step.name)
                )
            return
        if decision.corrupt:
            log.warning("step %s: %s; running it again", step.name, decision.reason, extra=context)
        elif decision.marker is not None:
            log.info("step %s will run again: %s", step.name, decision.reason, extra=context)
        self._run_step(step)
        self.ran.append(step.name)

    def _finish(
        self, outcome: Literal["success", "failure", "interrupted"], duration: float
    ) -> None:
        failed = int(outcome == "failure")
        if self.emit:
            self.emit(
                events.RunFinished(
                    pipeline=self.name,
                    run_id=self.run_id,
                    outcome=outcome,
                    duration_s=duration,
                    ran=len(self.ran),
                    skipped=len(self.skipped),
                    failed=failed,
                    finished_at=time.time(),
                )
            )
        log.info(
            "run %s of %s: %s in %.2f s (ran %d, skipped %d, failed %d)",
            self.run_id,
            self.name,
            outcome,
            duration,
            len(self.ran),
            len(self.skipped),
            failed,
            extra={
                "pipeline": self.name,
                "run_id": self.run_id,
                "outcome": outcome,
                "duration_s": round(duration, 6),
            },
        )

    def _run_step(self, step: Step) -> None:
        previous = self.store.read_record(step.name)
        runs = previous.runs + 1
        started_at = utc_now()
        self.store.write_record(
            step.name, StepRecord(runs=runs, started=started_at, outcome="running")
        )
        scope = StepScope(
            pipeline=self.name,
            run_id=self.run_id,
            step=step.name,
            emit=self.emit,
            retry_policy=step.retry,
            dead_letter=_LazyDeadLetters(self.pipeline, self.run_id, step.name, self.emit),
        )
        ctx = Context(
            pipeline=self.pipeline,
            run_id=self.run_id,
            step=step,
            run_dir=self.run_dir,
            scope=scope,
            runs=runs,
        )
        context = self._context(step.name, attempt=runs)
        if self.emit:
            self.emit(
                events.StepStarted(
                    pipeline=self.name, run_id=self.run_id, step=step.name, runs=runs
                )
            )
        log.info("step %s started", step.name, extra=context)
        t0 = time.perf_counter()
        token = current_scope.set(scope)
        try:
            step.fn(ctx)
        except BaseException as exc:
            current_scope.reset(token)
            # An Exception fails the step (alert, exit 1); anything else - KeyboardInterrupt,
            # SIGTERM's Terminated, SystemExit - interrupts it: no alert, no marker.
            ended = self._failed if isinstance(exc, Exception) else self._interrupted
            ended(
                step,
                exc=exc,
                scope=scope,
                duration=time.perf_counter() - t0,
                runs=runs,
                started_at=started_at,
            )
            raise
        current_scope.reset(token)
        duration = time.perf_counter() - t0
        finished = utc_now()
        try:
            self.store.write_marker(
                Marker(
                    pipeline=self.name,
                    step=step.name,
                    run_id=self.run_id,
                    started=started_at,
                    finished=finished,
                    duration_s=round(duration, 6),
                    attempts=max(1, scope.attempts),  # a step with no HTTP call took one try
                    retries=scope.retries,
                    runs=runs,
                    outputs=ctx.outputs,
                )
            )
        except Exception as exc:  # a marker that cannot be written is a failed step
            self._failed(
                step, exc=exc, scope=scope, duration=duration, runs=runs, started_at=started_at
            )
            raise
        self.store.write_record(
            step.name,
            StepRecord(
                runs=runs,
                started=started_at,
                outcome="done",
                finished=finished,
                attempts=scope.attempts,
                retries=scope.retries,
            ),
        )
        if self.emit:
            self.emit(
                events.StepSucceeded(
                    pipeline=self.name,
                    run_id=self.run_id,
                    step=step.name,
                    duration_s=duration,
                    attempts=scope.attempts,
                    retries=scope.retries,
                )
            )
        log.info(
            "step %s done in %.3f s",
            step.name,
            duration,
            extra={**context, "duration_s": round(duration, 6), "retries": scope.retries},
        )

    def _interrupted(
        self,
        step: Step,
        *,
        exc: BaseException,
        scope: StepScope,
        duration: float,
        runs: int,
        started_at: str,
    ) -> None:
        signal_name = (
            "SIGTERM"
            if isinstance(exc, Terminated)
            else "SIGINT"
            if isinstance(exc, KeyboardInterrupt)
            else type(exc).__name__
        )
        with contextlib.suppress(Exception):
            self.store.write_record(
                step.name,
                StepRecord(
                    runs=runs,
                    started=started_at,
                    outcome="interrupted",
                    finished=utc_now(),
                    error_type=type(exc).__name__,
                    attempts=scope.attempts,
                    retries=scope.retries,
                ),
            )
        log.warning(
            "step %s interrupted (%s) after %.2f s: no marker written, it will run again",
            step.name,
            signal_name,
            duration,
            extra=self._context(step.name, attempt=runs),
        )
        if self.emit:
            self.emit(
                events.StepInterrupted(
                    pipeline=self.name,
                    run_id=self.run_id,
                    step=step.name,
                    duration_s=duration,
                    signal=signal_name,
                )
            )

    def _failed(
        self,
        step: Step,
        *,
        exc: BaseException,
        scope: StepScope,
        duration: float,
        runs: int,
        started_at: str,
    ) -> None:
        from ._redact import scrub_registered  # noqa: PLC0415 - only when a step fails
        from ._retry import ATTEMPTS_ATTRIBUTE  # noqa: PLC0415

        dead_letter_id = getattr(exc, "dead_letter_id", None)
        error = scrub_registered(str(exc) or repr(exc))
        attempts = getattr(exc, "attempts", None) or getattr(exc, ATTEMPTS_ATTRIBUTE, None) or 1
        with contextlib.suppress(Exception):
            self.store.write_record(
                step.name,
                StepRecord(
                    runs=runs,
                    started=started_at,
                    outcome="failed",
                    finished=utc_now(),
                    error_type=type(exc).__name__,
                    error=error[:2000],
                    attempts=scope.attempts,
                    retries=scope.retries,
                    dead_letter_id=dead_letter_id or "",
                ),
            )
        log.error(
            "step %s failed after %.2f s: %s: %s",
            step.name,
            duration,
            type(exc).__name__,
            error,
            extra=self._context(step.name, attempt=runs, error=error[:500]),
        )
        if self.emit:
            self.emit(
                events.StepFailed(
                    pipeline=self.name,
                    run_id=self.run_id,
                    step=step.name,
                    duration_s=duration,
                    attempts=scope.attempts,
                    retries=scope.retries,
                    error_type=type(exc).__name__,
                    error=error,
                    dead_letter_id=dead_letter_id,
                )
            )
        from ._alerts import Alert, default_host, send_all  # noqa: PLC0415 - only when failing

        alert = Alert(
            pipeline=self.name,
            run_id=self.run_id,
            step=step.name,
            error_type=type(exc).__name__,
            error=error,
            attempts=int(attempts),
            duration_s=duration,
            host=default_host(),
            resume_command=self.resume,
            dead_letter_id=dead_letter_id,
            replay_command=_replay_command(self.resume, dead_letter_id) if dead_letter_id else "",
        )
        send_all(self.pipeline.alerters, alert)
        exc.add_note(
            f"stalwart: step {step.name} of {self.name} (run {self.run_id}) failed; "
            f"resume with: {self.resume}"
        )


class _LazyDeadLetters:
    """The step's dead-letter writer, built (and ``_deadletter`` imported) on first use."""

    __slots__ = ("_emit", "_pipeline", "_run_id", "_step", "_writer")

    def __init__(
        self, pipeline: Pipeline, run_id: str, step: str, emit: Callable[[Event], None]
    ) -> None:
        self._pipeline = pipeline
        self._run_id = run_id
        self._step = step
        self._emit = emit
        self._writer: Any = None

    def _get(self) -> Any:
        if self._writer is None:
            from ._deadletter import StepDeadLetters  # noqa: PLC0415

            self._writer = StepDeadLetters(
                self._pipeline.deadletters, run_id=self._run_id, step=self._step, emit=self._emit
            )
        return self._writer

    def keep_request(self, **kwargs: Any) -> str:
        return str(self._get().keep_request(**kwargs))

    def keep_payload(self, payload: object, *, reason: str) -> str:
        return str(self._get().keep_payload(payload, reason=reason))
