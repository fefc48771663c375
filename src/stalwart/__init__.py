"""stalwart: make a batch pipeline production-ready.

Checkpoints (restart skips finished steps), atomic writes (never a half-written file),
retries with backoff (survive a flaky API), alerts (Slack, when it really fails), dead
letters (keep what could not be delivered) and metrics (Prometheus, StatsD).

Names are loaded on first use (PEP 562), so ``import stalwart`` costs next to nothing and a
script pays only for the parts it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._alerts import Alert, Alerter, LogAlerter, SlackWebhook
    from ._atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text
    from ._checkpoint import CheckpointStore
    from ._context import Context
    from ._deadletter import DeadLetterStore
    from ._errors import (
        DeadLetterError,
        HttpError,
        HttpStatusError,
        Permanent,
        ResponseFormatError,
        RunLockedError,
        StalwartError,
        Transient,
        UsageError,
    )
    from ._events import (
        DeadLettered,
        MetricsSink,
        RetryScheduled,
        RunFinished,
        RunStarted,
        StepFailed,
        StepInterrupted,
        StepSkipped,
        StepStarted,
        StepSucceeded,
    )
    from ._http import HttpClient, Response
    from ._metrics import sinks_from_env
    from ._pipeline import Pipeline
    from ._prometheus import PrometheusTextfile, Pushgateway
    from ._records import Marker
    from ._result import RunResult
    from ._retry import RetryPolicy, is_transient, retry
    from ._statsd import StatsD

_WHERE = {
    "Alert": "_alerts",
    "Alerter": "_alerts",
    "LogAlerter": "_alerts",
    "SlackWebhook": "_alerts",
    "atomic_write": "_atomic",
    "atomic_write_bytes": "_atomic",
    "atomic_write_json": "_atomic",
    "atomic_write_text": "_atomic",
    "CheckpointStore": "_checkpoint",
    "Marker": "_records",
    "DeadLetterStore": "_deadletter",
    "DeadLetterError": "_errors",
    "HttpError": "_errors",
    "HttpStatusError": "_errors",
    "Permanent": "_errors",
    "ResponseFormatError": "_errors",
    "RunLockedError": "_errors",
    "StalwartError": "_errors",
    "Transient": "_errors",
    "UsageError": "_errors",
    "MetricsSink": "_events",
    "DeadLettered": "_events",
    "RetryScheduled": "_events",
    "RunFinished": "_events",
    "RunStarted": "_events",
    "StepFailed": "_events",
    "StepInterrupted": "_events",
    "StepSkipped": "_events",
    "StepStarted": "_events",
    "StepSucceeded": "_events",
    "PrometheusTextfile": "_prometheus",
    "Pushgateway": "_prometheus",
    "StatsD": "_statsd",
    "sinks_from_env": "_metrics",
    "HttpClient": "_http",
    "Response": "_http",
    "Context": "_context",
    "Pipeline": "_pipeline",
    "RunResult": "_result",
    "RetryPolicy": "_retry",
    "is_transient": "_retry",
    "retry": "_retry",
}

__all__ = [
    "Alert",
    "Alerter",
    "CheckpointStore",
    "Context",
    "DeadLetterError",
    "DeadLetterStore",
    "DeadLettered",
    "HttpClient",
    "HttpError",
    "HttpStatusError",
    "LogAlerter",
    "Marker",
    "MetricsSink",
    "Permanent",
    "Pipeline",
    "PrometheusTextfile",
    "Pushgateway",
    "Response",
    "ResponseFormatError",
    "RetryPolicy",
    "RetryScheduled",
    "RunFinished",
    "RunLockedError",
    "RunResult",
    "RunStarted",
    "SlackWebhook",
    "StalwartError",
    "StatsD",
    "StepFailed",
    "StepInterrupted",
    "StepSkipped",
    "StepStarted",
    "StepSucceeded",
    "Transient",
    "UsageError",
    "__version__",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_transient",
    "retry",
    "sinks_from_env",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later look-ups are plain attribute reads
        return value
    if name == "testing":  # `import stalwart; stalwart.testing.no_wait()`
        return importlib.import_module(f"{__name__}.testing")
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 - ~100 ms: only when asked

        return version("stalwart")
    raise AttributeError(f"module 'stalwart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
