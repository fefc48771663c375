"""The running step, as seen from inside it: what retries count into, and whom they tell."""

from __future__ import annotations

import contextvars
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    from ._policy import RetryPolicy
    from .instrumentation._events import Event

__all__ = ["DeadLetterWriter", "EventSink", "StepScope", "current_scope"]


if TYPE_CHECKING:

    class EventSink(Protocol):
        """Where a run's events go (the run's emitter): false when nobody listens, so that no
        event is even built then."""

        def __call__(self, event: Event) -> None: ...

        def __bool__(self) -> bool: ...


if TYPE_CHECKING:

    class DeadLetterWriter(Protocol):
        """Keeps what a step could not deliver (a ``DeadLetterStore``, or the runner's writer
        bound to one step); returns the envelope's id."""

        def keep_request(self, **kwargs: Any) -> str: ...

        def keep_payload(self, payload: object, *, reason: str) -> str: ...


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
        emit: EventSink,
        retry_policy: RetryPolicy | None = None,
        dead_letter: DeadLetterWriter | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.run_id = run_id
        self.step = step
        self.emit = emit
        self.retry_policy = retry_policy
        self.dead_letter = dead_letter
        """Writes this step's dead-letter envelopes (set by the runner)."""
        self.attempts = 0
        self.retries = 0
        self._lock = threading.Lock()
        self._key_counts: dict[tuple[str, str, str], int] = {}

    def new_attempt(self) -> None:
        """A retry of the whole step starts: its requests repeat the first attempt's effects,
        so they get the same Idempotency-Keys again."""
        with self._lock:
            self._key_counts.clear()

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
