"""The one place stalwart sleeps and reads the retry clock, so tests can skip the waiting.

``stalwart.testing.no_wait()`` swaps in a recorder: sleeps return at once, the planned waits are
recorded, and the clock used for retry deadlines advances by the waits that were skipped, so
deadline logic behaves exactly as it would in real time.
"""

from __future__ import annotations

import threading
import time

__all__ = ["WaitRecorder", "async_sleep", "install", "monotonic", "sleep", "uninstall"]


class WaitRecorder:
    """The waits that were planned while ``no_wait()`` was active (seconds, in order)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waits: list[float] = []

    def record(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)

    @property
    def total(self) -> float:
        """The sum of all recorded waits: the time a real run would have slept."""
        with self._lock:
            return sum(self.waits)

    def __len__(self) -> int:
        with self._lock:
            return len(self.waits)

    def __repr__(self) -> str:
        return f"WaitRecorder(waits={self.waits!r})"


_recorders: list[WaitRecorder] = []
_skipped = 0.0
_guard = threading.Lock()


def install(recorder: WaitRecorder) -> None:
    with _guard:
        _recorders.append(recorder)


def uninstall(recorder: WaitRecorder) -> None:
    global _skipped
    with _guard:
        _recorders.remove(recorder)
        if not _recorders:
            _skipped = 0.0


def monotonic() -> float:
    """``time.monotonic()``, plus the waits ``no_wait()`` skipped."""
    return time.monotonic() + _skipped


def _skip(seconds: float) -> bool:
    global _skipped
    with _guard:
        if not _recorders:
            return False
        _skipped += seconds
        recorder = _recorders[-1]
    recorder.record(seconds)
    return True


def sleep(seconds: float) -> None:
    """Sleep ``seconds``, or record them when ``no_wait()`` is active."""
    if not _skip(seconds):
        time.sleep(seconds)


async def async_sleep(seconds: float) -> None:
    """``asyncio.sleep``, or record the wait when ``no_wait()`` is active."""
    if not _skip(seconds):
        import asyncio  # noqa: PLC0415 - only async users pay for importing asyncio

        await asyncio.sleep(seconds)
