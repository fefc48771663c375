"""What a run did, as metrics: the five metrics, the observations each event makes of them,
and ``MemoryMetrics`` (a sink for tests). The Prometheus and StatsD sinks build on this.

A sink is a ``MetricsSink`` (``handle(event)``). Every event becomes zero or more
observations of five metrics (names and meanings: ``METRICS`` and docs/observability.md):

- ``stalwart_retries_total{pipeline,step,reason}``: +1 per ``RetryScheduled``;
- ``stalwart_step_runs_total{pipeline,step,outcome}``: +1 per step success, failure, skip or
  interruption;
- ``stalwart_step_duration_seconds{pipeline,step}``: gauge, the duration of the step's last run;
- ``stalwart_dead_letters_total{pipeline,step}``: +1 per ``DeadLettered``;
- ``stalwart_last_success_timestamp_seconds{pipeline}``: set when a run succeeds, only then;
- ``stalwart_items_total{pipeline,step,outcome}``: items of map steps that ended, by outcome
  (``done``, ``failed``, ``skipped``), from each ``ItemsFinished``.

No sink ever fails a run: one that cannot deliver logs a warning (with the traceback, never a
secret) and the run goes on. prometheus_client is needed only by the two Prometheus sinks
(``pip install 'stalwart[prometheus]'``) and is imported when one is created.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from ._events import (
    DeadLettered,
    Event,
    ItemsFinished,
    RetryScheduled,
    RunFinished,
    StepFailed,
    StepInterrupted,
    StepSkipped,
    StepSucceeded,
)

__all__ = [
    "METRICS",
    "MemoryMetrics",
    "Observation",
    "observations",
]

log = logging.getLogger("stalwart.metrics")

E = TypeVar("E")
Labels = tuple[str, ...]
State = dict[str, dict[Labels, float]]
"""Metric name -> label values (in ``Metric.labels`` order) -> value."""


@dataclass(frozen=True, slots=True)
class Metric:
    kind: Literal["counter", "gauge"]
    labels: Labels
    help: str
    statsd_name: str
    statsd_type: Literal["c", "ms", "g"]


RETRIES = "stalwart_retries_total"
STEP_RUNS = "stalwart_step_runs_total"
STEP_DURATION = "stalwart_step_duration_seconds"
DEAD_LETTERS = "stalwart_dead_letters_total"
LAST_SUCCESS = "stalwart_last_success_timestamp_seconds"
ITEMS = "stalwart_items_total"

#: The metrics, in the order they are written. Help texts never change between runs: the
#: Pushgateway refuses a push whose help differs from what another group pushed.
METRICS: Mapping[str, Metric] = {
    RETRIES: Metric(
        "counter",
        ("pipeline", "step", "reason"),
        "Retries scheduled after a transient failure (reason: status_503, timeout, connect...).",
        "retries",
        "c",
    ),
    STEP_RUNS: Metric(
        "counter",
        ("pipeline", "step", "outcome"),
        "Step runs by outcome: success, failure, skipped, interrupted.",
        "step_runs",
        "c",
    ),
    STEP_DURATION: Metric(
        "gauge",
        ("pipeline", "step"),
        "Duration in seconds of the last run of the step, whatever its outcome.",
        "step_duration",
        "ms",
    ),
    DEAD_LETTERS: Metric(
        "counter",
        ("pipeline", "step"),
        "Payloads kept as dead letters.",
        "dead_letters",
        "c",
    ),
    LAST_SUCCESS: Metric(
        "gauge",
        ("pipeline",),
        "Unix time the last successful run of the pipeline finished.",
        "last_success_timestamp",
        "g",
    ),
    ITEMS: Metric(
        "counter",
        ("pipeline", "step", "outcome"),
        "Items of map steps that ended, by outcome: done, failed, skipped.",
        "items",
        "c",
    ),
}


@dataclass(frozen=True, slots=True)
class Observation:
    """One change to one series: an increment of a counter, or a gauge's new value."""

    name: str
    labels: Labels
    value: float


