"""What happens in a run, as frozen records: the hook protocol for metrics and custom sinks.

A sink is anything with ``handle(event)``. stalwart calls it synchronously, in the run's
thread, for every event below; a sink that raises is logged once and otherwise ignored, so a
broken sink never fails a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "DeadLettered",
    "Event",
    "ItemsFinished",
    "MetricsSink",
    "RetryScheduled",
    "RunFinished",
    "RunStarted",
    "StepFailed",
    "StepInterrupted",
    "StepSkipped",
    "StepStarted",
    "StepSucceeded",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted:
    pipeline: str
    run_id: str
    steps: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSkipped:
    pipeline: str
    run_id: str
    step: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted:
    pipeline: str
    run_id: str
    step: str
    runs: int
    """How many times this step has started for this run ID, this time included."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSucceeded:
    pipeline: str
    run_id: str
    step: str
    duration_s: float
    attempts: int
    retries: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed:
    pipeline: str
    run_id: str
    step: str
    duration_s: float
    attempts: int
    retries: int
    error_type: str
    error: str
    dead_letter_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepInterrupted:
    pipeline: str
    run_id: str
    step: str
    duration_s: float
    signal: str
    """``"SIGINT"`` or ``"SIGTERM"``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled:
    """A call failed transiently and will be tried again after ``wait_s``."""

    pipeline: str
    run_id: str
    step: str
    operation: str
    """What is retried: ``"GET http://api/orders"`` (redacted) or a function's name."""
    reason: str
    """Bounded label: ``"status_503"``, ``"timeout"``, ``"connect"``, ``"transient"``..."""
    attempt: int
    """The attempt that just failed (1-based)."""
    attempts: int
    """The policy's maximum."""
    wait_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLettered:
    pipeline: str
    run_id: str
    step: str
    envelope_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemsFinished:
    """A map step's driver stopped (its items all ended, it failed, or it was interrupted):
    how many items ended in this process, by outcome."""

    pipeline: str
    run_id: str
    step: str
    done: int
    failed: int
    skipped: int
    """Items whose dead letter was discarded: the step goes on without them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished:
    pipeline: str
    run_id: str
    outcome: Literal["success", "failure", "interrupted"]
    duration_s: float
    ran: int
    skipped: int
    failed: int
    finished_at: float
    """Wall-clock time (``time.time()``) the run ended."""


Event: TypeAlias = (
    RunStarted
    | StepSkipped
    | StepStarted
    | StepSucceeded
    | StepFailed
    | StepInterrupted
    | RetryScheduled
    | DeadLettered
    | ItemsFinished
    | RunFinished
)


@runtime_checkable
class MetricsSink(Protocol):
    """Receives every event of a run. Must not block for long; must not raise (if it does,
    the error is logged once and the run goes on)."""

    def handle(self, event: Event) -> None: ...
