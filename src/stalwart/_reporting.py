"""What a failed run tells people: alerts that say how to resume the run and replay what
was kept. Nothing here runs on a run that succeeds."""

from __future__ import annotations

import logging
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._services import RunServices

__all__ = ["replay_command", "resume_command", "send_alert"]

log = logging.getLogger("stalwart.run")


def resume_command(services: RunServices, run_id: str) -> str:
    """The command that resumes this run, for alerts and the failure paragraph. It starts
    with ``cd`` to the directory the run was started from, so it works pasted anywhere (a
    cron job's ``$HOME`` included): a relative state root or file name means the same."""
    import shlex  # noqa: PLC0415 - only when a step fails

    here = f"cd {shlex.quote(os.getcwd())} && "
    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if services.resume_hint is None and script.endswith(".py"):
        return f"{here}python {shlex.quote(script)} --run-id {shlex.quote(run_id)}"
    target = services.resume_hint or f"<file>.py:{services.pipeline}"
    return f"{here}stalwart run {shlex.quote(target)} --run-id {shlex.quote(run_id)}"


def replay_command(resume: str, envelope_id: str) -> str:
    """``[cd D && ]python x.py --run-id R`` -> ``[cd D && ]python x.py deadletter replay ID``;
    ``[cd D && ]stalwart run T --run-id R`` -> ``[cd D && ]stalwart deadletter replay T ID``."""
    base = resume.split(" --run-id", 1)[0]
    here, sep, command = base.rpartition(" && ")
    prefix = here + sep
    if command.startswith("stalwart run "):
        target = command.removeprefix("stalwart run ")
        return f"{prefix}stalwart deadletter replay {target} {envelope_id}"
    return f"{base} deadletter replay {envelope_id}"


def send_alert(
    services: RunServices,
    run_id: str,
    exc: BaseException,
    error: str,
    *,
    step: str,
    attempts: int,
    duration: float,
    resume: str,
    dead_letter_id: str | None,
) -> bool:
    """Build the ``Alert`` for ``exc`` (``error``: its message, secrets scrubbed) and send it
    through the log alerter and every configured alerter; ``step`` is empty for a run that
    failed before its first step. Never raises for a failing alerter (``send_all`` logs it);
    returns whether every alerter delivered it."""
    from ._alert_hygiene import log_suppressed, note_failure  # noqa: PLC0415
    from ._alerts import Alert, LogAlerter, default_host, send_all  # noqa: PLC0415 - failing

    streak = note_failure(services, run_id, step, type(exc).__name__)
    if not streak.send:  # the last run's failure again: one per streak
        log_suppressed(services.pipeline, run_id, step, type(exc).__name__, streak.streak)
        return True  # delivered, at the streak's first failure
    alert = Alert(
        pipeline=services.pipeline,
        run_id=run_id,
        step=step,
        error_type=type(exc).__name__,
        error=error,
        attempts=attempts,
        duration_s=duration,
        host=default_host(),
        resume_command=resume,
        dead_letter_id=dead_letter_id,
        replay_command=replay_command(resume, dead_letter_id) if dead_letter_id else "",
    )
    try:
        return send_all([LogAlerter(), *services.alerters], alert)
    except KeyboardInterrupt as interrupt:  # SIGTERM/Ctrl-C while alerting: the step failed,
        log.warning(  # and that (exit 1) is what the run must report, not the interrupt
            "sending the alert was interrupted (%s); it may not have been delivered",
            type(interrupt).__name__,
        )
        return False