def observations(event: Event) -> list[Observation]:
    """What ``event`` changes in the metrics (the same for every sink)."""
    pipeline = event.pipeline
    if isinstance(event, RetryScheduled):
        return [Observation(RETRIES, (pipeline, event.step, event.reason), 1.0)]
    if isinstance(event, DeadLettered):
        return [Observation(DEAD_LETTERS, (pipeline, event.step), 1.0)]
    if isinstance(event, StepSkipped):
        return [Observation(STEP_RUNS, (pipeline, event.step, "skipped"), 1.0)]
    if isinstance(event, StepSucceeded | StepFailed | StepInterrupted):
        outcome = {StepSucceeded: "success", StepFailed: "failure"}.get(type(event), "interrupted")
        return [
            Observation(STEP_RUNS, (pipeline, event.step, outcome), 1.0),
            Observation(STEP_DURATION, (pipeline, event.step), event.duration_s),
        ]
    if isinstance(event, ItemsFinished):
        return [
            Observation(ITEMS, (pipeline, event.step, outcome), float(count))
            for outcome, count in (
                ("done", event.done),
                ("failed", event.failed),
                ("skipped", event.skipped),
            )
            if count
        ]
    if isinstance(event, RunFinished) and event.outcome == "success":
        return [Observation(LAST_SUCCESS, (pipeline,), event.finished_at)]
    return []


class MemoryMetrics:
    """A sink that keeps every event, for tests; its counts are the Prometheus sinks'.
    Thread-safe::

        metrics = MemoryMetrics()
        Pipeline("daily", metrics=[metrics]).run()
        assert metrics.retries(step="fetch", reason="status_503") == 2
        assert metrics.step_runs("fetch", "success") == 1
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def __repr__(self) -> str:
        return f"MemoryMetrics(<{len(self.events)} events>)"

    def handle(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        """Every event received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._events)

    def events_of(self, kind: type[E]) -> list[E]:
        """The events of one type: ``metrics.events_of(RetryScheduled)``."""
        return [event for event in self.events if isinstance(event, kind)]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def retries(self, step: str | None = None, reason: str | None = None) -> int:
        """``stalwart_retries_total`` summed over the series matching the given labels."""
        return int(self._sum(RETRIES, step=step, reason=reason))

    def step_runs(self, step: str | None = None, outcome: str | None = None) -> int:
        """``stalwart_step_runs_total``; ``outcome``: success, failure, skipped, interrupted."""
        return int(self._sum(STEP_RUNS, step=step, outcome=outcome))

    def dead_letters(self, step: str | None = None) -> int:
        """``stalwart_dead_letters_total`` (of ``step``, or of every step)."""
        return int(self._sum(DEAD_LETTERS, step=step))

    def items(self, step: str | None = None, outcome: str | None = None) -> int:
        """``stalwart_items_total``; ``outcome``: done, failed, skipped."""
        return int(self._sum(ITEMS, step=step, outcome=outcome))

    def last_duration(self, step: str) -> float | None:
        """``stalwart_step_duration_seconds`` of ``step`` (``None`` if it never ran)."""
        found = self._values(STEP_DURATION, step=step)
        return found[-1] if found else None

    @property
    def last_success(self) -> float | None:
        """``stalwart_last_success_timestamp_seconds`` (``None`` before the first success)."""
        found = self._values(LAST_SUCCESS)
        return found[-1] if found else None

    def _values(self, name: str, **match: str | None) -> list[float]:
        names = METRICS[name].labels
        return [
            seen.value
            for event in self.events
            for seen in observations(event)
            if seen.name == name
            and all(
                value is None or seen.labels[names.index(k)] == value for k, value in match.items()
            )
        ]

    def _sum(self, name: str, **match: str | None) -> float:
        return math.fsum(self._values(name, **match))
