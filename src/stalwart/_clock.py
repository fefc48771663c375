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
        self._waits: list[float] = []

    def record(self, seconds: float) -> None:
        with self._lock:
            self._waits.append(seconds)

    @property
    def waits(self) -> list[float]:
        """The recorded waits, oldest first (a copy)."""
        with self._lock:
            return list(self._waits)

    @property
    def total(self) -> float:
        """The sum of all recorded waits: the time a real run would have slept."""
        with self._lock:
            return sum(self._waits)

    def clear(self) -> None:
        """Forget the waits recorded so far (to assert on one phase of a test)."""
        with self._lock:
            self._waits.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._waits)

    def __repr__(self) -> str:
        return f"WaitRecorder(waits={self.waits!r})"


class _Skipping:
    """The active recorders and the time they skipped (process-wide, thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recorders: list[WaitRecorder] = []
        self.skipped = 0.0


_state = _Skipping()


def install(recorder: WaitRecorder) -> None:
    """Start skipping sleeps; ``recorder`` (and any recorder already active) records them."""
    with _state.lock:
        _state.recorders.append(recorder)


def uninstall(recorder: WaitRecorder) -> None:
    """Stop recording into ``recorder``; sleeps are real again once no recorder is left."""
    with _state.lock:
        _state.recorders.remove(recorder)
        if not _state.recorders:
            _state.skipped = 0.0


def monotonic() -> float:
    """``time.monotonic()``, plus the waits ``no_wait()`` skipped."""
    return time.monotonic() + _state.skipped


def _skip(seconds: float) -> bool:
    with _state.lock:
        if not _state.recorders:
            return False
        _state.skipped += seconds
        recorders = list(_state.recorders)
    for recorder in recorders:  # nested no_wait() blocks each see every wait
        recorder.record(seconds)
    return True


def sleep(seconds: float) -> None:
    """Sleep ``seconds``, or record them when ``no_wait()`` is active."""
    seconds = max(0.0, seconds)
    if not _skip(seconds):
        time.sleep(seconds)


async def async_sleep(seconds: float) -> None:
    """``asyncio.sleep``, or record the wait when ``no_wait()`` is active."""
    seconds = max(0.0, seconds)
    if not _skip(seconds):
        import asyncio  # noqa: PLC0415 - only async users pay for importing asyncio

        await asyncio.sleep(seconds)
