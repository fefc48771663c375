"""One run of a pipeline, its lock held: decide, run and record each step, in order.

For each step: read the marker (skip if it is valid and its outputs are intact), record the
start, call the step, and only after it returned - its outputs already durable, since every
``ctx`` write is atomic - write its marker atomically. A crash anywhere before the marker
means the step runs again next time. A step that raises an ``Exception`` is recorded and
alerted, and the run ends with a ``Failure`` (a typed record the caller renders or raises);
an interrupt is recorded and re-raised, never alerted.

The runner gets everything it talks to from one ``RunServices`` record; it never sees the
``Pipeline`` that built it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from ._atomic import lazy_path, sweep_temp_files
from ._checkpoint import CheckpointStore
from ._context import Context, Step
from ._errors import HttpError
from ._records import Marker, StepRecord
from ._reporting import resume_command, send_alert
from ._scope import StepScope, current_scope
from ._time import utc_now

if TYPE_CHECKING:
    from ._deadletter import StepDeadLetters
    from ._result import RunResult
    from ._services import RunServices

__all__ = ["Failure", "Run", "Terminated"]

log = logging.getLogger("stalwart.run")


def _events() -> ModuleType:
    """The event records, imported only when a metric sink listens (they cost ~10 ms)."""
    from .instrumentation import _events  # noqa: PLC0415

    return _events


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so a run stops the way Ctrl-C stops it."""


class Failure(NamedTuple):
    """How a run failed: what the runner returns, and what the command line renders."""

    step: str
    """The failed step; empty if the run failed before its first step."""
    error: BaseException
    """The step's own exception (``Pipeline.run`` re-raises it)."""
    message: str
    """``str(error)`` with every known secret masked."""
    attempts: int
    """Tries of the failed operation (HTTP attempts, ``@retry`` attempts), at least 1."""
    alert_sent: bool
    """Every alerter delivered the alert."""
    dead_letter_ids: tuple[str, ...]
    """The envelopes this step kept before it failed, oldest first."""
    resume_command: str
    """The command that resumes the run."""

    @property
    def error_type(self) -> str:
        return type(self.error).__name__


class _StepDeadLetters:
    """The step's dead-letter writer, built (and ``_deadletter`` imported) on first use; it
    remembers the ids it kept, for the step's ``Failure``."""

    __slots__ = ("_emit", "_services", "_step", "_writer", "ids", "run_id")

    def __init__(self, services: RunServices, run_id: str, step: str) -> None:
        self._services = services
        self.run_id = run_id
        self._step = step
        self._writer: StepDeadLetters | None = None
        self.ids: list[str] = []

    def _get(self) -> StepDeadLetters:
        if self._writer is None:
            from ._deadletter import DeadLetterStore, StepDeadLetters  # noqa: PLC0415

            store = DeadLetterStore(self._services.deadletter_dir, pipeline=self._services.pipeline)
            self._writer = StepDeadLetters(
                store, run_id=self.run_id, step=self._step, emit=self._services.emit
            )
        return self._writer

    def keep_request(self, **kwargs: Any) -> str:
        envelope_id = self._get().keep_request(**kwargs)
        self.ids.append(envelope_id)
        return envelope_id

    def keep_payload(self, payload: object, *, reason: str) -> str:
        envelope_id = self._get().keep_payload(payload, reason=reason)
        self.ids.append(envelope_id)
        return envelope_id


