"""One run of a pipeline, its lock held: decide, run and record each step, in order.

For each step: read the marker (skip if it is valid and its outputs are intact), record the
start, call the step, and only after it returned - its outputs already durable, since every
``ctx`` write is atomic - write its marker atomically. A crash anywhere before the marker
means the step runs again next time. A step that raises an ``Exception`` is recorded, alerted
and re-raised; an interrupt is recorded and re-raised, never alerted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Literal

from ._atomic import lazy_path, sweep_temp_files
from ._checkpoint import CheckpointStore
from ._context import Context, Step
from ._records import Marker, StepRecord, utc_now
from ._reporting import Emitter, resume_command, send_alert
from ._scope import LazyDeadLetters, StepScope, current_scope


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
    from ._pipeline import Pipeline
    from ._result import RunResult
else:
    events = _LazyModule("stalwart._events")

__all__ = ["Terminated"]

log = logging.getLogger("stalwart.run")


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so a run stops the way Ctrl-C stops it."""


class _Run:
    """One run of a pipeline, lock held: decides, runs and records each step."""

    def __init__(
        self,
        pipeline: Pipeline,
        run_id: str,
        run_dir: str,
        emit: Emitter,
        resume_command: str | None,
    ) -> None:
        self.pipeline = pipeline
        self.name = pipeline.name
        self.run_id = run_id
        self.run_dir = run_dir
        self.emit = emit
        self._resume = resume_command
        self.store = CheckpointStore(run_dir)
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.duration_s = 0.0

    @property
    def resume(self) -> str:
        if self._resume is None:
            self._resume = resume_command(self.pipeline, self.run_id)
        return self._resume

    def _context(self, step: str, **more: Any) -> dict[str, Any]:
        return {"pipeline": self.name, "run_id": self.run_id, "step": step, **more}

    def execute(self, *, force: bool, from_step: str | None) -> None:
        started = time.monotonic()
        outcome: Literal["success", "failure", "interrupted"] = "failure"
        try:
            try:
                self._prepare(force, from_step)
            except Exception as exc:
                self.failed_before_steps(exc, time.monotonic() - started)
                raise
            for step in self.pipeline.steps:
                self._visit(step)
            outcome = "success"
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        finally:
            self.duration_s = time.monotonic() - started
            self.store.close()
            self._finish(outcome, self.duration_s)

    def result(self) -> RunResult:
        from ._result import RunResult  # noqa: PLC0415 - see _result's docstring

        return RunResult(
            pipeline=self.name,
            run_id=self.run_id,
            ran=tuple(self.ran),
            skipped=tuple(self.skipped),
            duration_s=self.duration_s,
            run_dir=lazy_path(self.run_dir),
        )

    def failed_before_steps(self, exc: Exception, duration: float) -> None:
        """The run could not start its first step (state directory, lock, sweep, clearing
        markers): log it and alert, as for a failed step - a cron job must not fail silently."""
        from ._redact import scrub_registered  # noqa: PLC0415 - only when failing

        error = scrub_registered(str(exc) or repr(exc))
        log.error(
            "run %s of %s failed before its first step: %s: %s",
            self.run_id,
            self.name,
            type(exc).__name__,
            error,
            extra={"pipeline": self.name, "run_id": self.run_id, "error": error[:500]},
        )
        send_alert(
            self.pipeline,
            self.run_id,
            exc,
            error,
            step="",
            attempts=1,
            duration=duration,
            resume=self.resume,
            dead_letter_id=None,
        )
        exc.add_note(
            f"stalwart: run {self.run_id} of {self.name} failed before its first step; "
            f"no step ran; resume with: {self.resume}"
        )

    def _prepare(self, force: bool, from_step: str | None) -> None:
        swept = sweep_temp_files(self.run_dir) + sweep_temp_files(
            os.path.join(self.pipeline._state_dir, "deadletter")  # package-internal
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
            dead_letter=LazyDeadLetters(self.pipeline, self.run_id, step.name, self.emit),
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
        self._ended(step, scope, runs, started_at, "done", finished=finished)
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

    def _ended(
        self,
        step: Step,
        scope: StepScope,
        runs: int,
        started_at: str,
        outcome: str,
        *,
        finished: str = "",
        **more: str,
    ) -> None:
        """Append how a step run ended to the run's journal (what ``status`` shows)."""
        self.store.write_record(
            step.name,
            StepRecord(
                runs=runs,
                started=started_at,
                outcome=outcome,
                finished=finished or utc_now(),
                attempts=scope.attempts,
                retries=scope.retries,
                **more,  # type: ignore[arg-type]
            ),
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
        with contextlib.suppress(Exception):  # the interrupt matters more than the record
            self._ended(step, scope, runs, started_at, "interrupted", error_type=type(exc).__name__)
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
        with contextlib.suppress(Exception):  # the step's error matters more than the record
            self._ended(
                step,
                scope,
                runs,
                started_at,
                "failed",
                error_type=type(exc).__name__,
                error=error[:2000],
                dead_letter_id=dead_letter_id or "",
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
        send_alert(
            self.pipeline,
            self.run_id,
            exc,
            error,
            step=step.name,
            attempts=int(attempts),
            duration=duration,
            resume=self.resume,
            dead_letter_id=dead_letter_id,
        )
        exc.add_note(
            f"stalwart: step {step.name} of {self.name} (run {self.run_id}) failed; "
            f"resume with: {self.resume}"
        )
