"""The one timestamp format of stalwart: UTC RFC 3339 (``2026-11-28T03:00:00.123456Z``).

Markers, journals, envelopes, lock notes and logs all write it through ``utc_text``; a
reader parses it back with ``parse_utc``. Today's run ID is its first ten characters.
"""

from __future__ import annotations

import time

__all__ = ["parse_utc", "today", "utc_now", "utc_text"]

_last_second: tuple[int, str] = (-1, "")
"""The last whole second formatted, and its text: a step's records and log lines mostly
fall in the same second, and ``gmtime``/``strftime`` are most of the cost. Replaced as one
tuple, so threads never see a second with another second's text."""


def utc_text(seconds: float, *, digits: int = 6) -> str:
    """``seconds`` since the epoch as UTC RFC 3339 with ``digits`` fractional digits (6 for
    records, 3 for log lines): ``2026-11-28T03:00:00.123456Z``."""
    global _last_second  # noqa: PLW0603 - a one-entry cache, replaced whole
    whole = int(seconds)
    fraction = int((seconds - whole) * 10**digits)
    cached, text = _last_second
    if cached != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _last_second = (whole, text)
    return f"{text}.{fraction:0{digits}d}Z"


def utc_now() -> str:
    """Now, as UTC RFC 3339 with microseconds."""
    return utc_text(time.time())


def today() -> str:
    """Today's UTC date, the default run ID: ``2026-11-28``."""
    return time.strftime("%Y-%m-%d", time.gmtime())


def parse_utc(text: str) -> float | None:
    """Seconds since the epoch from ``utc_text``'s form (any number of fractional digits,
    or none); ``None`` if ``text`` is not in that form."""
    import calendar  # noqa: PLC0415 - only readers of old timestamps (age, history) need it

    head, dot, rest = text.partition(".")
    if not text.endswith("Z"):
        return None
    head = head.removesuffix("Z")
    fraction = rest.removesuffix("Z") if dot else ""
    try:
        parsed = time.strptime(head, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    if fraction and not fraction.isdigit():
        return None
    return calendar.timegm(parsed) + (float(f"0.{fraction}") if fraction else 0.0)
