"""Exponential backoff with full jitter, bounded in attempts and in total time, on tenacity.

A call that succeeds the first time costs one ``try``: the tenacity machinery is entered only
after a first transient failure, and the first failure is handed to it as attempt 1.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import _clock
from ._errors import HttpError, Permanent, Transient, UsageError
from ._events import RetryScheduled
from ._scope import current_scope

if TYPE_CHECKING:
    import tenacity

__all__ = ["RetryPolicy", "RetryStats", "call_with_retries", "is_transient", "retry"]

log = logging.getLogger("stalwart.retry")

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry a transient failure.

    The wait before retry *n* (1-based) is drawn uniformly from
    ``[b * (1 - jitter), b]`` with ``b = min(maximum, initial * multiplier ** (n - 1))``:
    ``jitter=1.0`` is "full jitter" (AWS architecture blog), which spreads a herd of clients
    that all failed at once. The defaults give at most 5 attempts and never more than
    ``deadline`` seconds from the first attempt to the start of the last one:

    - ``attempts=5``: enough to ride out a deploy or a brief brown-out; more just hammers.
    - ``initial=0.5``, ``multiplier=2.0``, ``maximum=30.0``: waits of at most 0.5, 1, 2, 4 s.
    - ``deadline=120.0``: a Retry-After or a slow server cannot stretch a call past 2 minutes
      of retrying; a wait that would cross it is not slept, the call fails at once.
    """

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 1.0
    deadline: float = 120.0

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.attempts, int) and self.attempts >= 1):
            problems.append(f"attempts must be an integer >= 1, not {self.attempts!r}")
        for name in ("initial", "maximum", "deadline"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a finite number of seconds >= 0, not {value!r}")
        if not (isinstance(self.multiplier, int | float) and 1 <= self.multiplier < math.inf):
            problems.append(f"multiplier must be >= 1, not {self.multiplier!r}")
        if not (isinstance(self.jitter, int | float) and 0 <= self.jitter <= 1):
            problems.append(f"jitter must be between 0 and 1, not {self.jitter!r}")
        if problems:
            raise UsageError("RetryPolicy: " + "; ".join(problems))

    def backoff(self, retry_number: int) -> float:
        """The longest wait before retry ``retry_number`` (1-based), before jitter."""
        exponent = max(0, retry_number - 1)
        try:
            raw = self.initial * self.multiplier**exponent
        except OverflowError:
            raw = math.inf
        return float(min(self.maximum, raw))

    def wait(self, retry_number: int, rng: random.Random | None = None) -> float:
        """A jittered wait before retry ``retry_number`` (1-based)."""
        ceiling = self.backoff(retry_number)
        floor = ceiling * (1.0 - self.jitter)
        return (rng or random).uniform(floor, ceiling)


#: Exception types that mean "the network hiccupped": retried. httpx's are added lazily.
_TRANSIENT_BUILTINS: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)


def is_transient(exc: BaseException) -> bool:
    """Would trying again plausibly succeed?

    Transient: ``Transient``; timeouts and connection errors (built-in and httpx); HTTP 408,
    425, 429 and 5xx. Everything else is permanent: ``Permanent``, ``ValueError``, other 4xx,
    programming errors, and ``KeyboardInterrupt``/``SystemExit`` (never retried).
    """
    if isinstance(exc, Permanent):
        return False
    if isinstance(exc, Transient):
        return True
    if isinstance(exc, HttpError):
        return exc.transient
    if isinstance(exc, _TRANSIENT_BUILTINS):
        return True
    import sys  # noqa: PLC0415 - only consult httpx if the program already imported it

    httpx = sys.modules.get("httpx")
    if httpx is not None:
        if isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            return status in (408, 425, 429) or status >= 500
        return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.ProtocolError)
    return False


@dataclass(slots=True)
class RetryStats:
    """What one call with retries did: filled in as it goes, read after it returns or raises."""

    attempts: int = 0
    waits: float = 0.0
    stop_reason: str = ""
    """Empty while retrying; ``"attempts"``, ``"deadline"`` or ``"permanent"`` once given up."""
    elapsed: float = 0.0


