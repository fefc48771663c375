"""Exponential backoff with full jitter, bounded in attempts and in total time, on tenacity.

A call that succeeds the first time costs one ``try``: the tenacity machinery is entered only
after a first transient failure, and the first failure is handed to it as attempt 1.

Retries live at one layer. An exception that a retry loop already gave up on (its attempts
spent, or its deadline reached) is marked, and no outer retry loop retries it again, so
attempts never multiply when a retried function calls a retried HTTP client.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import _clock
from ._classify import is_transient, retry_reason
from ._errors import Permanent, UsageError
from ._policy import RetryPolicy
from ._scope import StepScope, current_scope

if TYPE_CHECKING:
    import tenacity

__all__ = [
    "RetryPolicy",
    "RetryStats",
    "call_with_retries",
    "gave_up_after",
    "is_transient",
    "retry",
]

log = logging.getLogger("stalwart.retry")

P = ParamSpec("P")
T = TypeVar("T")


class _GaveUp:
    """The exceptions a retry loop gave up on, with how many attempts it made: an outer loop
    must not retry them again, and a step's failure says how many attempts were made.

    Exceptions cannot be weakly referenced and must not carry attributes stuck on them, so
    the ledger holds the last few strongly, by identity; it is bounded, so it never grows.
    """

    _SIZE = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[BaseException, int]] = {}

    def add(self, exc: BaseException, attempts: int) -> None:
        with self._lock:
            self._seen.pop(id(exc), None)
            self._seen[id(exc)] = (exc, attempts)
            while len(self._seen) > self._SIZE:
                del self._seen[next(iter(self._seen))]

    def attempts(self, exc: BaseException) -> int | None:
        with self._lock:
            found = self._seen.get(id(exc))
        return found[1] if found is not None and found[0] is exc else None


_gave_up = _GaveUp()


def gave_up_after(exc: BaseException) -> int | None:
    """How many attempts a retry loop made before giving up on ``exc`` (``None`` if no retry
    loop gave up on it)."""
    return _gave_up.attempts(exc)


def _retry_after_attribute(exc: BaseException) -> float | None:
    """The default ``retry_after``: an exception's own ``retry_after`` seconds, if any."""
    value: object = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(slots=True)
class RetryStats:
    """What one call with retries did: filled in as it goes, read after it returns or raises."""

    attempts: int = 0
    waits: float = 0.0
    """The sum of the waits (slept, or recorded under ``no_wait()``)."""
    stop_reason: str = ""
    """Empty while retrying or after a success; once given up: ``"attempts"`` (all spent),
    ``"deadline"`` (the next wait would cross it) or ``"permanent"`` (not retryable)."""
    elapsed: float = 0.0
    """Seconds from the first attempt until the call returned or raised."""
    retry_after: float | None = None
    """The Retry-After the last failure asked for, if any."""
    next_wait: float = 0.0
    """The last wait planned (the backoff draw, or a longer Retry-After)."""


