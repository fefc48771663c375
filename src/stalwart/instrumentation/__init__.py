"""Instrumentation: what happens in a run, as frozen event records, and the sinks that turn
them into metrics (Prometheus textfile, Pushgateway, StatsD) - or anything with
``handle(event)`` (``MetricsSink``)::

    from stalwart.instrumentation import PrometheusTextfile
    pipeline = stalwart.Pipeline("daily", metrics=[PrometheusTextfile("/var/lib/node/x.prom")])

Names are loaded on first use: the records and sinks cost nothing until a run has a sink.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._env import sinks_from_env as sinks_from_env
    from ._events import DeadLettered as DeadLettered
    from ._events import Event as Event
    from ._events import ItemsFinished as ItemsFinished
    from ._events import MetricsSink as MetricsSink
    from ._events import RetryScheduled as RetryScheduled
    from ._events import RunFinished as RunFinished
    from ._events import RunStarted as RunStarted
    from ._events import StepFailed as StepFailed
    from ._events import StepInterrupted as StepInterrupted
    from ._events import StepSkipped as StepSkipped
    from ._events import StepStarted as StepStarted
    from ._events import StepSucceeded as StepSucceeded
    from ._prometheus import PrometheusTextfile as PrometheusTextfile
    from ._prometheus import Pushgateway as Pushgateway
    from ._statsd import StatsD as StatsD

#: Public name -> the private module that defines it (the one table of what is exported).
_EXPORTS = {
    "DeadLettered": "_events",
    "Event": "_events",
    "ItemsFinished": "_events",
    "MetricsSink": "_events",
    "PrometheusTextfile": "_prometheus",
    "Pushgateway": "_prometheus",
    "RetryScheduled": "_events",
    "RunFinished": "_events",
    "RunStarted": "_events",
    "StatsD": "_statsd",
    "StepFailed": "_events",
    "StepInterrupted": "_events",
    "StepSkipped": "_events",
    "StepStarted": "_events",
    "StepSucceeded": "_events",
    "sinks_from_env": "_env",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - built from the table; the stub above names them


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