def _reason_label(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return f"status_{status}"
    name = type(exc).__name__.lower()
    if "timeout" in name:
        return "timeout"
    if "connect" in name:
        return "connect"
    return "transient"


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    operation: str,
    classify: Callable[[BaseException], bool] = is_transient,
    retry_after: Callable[[BaseException], float | None] = lambda _exc: None,
    describe: Callable[[BaseException], str] = lambda exc: f"{type(exc).__name__}: {exc}",
    stats: RetryStats | None = None,
    logger: logging.Logger = log,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn`` and retry it under ``policy`` while ``classify`` says the failure is
    transient. ``retry_after(exc)`` may ask for a longer wait (never a shorter one). Returns
    ``fn``'s result or raises its last exception; ``stats`` says why it stopped."""
    stats = stats if stats is not None else RetryStats()
    start = _clock.monotonic()
    scope = current_scope.get()
    stats.attempts = 1
    if scope is not None:
        scope.count_attempt()
    try:
        return fn()
    except Exception as exc:
        if policy.attempts <= 1 or not classify(exc):
            stats.stop_reason = "permanent" if not classify(exc) else "attempts"
            stats.elapsed = _clock.monotonic() - start
            raise
        first: BaseException | None = exc

    def attempt() -> T:
        nonlocal first
        if first is not None:
            pending, first = first, None
            raise pending
        stats.attempts += 1
        if scope is not None:
            scope.count_attempt()
        return fn()

    retrying = _build_retrying(
        policy, operation, classify, retry_after, describe, stats, start, logger, rng
    )
    try:
        return retrying(attempt)
    except Exception as exc:
        if not stats.stop_reason:
            stats.stop_reason = "permanent" if not classify(exc) else "attempts"
        raise
    finally:
        stats.elapsed = _clock.monotonic() - start


def _build_retrying(
    policy: RetryPolicy,
    operation: str,
    classify: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None],
    describe: Callable[[BaseException], str],
    stats: RetryStats,
    start: float,
    logger: logging.Logger,
    rng: random.Random | None,
    *,
    is_async: bool = False,
) -> Any:
    import tenacity  # noqa: PLC0415 - loaded on the first failure, not at import

    def wait(state: tenacity.RetryCallState) -> float:
        planned = policy.wait(state.attempt_number, rng)
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after(exc) if exc is not None else None
        if asked is not None and asked > planned:
            planned = asked
        return planned

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.attempts:
            stats.stop_reason = "attempts"
            return True
        elapsed = _clock.monotonic() - start
        if elapsed + state.upcoming_sleep > policy.deadline:
            stats.stop_reason = "deadline"
            left = max(0.0, policy.deadline - elapsed)
            exc = state.outcome.exception() if state.outcome else None
            logger.warning(
                "%s -> %s (attempt %d/%d); the next wait (%.1f s) would cross the %.0f s "
                "retry deadline (%.1f s left): giving up now",
                operation,
                describe(exc) if exc else "failed",
                state.attempt_number,
                policy.attempts,
                state.upcoming_sleep,
                policy.deadline,
                left,
                extra={"wait_s": round(state.upcoming_sleep, 3), "attempt": state.attempt_number},
            )
            return True
        return False

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        assert exc is not None  # noqa: S101 - tenacity only sleeps after a failure
        stats.waits += state.upcoming_sleep
        scope = current_scope.get()
        logger.warning(
            "%s%s -> %s (attempt %d/%d), retrying in %.1f s",
            f"{scope.step}: " if scope else "",
            operation,
            describe(exc),
            state.attempt_number,
            policy.attempts,
            state.upcoming_sleep,
            extra={"wait_s": round(state.upcoming_sleep, 3), "attempt": state.attempt_number},
        )
        if scope is not None:
            scope.count_retry()
            scope.emit(
                RetryScheduled(
                    pipeline=scope.pipeline,
                    run_id=scope.run_id,
                    step=scope.step,
                    operation=operation,
                    reason=_reason_label(exc),
                    attempt=state.attempt_number,
                    attempts=policy.attempts,
                    wait_s=state.upcoming_sleep,
                )
            )

    cls = tenacity.AsyncRetrying if is_async else tenacity.Retrying
    return cls(
        sleep=_clock.async_sleep if is_async else _clock.sleep,
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception(classify),
        before_sleep=before_sleep,
        reraise=True,
    )


async def _acall_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    operation: str,
    classify: Callable[[BaseException], bool],
) -> T:
    stats = RetryStats(attempts=1)
    start = _clock.monotonic()
    try:
        return await fn()
    except Exception as exc:
        if policy.attempts <= 1 or not classify(exc):
            raise
        first: BaseException | None = exc

    async def attempt() -> T:
        nonlocal first
        if first is not None:
            pending, first = first, None
            raise pending
        stats.attempts += 1
        return await fn()

    retrying = _build_retrying(
        policy, operation, classify, lambda _e: None, str, stats, start, log, None, is_async=True
    )
    result: T = await retrying(attempt)
    return result


@overload
def retry(policy: Callable[P, T], /) -> Callable[P, T]: ...
@overload
def retry(
    policy: RetryPolicy | None = None, /, *, on: Callable[[BaseException], bool] = ...
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...
def retry(
    policy: RetryPolicy | Callable[..., Any] | None = None,
    /,
    *,
    on: Callable[[BaseException], bool] = is_transient,
) -> Any:
    """Retry the decorated function (sync or ``async``) on transient errors.

    ``@retry``, ``@retry()`` or ``@retry(RetryPolicy(attempts=3))``; ``on`` replaces the
    classifier (default ``is_transient``). The last exception is re-raised unchanged. Inside a
    pipeline step, each retry is counted in the step's marker and metrics.
    Put it around the unit that is safe to repeat, and only there: retry layers multiply.
    """
    if callable(policy) and not isinstance(policy, RetryPolicy):
        return retry()(policy)
    chosen = policy or RetryPolicy()

    def decorate(fn: Callable[P, Any]) -> Callable[P, Any]:
        operation = getattr(fn, "__qualname__", repr(fn))
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await _acall_with_retries(
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