class _Loop:
    """The bookkeeping of one call with retries, shared by the sync and async paths."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        operation: str,
        classify: Callable[[BaseException], bool],
        retry_after: Callable[[BaseException], float | None],
        describe: Callable[[BaseException], str],
        stats: RetryStats | None,
        logger: logging.Logger,
        rng: random.Random | None,
        start: float | None = None,
        scope: StepScope | None = None,
        stacked: bool = False,
    ) -> None:
        self.stacked = stacked
        self.policy = policy
        self.operation = operation
        self.classify = classify
        self.retry_after = retry_after
        self.describe = describe
        self.stats = stats if stats is not None else RetryStats()
        self.stats.attempts, self.stats.waits, self.stats.elapsed = 0, 0.0, 0.0
        self.stats.stop_reason, self.stats.retry_after, self.stats.next_wait = "", None, 0.0
        self.logger = logger
        self.rng = rng
        self.scope: StepScope | None = scope if start is not None else current_scope.get()
        self.start = _clock.monotonic() if start is None else start
        self.pending: BaseException | None = None

    def retryable(self, exc: BaseException) -> bool:
        """Transient by the classifier, not ``Permanent``, not given up on by an inner loop."""
        if not isinstance(exc, Exception) or isinstance(exc, Permanent):
            return False
        return (self.stacked or _gave_up.attempts(exc) is None) and self.classify(exc)

    def begin(self) -> None:
        self.stats.attempts += 1
        if self.scope is not None:
            self.scope.count_attempt()

    def first_failed(self, exc: Exception) -> bool:
        """Whether to hand the first failure to tenacity (else the caller re-raises it)."""
        if not self.retryable(exc):
            self.stats.stop_reason = "permanent"
        elif self.policy.attempts <= 1:
            self.stats.stop_reason = "attempts"
        else:
            self.pending = exc
            return True
        return False

    def replay_first(self) -> None:
        """Raise the first failure again, as tenacity's attempt 1 (once)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            raise pending

    def finish(self, exc: BaseException | None) -> None:
        self.stats.elapsed = _clock.monotonic() - self.start
        if exc is None:
            return
        if not self.stats.stop_reason:
            self.stats.stop_reason = "permanent" if not self.retryable(exc) else "attempts"
        if self.stats.stop_reason == "deadline" or (
            self.stats.stop_reason == "attempts" and self.stats.attempts > 1
        ):
            _gave_up.add(exc, self.stats.attempts)

    # -- tenacity hooks ----------------------------------------------------------------------

    def _wait(self, state: tenacity.RetryCallState) -> float:
        planned = self.policy.wait(state.attempt_number, self.rng)
        exc = state.outcome.exception() if state.outcome else None
        asked = self.retry_after(exc) if exc is not None else None
        self.stats.retry_after = asked
        self.stats.next_wait = max(planned, asked) if asked is not None else planned
        return self.stats.next_wait

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if state.attempt_number >= self.policy.attempts:
            self.stats.stop_reason = "attempts"
            self._give_up(exc, state, "no attempts left")
            return True
        elapsed = _clock.monotonic() - self.start
        left = max(0.0, self.policy.deadline - elapsed)
        # `>=` when no time is left: a zero wait (initial=0, maximum=0) must not retry forever.
        if state.upcoming_sleep > left or left <= 0.0:
            self.stats.stop_reason = "deadline"
            self._give_up(
                exc,
                state,
                f"the next wait ({state.upcoming_sleep:.1f} s"
                + (", Retry-After" if self.stats.retry_after == state.upcoming_sleep else "")
                + f") would cross the {self.policy.deadline:g} s retry deadline "
                f"({left:.1f} s left)",
            )
            return True
        return False

    def _give_up(self, exc: BaseException | None, state: tenacity.RetryCallState, why: str) -> None:
        self.logger.warning(
            "%s%s -> %s (attempt %d/%d): %s, giving up",
            self._prefix(),
            self.operation,
            self.describe(exc) if exc is not None else "failed",
            state.attempt_number,
            self.policy.attempts,
            why,
            extra={
                "operation": self.operation,
                "retry_attempt": state.attempt_number,
                "max_attempts": self.policy.attempts,
                "stop_reason": self.stats.stop_reason,
            },
        )

    def _prefix(self) -> str:
        return f"{self.scope.step}: " if self.scope is not None else ""

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.upcoming_sleep
        self.stats.waits += wait
        reason = retry_reason(exc) if exc is not None else "transient"
        self.logger.warning(
            "%s%s -> %s (attempt %d/%d), retrying in %.1f s",
            self._prefix(),
            self.operation,
            self.describe(exc) if exc is not None else "failed",
            state.attempt_number,
            self.policy.attempts,
            wait,
            extra={
                "operation": self.operation,
                "retry_attempt": state.attempt_number,
                "max_attempts": self.policy.attempts,
                "wait_s": round(wait, 3),
                "reason": reason,
            },
        )
        scope = self.scope
        if scope is not None:
            scope.count_retry()
            if scope.emit:  # no sinks: no event built, nor the records imported
                from .instrumentation._events import RetryScheduled  # noqa: PLC0415

                scope.emit(
                    RetryScheduled(
                        pipeline=scope.pipeline,
                        run_id=scope.run_id,
                        step=scope.step,
                        operation=self.operation,
                        reason=reason,
                        attempt=state.attempt_number,
                        attempts=self.policy.attempts,
                        wait_s=wait,
                    )
                )

    def _options(self) -> dict[str, Any]:
        import tenacity  # noqa: PLC0415 - loaded on the first failure, not at import

        return {
            "stop": self._stop,
            "wait": self._wait,
            "retry": tenacity.retry_if_exception(self.retryable),
            "before_sleep": self._before_sleep,
            "reraise": True,
        }

    def retrying(self) -> tenacity.Retrying:
        import tenacity  # noqa: PLC0415

        return tenacity.Retrying(sleep=_clock.sleep, **self._options())

    def async_retrying(self) -> tenacity.AsyncRetrying:
        import tenacity  # noqa: PLC0415

        return tenacity.AsyncRetrying(sleep=_clock.async_sleep, **self._options())


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    operation: str,
    classify: Callable[[BaseException], bool] = is_transient,
    retry_after: Callable[[BaseException], float | None] = _retry_after_attribute,
    describe: Callable[[BaseException], str] = _describe,
    stats: RetryStats | None = None,
    logger: logging.Logger = log,
    rng: random.Random | None = None,
    stacked: bool = False,
) -> T:
    """Call ``fn`` and retry it under ``policy`` while ``classify`` says the failure is
    transient (``Permanent`` and exceptions an inner retry loop gave up on never are, unless
    ``stacked``: a step's own ``retry=``, which the user asked for on top of the HTTP one).
    ``retry_after(exc)`` may ask for a longer wait, never a shorter one. Returns ``fn``'s
    result or raises its last exception unchanged; ``stats`` says what happened."""
    # Fast path: a call that succeeds first time pays for a clock read and a try, no more.
    start = _clock.monotonic()
    scope = current_scope.get()
    if scope is not None:
        scope.count_attempt()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - handed to the retry loop, which re-raises
        first = exc
    else:
        if stats is not None:
            stats.attempts, stats.waits, stats.stop_reason = 1, 0.0, ""
            stats.retry_after, stats.next_wait = None, 0.0
            stats.elapsed = _clock.monotonic() - start
        return result
    loop = _Loop(
        policy,
        operation=operation,
        classify=classify,
        retry_after=retry_after,
        describe=describe,
        stats=stats,
        logger=logger,
        rng=rng,
        start=start,
        scope=scope,
        stacked=stacked,
    )
    loop.stats.attempts = 1
    if not loop.first_failed(first):
        loop.finish(first)
        raise first

    def attempt() -> T:
        loop.replay_first()
        loop.begin()
        return fn()

    try:
        result = loop.retrying()(attempt)
    except BaseException as exc:
        loop.finish(exc)
        raise
    loop.finish(None)
    return result