class Run:
    """One run of a pipeline, lock held: decides, runs and records each step."""

    def __init__(self, services: RunServices, steps: Sequence[Step], run_id: str) -> None:
        self.services = services
        self.steps = steps
        self.name = services.pipeline
        self.run_id = run_id
        self.run_dir = services.run_dir(run_id)
        self.emit = services.emit
        self._resume: str | None = None
        self.store = CheckpointStore(self.run_dir)
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.duration_s = 0.0
        self.failure: Failure | None = None

    @property
    def resume(self) -> str:
        if self._resume is None:
            self._resume = resume_command(self.services, self.run_id)
        return self._resume

    def _context(self, step: str, **more: Any) -> dict[str, Any]:
        return {"pipeline": self.name, "run_id": self.run_id, "step": step, **more}

    def execute(self, *, force: bool, from_step: str | None) -> Failure | None:
        """Run every step that is not done, in order; return the ``Failure`` that ended the
        run, or None. An interrupt (``KeyboardInterrupt``, ``Terminated``, ``SystemExit``)
        propagates."""
        started = time.monotonic()
        outcome: Literal["success", "failure", "interrupted"] = "failure"
        try:
            try:
                self._prepare(force, from_step)
            except Exception as exc:  # noqa: BLE001 - a failure, returned as a Failure
                self.failed_before_steps(exc, time.monotonic() - started)
                return self.failure
            for step in self.steps:
                if not self._visit(step):
                    return self.failure
            outcome = "success"
        except BaseException:
            outcome = "interrupted"
            raise
        finally:
            self.duration_s = time.monotonic() - started
            self.store.close()
            self._finish(outcome, self.duration_s)
        return None

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

    def failed_before_steps(self, exc: Exception, duration: float) -> Failure:
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
        sent = send_alert(
            self.services,
            self.run_id,
            exc,
            error,
            step="",
            attempts=1,
            duration=duration,
            resume=self.resume,
            dead_letter_id=None,
        )
        self.failure = Failure("", exc, error, 1, sent, (), self.resume)
        return self.failure

    def _prepare(self, force: bool, from_step: str | None) -> None:
        swept = sweep_temp_files(self.run_dir) + sweep_temp_files(self.services.deadletter_dir)
        context = {"pipeline": self.name, "run_id": self.run_id}
        for leftover in swept:
            log.info("removed a temp file left by an interrupted run: %s", leftover, extra=context)
        names = [step.name for step in self.steps]
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
            self.emit(
                _events().RunStarted(pipeline=self.name, run_id=self.run_id, steps=tuple(names))
            )

    def _visit(self, step: Step) -> bool:
        """Skip ``step`` if it is done, else run it; False if it failed."""
        decision = self.store.check(step.name, run_id=self.run_id)
        context = self._context(step.name)
        if decision.done:
            log.info("step %s already done, skipping", step.name, extra=context)
            self.skipped.append(step.name)
            if self.emit:
                self.emit(
                    _events().StepSkipped(pipeline=self.name, run_id=self.run_id, step=step.name)
                )
            return True
        if decision.corrupt:
            log.warning("step %s: %s; running it again", step.name, decision.reason, extra=context)
        elif decision.marker is not None:
            log.info("step %s will run again: %s", step.name, decision.reason, extra=context)
        if not self._run_step(step):
            return False
        self.ran.append(step.name)
        return True

    def _finish(
        self, outcome: Literal["success", "failure", "interrupted"], duration: float
    ) -> None:
        failed = int(outcome == "failure")
        if self.emit:
            self.emit(
                _events().RunFinished(
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

    def _run_step(self, step: Step) -> bool:
        """Run ``step`` and write its marker; False if it failed (``self.failure`` says how)."""
        previous = self.store.read_record(step.name)
        runs = previous.runs + 1
        started_at = utc_now()
        self.store.write_record(
            step.name, StepRecord(runs=runs, started=started_at, outcome="running")
        )
        dead_letters = _StepDeadLetters(self.services, self.run_id, step.name)
        scope = StepScope(
            pipeline=self.name,
            run_id=self.run_id,
            step=step.name,
            emit=self.emit,
            retry_policy=step.retry,
            dead_letter=dead_letters,
        )
        ctx = Context(
            services=self.services,
            run_id=self.run_id,
            step=step,
            run_dir=self.run_dir,
            scope=scope,
            runs=runs,
        )
        context = self._context(step.name, attempt=runs)
        if self.emit:
            self.emit(
                _events().StepStarted(
                    pipeline=self.name, run_id=self.run_id, step=step.name, runs=runs
                )
            )
        log.info("step %s started", step.name, extra=context)
        t0 = time.perf_counter()
        token = current_scope.set(scope)
        try:
            step.fn(ctx)
        except Exception as exc:  # noqa: BLE001 - fails the step: recorded, alerted, run ends
            current_scope.reset(token)
            self._failed(
                step,
                exc=exc,
                scope=scope,
                dead_letters=dead_letters.ids,
                duration=time.perf_counter() - t0,
                runs=runs,
                started_at=started_at,
            )
            return False
        except BaseException as exc:  # an interrupt: recorded, never alerted, re-raised
            current_scope.reset(token)
            self._interrupted(
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
        except Exception as exc:  # noqa: BLE001 - a marker that cannot be written: failed
            self._failed(
                step,
                exc=exc,
                scope=scope,
                dead_letters=dead_letters.ids,
                duration=duration,
                runs=runs,
                started_at=started_at,
            )
            return False
        self._ended(step, scope, runs, started_at, "done", finished=finished)
        if self.emit:
            self.emit(
                _events().StepSucceeded(
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
        return True

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
                _events().StepInterrupted(
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
        exc: Exception,
        scope: StepScope,
        dead_letters: list[str],
        duration: float,
        runs: int,
        started_at: str,
    ) -> None:
        from ._redact import scrub_registered  # noqa: PLC0415 - only when a step fails
        from ._retry import gave_up_after  # noqa: PLC0415

        kept = tuple(dead_letters)
        dead_letter_id = exc.dead_letter_id if isinstance(exc, HttpError) else None
        dead_letter_id = dead_letter_id or (kept[-1] if kept else None)
        error = scrub_registered(str(exc) or repr(exc))
        attempts = exc.attempts if isinstance(exc, HttpError) else gave_up_after(exc) or 1
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
                _events().StepFailed(
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
        sent = send_alert(
            self.services,
            self.run_id,
            exc,
            error,
            step=step.name,
            attempts=attempts,
            duration=duration,
            resume=self.resume,
            dead_letter_id=dead_letter_id,
        )
        self.failure = Failure(step.name, exc, error, attempts, sent, kept, self.resume)
