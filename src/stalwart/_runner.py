"""One run of a pipeline, its lock held: decide, run and record each step, in order.

For each step: read the marker (skip if it is valid and its outputs are intact), record the
start, call the step, and only after it returned - its outputs already durable, since every
``ctx`` write is atomic - commit it: its marker renamed into place, then its ``done`` record
made durable in the run's journal (``CheckpointStore.commit``). A crash anywhere before the
marker means the step runs again next time. A step that raises an ``Exception`` is recorded and
alerted, and the run ends with a ``Failure`` (a typed record the caller renders or raises);
an interrupt is recorded and re-raised, never alerted.

The runner gets everything it talks to from one ``RunServices`` record; it never sees the
``Pipeline`` that built it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from types import ModuleType

from ._atomic import lazy_path, sweep_temp_files
from ._checkpoint import CheckpointStore, CommitError
from ._context import Context, Step
from ._errors import HttpError
from ._invoke import call_step
from ._records import NO_PARAMS, Marker, SkipDecision, StepRecord, record_type
from ._run_summary import begin_run, end_run
from ._scope import StepScope, current_scope
from ._time import utc_now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal, NamedTuple

    from ._deadletter import DeadLetterStore, StepDeadLetters
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


if TYPE_CHECKING:

    class _FailureFields(NamedTuple):
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
        exit_code: int = 1
        """The process's exit code: 1, or the code of a ``sys.exit(code)`` inside the step."""

else:

    def _new_failure(  # noqa: PLR0917 - the fields, as namedtuple takes them
        _cls,
        step,
        error,
        message,
        attempts,
        alert_sent,
        dead_letter_ids,
        resume_command,
        exit_code=1,
    ):
        return tuple.__new__(
            _cls,
            (
                step,
                error,
                message,
                attempts,
                alert_sent,
                dead_letter_ids,
                resume_command,
                exit_code,
            ),
        )

    _FailureFields = record_type("Failure", _new_failure)


class Failure(_FailureFields):
    """How a run failed: what the runner returns, and what the command line renders."""

    __slots__ = ()

    @property
    def error_type(self) -> str:
        return type(self.error).__name__


