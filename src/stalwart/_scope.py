"""The running step, as seen from inside it: what retries count into, and whom they tell."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._events import Event
    from ._pipeline import Pipeline
    from ._retry import RetryPolicy

__all__ = ["LazyDeadLetters", "StepScope", "current_scope"]


class StepScope:
    """Counters and identity of one run of one step. Thread-safe counters."""

    __slots__ = (
        "_key_counts",
        "_lock",
        "attempts",
        "dead_letter",
        "emit",
        "pipeline",
        "retries",
        "retry_policy",
        "run_id",
        "step",
    )

    def __init__(
        self,
        *,
        pipeline: str,
        run_id: str,
        step: str,
        emit: Callable[[Event], None],
        retry_policy: RetryPolicy | None = None,
        dead_letter: Any = None,
    ) -> None:
        self.pipeline = pipeline
        self.run_id = run_id
        self.step = step
        self.emit = emit
        self.retry_policy = retry_policy
        self.dead_letter = dead_letter
        """Callable writing a dead-letter envelope for this step (set by the runner)."""
        self.attempts = 0
        self.retries = 0
        self._lock = threading.Lock()
        self._key_counts: dict[tuple[str, str, str], int] = {}

    def count_attempt(self) -> None:
        with self._lock:
            self.attempts += 1

    def count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def idempotency_key(self, method: str, path: str, body_sha256: str) -> str:
        """The key of the n-th identical (method, path, body) request of this step run.

        Derived only from (pipeline, run_id, step, method, path, body sha256, n): the same on
        every retry, on every re-run of the step and on replay; never from host or pid.
        """
        identity = (method.upper(), path, body_sha256)
        with self._lock:
            n = self._key_counts.get(identity, 0) + 1
            self._key_counts[identity] = n
        return derive_idempotency_key(
            self.pipeline, self.run_id, self.step, method, path, body_sha256, n
        )


def derive_idempotency_key(  # noqa: PLR0917 - the key's inputs, in the documented order
    pipeline: str, run_id: str, step: str, method: str, path: str, body_sha256: str, n: int
) -> str:
    parts = ["stalwart-idempotency-v1", pipeline, run_id, step, method.upper(), path, body_sha256]
    material = "\x1f".join([*parts, str(n)])
    import hashlib  # noqa: PLC0415 - only steps that POST pay for loading OpenSSL

    return "stw1-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:40]


#: The step running in this context (set by the runner), so ``@retry`` inside a step is
#: counted in that step's marker and metrics.
current_scope: contextvars.ContextVar[StepScope | None] = contextvars.ContextVar(
    "stalwart_step_scope", default=None
)


class LazyDeadLetters:
    """The step's dead-letter writer, built (and ``_deadletter`` imported) on first use."""

    __slots__ = ("_emit", "_pipeline", "_run_id", "_step", "_writer")

    def __init__(
        self, pipeline: Pipeline, run_id: str, step: str, emit: Callable[[Event], None]
    ) -> None:
        self._pipeline = pipeline
        self._run_id = run_id
        self._step = step
        self._emit = emit
        self._writer: Any = None

    def _get(self) -> Any:
        if self._writer is None:
            from ._deadletter import StepDeadLetters  # noqa: PLC0415

            self._writer = StepDeadLetters(
                self._pipeline.deadletters, run_id=self._run_id, step=self._step, emit=self._emit
            )
        return self._writer

    def keep_request(self, **kwargs: Any) -> str:
        return str(self._get().keep_request(**kwargs))

    def keep_payload(self, payload: object, *, reason: str) -> str:
        return str(self._get().keep_payload(payload, reason=reason))