async def acall_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    operation: str,
    classify: Callable[[BaseException], bool] = is_transient,
    retry_after: Callable[[BaseException], float | None] = _retry_after_attribute,
    describe: Callable[[BaseException], str] = _describe,
    stats: RetryStats | None = None,
    logger: logging.Logger = log,
    rng: random.Random | None = None,
) -> T:
    """``call_with_retries`` for a coroutine function; waits with ``asyncio.sleep``."""
    loop = _Loop(
        policy,
        operation=operation,
        classify=classify,
        retry_after=retry_after,
        describe=describe,
        stats=stats,
        logger=logger,
        rng=rng,
    )
    loop.begin()
    try:
        result = await fn()
    except Exception as exc:
        if not loop.first_failed(exc):
            loop.finish(exc)
            raise
    else:
        loop.finish(None)
        return result

    async def attempt() -> T:
        loop.replay_first()
        loop.begin()
        return await fn()

    try:
        result = await loop.async_retrying()(attempt)
    except BaseException as exc:
        loop.finish(exc)
        raise
    loop.finish(None)
    return result


@overload
def retry(policy: Callable[P, T]) -> Callable[P, T]: ...
@overload
def retry(
    policy: RetryPolicy | None = None, *, on: Callable[[BaseException], bool] = ...
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...
def retry(
    policy: RetryPolicy | Callable[..., Any] | None = None,
    *,
    on: Callable[[BaseException], bool] = is_transient,
) -> Any:
    """Retry the decorated function (sync or ``async``) on transient errors.

    ``@retry``, ``@retry()`` or ``@retry(RetryPolicy(attempts=3))``; ``on`` replaces the
    classifier (default ``is_transient``), but ``Permanent`` always stops. An exception's
    numeric ``retry_after`` attribute (seconds) lengthens the wait like a Retry-After header.
    The last exception is re-raised unchanged. Inside a pipeline step, each retry is counted
    in the step's marker and metrics. Put it around the unit that is safe to repeat, and only
    there: an error an inner retry loop (``HttpClient``) already gave up on is not retried.
    """
    if callable(policy) and not isinstance(policy, RetryPolicy):
        return retry()(policy)
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise UsageError(f"retry() takes a RetryPolicy, not {policy!r}")
    chosen = policy or RetryPolicy()

    def decorate(fn: Callable[P, Any]) -> Callable[P, Any]:
        operation = getattr(fn, "__qualname__", repr(fn))
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await acall_with_retries(
                    lambda: fn(*args, **kwargs), chosen, operation=operation, classify=on
                )

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return call_with_retries(
                lambda: fn(*args, **kwargs), chosen, operation=operation, classify=on
            )

        return wrapper

    return decorate