def _deadletters(services: RunServices) -> DeadLetterStore:
    """The pipeline's dead-letter store: its directory, or its prefix on object storage."""
    if services.store is not None:
        from ._remote_state import RemoteDeadLetterStore, deadletter_key  # noqa: PLC0415

        key = deadletter_key(services.pipeline)
        return RemoteDeadLetterStore(services.store, key, pipeline=services.pipeline)
    from ._deadletter import DeadLetterStore  # noqa: PLC0415 - only when dead letters are kept

    return DeadLetterStore(services.deadletter_dir, pipeline=services.pipeline)


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
            from ._deadletter import StepDeadLetters  # noqa: PLC0415

            store = _deadletters(self._services)
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

    def __init__(
        self,
        services: RunServices,
        steps: Sequence[Step],
        run_id: str,
        params: Mapping[str, str] = NO_PARAMS,
    ) -> None:
        self.services = services
        self.params = params
        self.produced: dict[str, tuple[str, str]] = {}
        """Output name -> (the step that produced it, its sha256), for the steps visited so
        far: what ``ctx.read_*`` records as a step's inputs."""
        self.reran: set[str] = set()
        """Steps that ran in this process (their outputs may have been produced again)."""
        self.steps = steps
        self.name = services.pipeline
        self.run_id = run_id
        self.run_dir = services.run_dir(run_id)
        self.emit = services.emit
        self._resume: str | None = None
        self.store = CheckpointStore(self.run_dir)
        if services.store is not None:  # object storage: the same store, on its seam
            from ._remote_state import RemoteCheckpointStore, run_key  # noqa: PLC0415

            self.store = RemoteCheckpointStore(services.store, run_key(self.name, run_id))
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.duration_s = 0.0
        self.failure: Failure | None = None
        self._no_letters = False
        """The dead-letter directory held no envelope when a step last succeeded, and no step
        kept one since: the next step with none of its own need not list it again."""

    @property
    def resume(self) -> str:
        if self._resume is None:
            from ._reporting import resume_command  # noqa: PLC0415 - only when failing

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
        started_at = begin_run(self)  # the run's summary, for `runs`
        try:
            try:
                self._prepare(force, from_step)
            except Exception as exc:  # noqa: BLE001 - a failure, returned as a Failure
                self.failed_before_steps(exc, time.monotonic() - started)
                return self.failure
            for step in self.steps:
                if not self._visit(step):
                    return self.failure
            try:  # the "done" records still waiting for the journal's group commit
                self.store.commit_waiting()
            except CommitError as exc:  # the disk failed; those steps' markers were withdrawn
                duration = time.monotonic() - started
                last = exc.withdrawn[-1] if exc.withdrawn else ""
                self.failed_outside_steps(exc, duration, "committing its steps", step=last)
                return self.failure
            outcome = "success"
        except BaseException:
            outcome = "interrupted"
            raise
        finally:
            self.duration_s = time.monotonic() - started
            try:  # commits what waits: a second interrupt during its sync still ends the run
                self.store.close()
            finally:
                self._finish(outcome, self.duration_s)
                failure = self.failure
                end_run(
                    self,
                    started=started_at,
                    outcome=outcome,
                    failed_step=failure.step if failure else "",
                    error_type=failure.error_type if failure else "",
                    error=failure.message if failure else "",
                )
            if outcome == "success" and self.services.streak_may_be_open():
                from ._alert_hygiene import notify_recovery  # noqa: PLC0415 - a streak is rare

                notify_recovery(self.services, self.run_id, self.duration_s)
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
        return self.failed_outside_steps(exc, duration, "before its first step")

    def failed_outside_steps(
        self, exc: Exception, duration: float, when: str, *, step: str = ""
    ) -> Failure:
        """The run failed ``when`` (before its first step, or committing its steps once they
        were done: the disk failed, and ``step`` is the last one whose commit it lost): log
        it and alert, as for a failed step."""
        from ._redact import scrub_registered  # noqa: PLC0415 - only when failing

        error = scrub_registered(str(exc) or repr(exc))
        log.error(
            "run %s of %s failed %s: %s: %s",
            self.run_id,
            self.name,
            when,
            type(exc).__name__,
            error,
            extra={"pipeline": self.name, "run_id": self.run_id, "error": error[:500]},
        )
        from ._reporting import send_alert  # noqa: PLC0415 - only when failing

        sent = send_alert(
            self.services,
            self.run_id,
            exc,
            error,
            step=step,
            attempts=1,
            duration=duration,
            resume=self.resume,
            dead_letter_id=None,
        )
        self.failure = Failure(step, exc, error, 1, sent, (), self.resume)
        return self.failure

    def _prepare(self, force: bool, from_step: str | None) -> None:
        swept = []  # object storage has no temp files (its writes are single PUTs)
        if self.services.store is None:
            swept = (
                sweep_temp_files(self.run_dir)
                + sweep_temp_files(self.services.deadletter_dir)
                + sweep_temp_files(self.services.state_dir, recursive=False)  # .alert-streak.json
            )
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
        marker = decision.marker
        if decision.done and marker is not None:
            stale = self._stale(marker) if marker.inputs or marker.params or self.params else ""
            if stale:
                decision = SkipDecision(False, stale, marker)
        if decision.done and marker is not None:
            for output in marker.outputs:
                self.produced[output.name] = (step.name, output.sha256)
            rechecked = self.reran and any(i.step in self.reran for i in marker.inputs)
            log.info(
                "step %s already done, skipping%s",
                step.name,
                " (inputs unchanged)" if rechecked else "",
                extra=context,
            )
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

    def _supersede(self, step: str, *, keep: set[str], dead_letters: bool = True) -> None:
        """The step succeeded: the pending dead letters that its earlier, failed runs kept in
        this run are settled (``superseded``), so ``replay --all`` does not send them again.
        Those its successful attempt kept itself (``keep``: rejected rows...) stay pending.

        ``dead_letters``: this step kept some in this run, or ran before (``runs > 1``).
        Without them, only envelopes on disk when the run began could concern the step; so
        once a listing found none, later steps that kept none skip it (one per run)."""
        if self.services.store is None:
            if self._no_letters and not dead_letters:
                return  # nothing there at the last listing; nothing kept since
            self._no_letters = False
            try:
                names = os.listdir(self.services.deadletter_dir)
            except OSError:
                return
            if not any(name.endswith(".json") for name in names):
                self._no_letters = True
                return  # the common case: no dead letter at all, nothing imported
        elif not dead_letters:
            return  # object storage: no listing unless this step kept dead letters
        store = _deadletters(self.services)
        try:
            settled = store.supersede(run_id=self.run_id, step=step, keep=keep)
        except Exception:  # a broken envelope must not fail a step that succeeded
            log.warning("could not settle the dead letters of step %s", step, exc_info=True)
            return
        for envelope_id in settled:
            log.info(
                "dead letter %s is superseded: step %s succeeded in run %s",
                envelope_id,
                step,
                self.run_id,
                extra=self._context(step, dead_letter_id=envelope_id),
            )

    def _stale(self, marker: Marker) -> str:
        """Why a step with a valid marker must run again ("" if it need not): the run's
        parameters differ from the ones it ran with, or an output it read has changed."""
        if marker.params != self.params:
            return (
                f"the run's parameters changed ({_shown_params(marker.params)} -> "
                f"{_shown_params(self.params)})"
            )
        for read in marker.inputs:
            now = self.produced.get(read.name)
            if now is None:
                return f"its input {read.name} is no longer produced by step {read.step}"
            if now[1] != read.sha256:
                return f"its input {read.name} changed (produced again by step {now[0]})"
        return ""

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

    def _context_class(self) -> Any:
        """``Context``, or on object storage the ``RemoteContext`` bound to the store."""
        if self.services.store is None:
            return Context
        from ._remote_context import RemoteContext  # noqa: PLC0415 - object storage only

        return functools.partial(RemoteContext, store=self.services.store)

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
            retry_policy=step.http_retry,
            dead_letter=dead_letters,
        )
        context = self._context(step.name, attempt=runs)
        if self.emit:
            self.emit(
                _events().StepStarted(
                    pipeline=self.name, run_id=self.run_id, step=step.name, runs=runs
                )
            )
        log.info("step %s started", step.name, extra=context)
        self.reran.add(step.name)
        t0 = time.perf_counter()
        contexts: list[Context] = []
        kept_before = [0]  # how many dead letters earlier attempts kept

        def attempt() -> None:
            scope.new_attempt()  # the same requests get the same Idempotency-Keys again
            kept_before[0] = len(dead_letters.ids)
            ctx = self._context_class()(
                services=self.services,
                run_id=self.run_id,
                step=step,
                run_dir=self.run_dir,
                scope=scope,
                runs=runs,
                params=self.params,
                produced=self.produced,
            )
            contexts.append(ctx)  # only the last attempt's outputs are recorded
            call_step(step.fn, ctx, step=step.name, timeout=step.timeout)

        token = current_scope.set(scope)
        try:
            if step.retry is None:
                attempt()
            else:
                from ._retry import call_with_retries  # noqa: PLC0415 - only retried steps

                call_with_retries(attempt, step.retry, operation=f"step {step.name}", stacked=True)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - fails the step: alerted
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
        ctx = contexts[-1]
        current_scope.reset(token)
        duration = time.perf_counter() - t0
        finished = utc_now()
        try:  # the marker, then its "done" record, which commits it (crash-safety.md)
            self.store.commit(
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
                    inputs=ctx.inputs,
                    params=self.params,
                ),
                self._end_record(scope, runs, started_at, "done", finished=finished),
            )
        except Exception as exc:  # noqa: BLE001 - a marker that cannot be committed: failed
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
        for output in ctx.outputs:
            self.produced[output.name] = (step.name, output.sha256)
        self._supersede(
            step.name,
            keep=set(dead_letters.ids[kept_before[0] :]),
            dead_letters=bool(dead_letters.ids) or runs > 1,
        )
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
            step.name, self._end_record(scope, runs, started_at, outcome, finished=finished, **more)
        )

    @staticmethod
    def _end_record(
        scope: StepScope,
        runs: int,
        started_at: str,
        outcome: str,
        *,
        finished: str = "",
        **more: str,
    ) -> StepRecord:
        """The journal record of a step run that ended with ``outcome``."""
        return StepRecord(
            runs=runs,
            started=started_at,
            outcome=outcome,
            finished=finished or utc_now(),
            attempts=scope.attempts,
            retries=scope.retries,
            **more,  # type: ignore[arg-type]
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
        exc: Exception | SystemExit,
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
        exit_code = 1
        if isinstance(exc, SystemExit):
            exit_code = exc.code if isinstance(exc.code, int) and exc.code else 1
            error = scrub_registered(
                f"the step called sys.exit({'' if exc.code is None else repr(exc.code)}) "
                f"before it finished: the run did not finish"
            )
        else:
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
        from ._reporting import send_alert  # noqa: PLC0415 - only when failing

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
        self.failure = Failure(
            step.name, exc, error, attempts, sent, kept, self.resume, exit_code=exit_code
        )


def _shown_params(params: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "none"
