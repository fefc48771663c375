"""stalwart: make a batch pipeline production-ready.

Checkpoints (restart skips finished steps), atomic writes (never a half-written file),
retries with backoff (survive a flaky API), alerts (Slack, when it really fails), dead
letters (keep what could not be delivered) and metrics (``stalwart.instrumentation``).

Names are loaded on first use (PEP 562), so ``import stalwart`` costs next to nothing and a
script pays only for the parts it touches. The layers behind them: docs/design.md.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    # The namespaces, so that `import stalwart; stalwart.testing.no_wait()` is typed too.
    from . import instrumentation as instrumentation
    from . import testing as testing
    from ._alerts import Alert as Alert
    from ._alerts import Alerter as Alerter
    from ._alerts import SlackWebhook as SlackWebhook
    from ._atomic import atomic_write as atomic_write
    from ._atomic import atomic_write_bytes as atomic_write_bytes
    from ._atomic import atomic_write_json as atomic_write_json
    from ._atomic import atomic_write_text as atomic_write_text
    from ._checkpoint import CheckpointStore as CheckpointStore
    from ._classify import is_transient as is_transient
    from ._context import Context as Context
    from ._deadletter import DeadLetterStore as DeadLetterStore
    from ._errors import DeadLetterError as DeadLetterError
    from ._errors import HttpError as HttpError
    from ._errors import HttpStatusError as HttpStatusError
    from ._errors import Permanent as Permanent
    from ._errors import ResponseFormatError as ResponseFormatError
    from ._errors import RunLockedError as RunLockedError
    from ._errors import StalwartError as StalwartError
    from ._errors import StepTimeout as StepTimeout
    from ._errors import Transient as Transient
    from ._errors import UsageError as UsageError
    from ._http import HttpClient as HttpClient
    from ._http import Response as Response
    from ._item_context import ItemContext as ItemContext
    from ._policy import RetryPolicy as RetryPolicy
    from ._records import Marker as Marker
    from ._result import RunResult as RunResult
    from ._retry import retry as retry
    from .cli import Pipeline as Pipeline

#: Public name -> the private module that defines it (the one table of what is exported;
#: the block above says the same to type checkers, and a test keeps the two equal).
_EXPORTS = {
    "Alert": "_alerts",
    "Alerter": "_alerts",
    "CheckpointStore": "_checkpoint",
    "Context": "_context",
    "DeadLetterError": "_errors",
    "DeadLetterStore": "_deadletter",
    "HttpClient": "_http",
    "HttpError": "_errors",
    "HttpStatusError": "_errors",
    "ItemContext": "_item_context",
    "Marker": "_records",
    "Permanent": "_errors",
    "Pipeline": "cli",
    "Response": "_http",
    "ResponseFormatError": "_errors",
    "RetryPolicy": "_policy",
    "RunLockedError": "_errors",
    "RunResult": "_result",
    "SlackWebhook": "_alerts",
    "StalwartError": "_errors",
    "StepTimeout": "_errors",
    "Transient": "_errors",
    "UsageError": "_errors",
    "atomic_write": "_atomic",
    "atomic_write_bytes": "_atomic",
    "atomic_write_json": "_atomic",
    "atomic_write_text": "_atomic",
    "is_transient": "_classify",
    "retry": "_retry",
}

__all__ = sorted([*_EXPORTS, "__version__"])  # noqa: PLE0605 - built from the table

_NAMESPACES = frozenset({"testing", "instrumentation", "cli"})


def _submodule(name: str) -> Any:
    """``importlib.import_module`` without loading ``importlib`` (one file less per start)."""
    full = f"{__name__}.{name}"
    __import__(full)
    return sys.modules[full]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(_submodule(module), name)
        globals()[name] = value  # later look-ups are plain attribute reads
        return value
    if name in _NAMESPACES:  # `import stalwart; stalwart.testing.no_wait()`
        return _submodule(name)
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 - ~100 ms: only when asked

        return version("stalwart")
    raise AttributeError(f"module 'stalwart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
