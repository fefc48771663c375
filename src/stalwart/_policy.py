"""``RetryPolicy``: how often and how long to retry a transient failure (a frozen record,
shared by every retry loop: ``@retry``, ``HttpClient``, step retries, the Slack alerter)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._errors import UsageError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry a transient failure.

    The wait before retry *n* (1-based) is drawn uniformly from
    ``[b * (1 - jitter), b]`` with ``b = min(maximum, initial * multiplier ** (n - 1))``:
    ``jitter=1.0`` is "full jitter" (AWS architecture blog), which spreads a herd of clients
    that all failed at once. A ``Retry-After`` longer than that draw replaces it. The defaults:

    - ``attempts=5``: enough to ride out a deploy or a brief brown-out; more just hammers.
    - ``initial=0.5``, ``multiplier=2.0``: waits of at most 0.5, 1, 2, 4 s.
    - ``maximum=30.0``: no single backoff wait is longer (a Retry-After may be).
    - ``jitter=1.0``: full jitter.
    - ``deadline=120.0``: from the first attempt to the start of the last one, never more
      than 2 minutes; a wait that would cross it (a long Retry-After) is not slept and not
      cut short: the call fails at once, saying so.
    """

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 1.0
    deadline: float = 120.0

    def __post_init__(self) -> None:
        problems = []
        if not (
            isinstance(self.attempts, int)
            and not isinstance(self.attempts, bool)
            and self.attempts >= 1
        ):
            problems.append(f"attempts must be an integer >= 1, not {self.attempts!r}")
        for name in ("initial", "maximum", "deadline"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a finite number of seconds >= 0, not {value!r}")
        if not (_is_number(self.multiplier) and 1 <= self.multiplier < math.inf):
            problems.append(f"multiplier must be a finite number >= 1, not {self.multiplier!r}")
        if not (_is_number(self.jitter) and 0 <= self.jitter <= 1):
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
        return min(ceiling, (rng or random).uniform(floor, ceiling))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
