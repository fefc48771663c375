"""What a run tells the outside world: metric events to the sinks, and alerts that say how
to resume the run and replay what was kept. Nothing here runs on a run that succeeds without
metric sinks, beyond building an ``Emitter`` that is empty.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._events import Event
    from ._pipeline import Pipeline

__all__ = ["Emitter", "replay_command", "resume_command", "send_alert"]

log = logging.getLogger("stalwart.run")


def resume_command(pipeline: Pipeline, run_id: str) -> str:
    """The command that resumes this run, for alerts and the failure paragraph."""
    import shlex  # noqa: PLC0415 - only when a step fails

    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if pipeline.source is None and script.endswith(".py"):
        return f"python {shlex.quote(script)} --run-id {shlex.quote(run_id)}"
    target = pipeline.source or f"<file>.py:{pipeline.name}"
    return f"stalwart run {shlex.quote(target)} --run-id {shlex.quote(run_id)}"


def replay_command(resume: str, envelope_id: str) -> str:
    """``python x.py --run-id R`` -> ``python x.py deadletter replay ID``;
    ``stalwart run T --run-id R`` -> ``stalwart deadletter replay T ID``."""
    base = resume.split(" --run-id", 1)[0]
    if base.startswith("stalwart run "):
        return f"stalwart deadletter replay {base.removeprefix('stalwart run ')} {envelope_id}"
    return f"{base} deadletter replay {envelope_id}"


class Emitter:
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


def send_alert(
    pipeline: Pipeline,
    run_id: str,
    exc: BaseException,
    error: str,
    *,
    step: str,
    attempts: int,
    duration: float,
    resume: str,
    dead_letter_id: str | None,
) -> None:
    """Build the ``Alert`` for ``exc`` (``error``: its message, secrets scrubbed) and send it
    through every alerter of ``pipeline``; ``step`` is empty for a run that failed before its
    first step. Never raises for a failing alerter (``send_all`` logs it)."""
    from ._alerts import Alert, default_host, send_all  # noqa: PLC0415 - only when failing

    alert = Alert(
        pipeline=pipeline.name,
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
        send_all(pipeline.alerters, alert)
    except KeyboardInterrupt as interrupt:  # SIGTERM/Ctrl-C while alerting: the step failed,
        log.warning(  # and that (exit 1) is what the run must report, not the interrupt
            "sending the alert was interrupted (%s); it may not have been delivered",
            type(interrupt).__name__,
        )
