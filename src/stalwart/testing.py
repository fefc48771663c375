"""Helpers for testing pipelines: no real sleeps, a real flaky HTTP server, captured alerts.

- ``no_wait()``: retries happen, sleeps don't; the planned waits are recorded. A context
  manager, and a pytest fixture of the same name (``def test_x(no_wait): ...``).
- ``FlakyServer``: a real threaded HTTP server on loopback with a per-route script of
  replies (status, headers, body, delay, connection reset...) and a log of requests.
- ``RecordingAlerter``: keeps the alerts it receives, for assertions.
- ``MemoryMetrics``: a metrics sink that counts events in memory.
- ``chaos_check(target, kills=5, seed=0)``: crash-test a pipeline (``stalwart chaos``) and
  fail the test with the report unless every kill was survived.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from ._alerts import Alert
from ._clock import WaitRecorder, install, uninstall
from ._flaky import FlakyServer, Reply, Request
from .instrumentation._core import MemoryMetrics

if TYPE_CHECKING:
    from ._chaos import ChaosReport

__all__ = [
    "FlakyServer",
    "MemoryMetrics",
    "RecordingAlerter",
    "Reply",
    "Request",
    "WaitRecorder",
    "chaos_check",
    "no_wait",
]


@contextlib.contextmanager
def no_wait() -> Iterator[WaitRecorder]:
    """Skip every retry sleep inside the block and record the waits instead.

    The retry clock advances by each skipped wait, so deadlines behave as in real time::

        with no_wait() as waits:
            pipeline.run(run_id="t")
        assert len(waits) == 2 and waits.total <= policy.deadline

    Process-wide (every thread's retries are skipped while the block runs); nested blocks
    each record every wait. Only stalwart's own retry sleeps are skipped: a slow server or a
    request timeout still takes its real time.
    """
    recorder = WaitRecorder()
    install(recorder)
    try:
        yield recorder
    finally:
        uninstall(recorder)


class RecordingAlerter:
    """An alerter that keeps every ``Alert`` it receives (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        with self._lock:
            self.alerts.append(alert)

    @property
    def last(self) -> Alert:
        """The most recent alert (``AssertionError`` if there is none)."""
        with self._lock:
            if not self.alerts:
                raise AssertionError("no alert was sent")
            return self.alerts[-1]

    def clear(self) -> None:
        """Forget the alerts received so far."""
        with self._lock:
            self.alerts.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self.alerts)


def chaos_check(
    target: str,
    *,
    kills: int = 5,
    seed: int = 0,
    run_id: str = "chaos",
    params: Sequence[str] = (),
    steps: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    moments: float = 0.0,
) -> ChaosReport:
    """Crash-test ``target`` as ``stalwart chaos`` does; return the report, or raise
    ``AssertionError`` holding it when a kill broke something::

        def test_my_pipeline_survives_kills():
            chaos_check("pipelines/daily.py", kills=5, env={"API": server.url("")})

    ``env`` adds variables for the pipeline's processes. ``moments`` (the share of kills at a
    random moment rather than at a file-system call) is 0 by default, so that a seed always
    replays the same kills: a test that passed once passes again.
    """
    from ._chaos import run_chaos  # noqa: PLC0415 - only tests that crash-test pay for it

    report = run_chaos(
        target,
        kills=kills,
        seed=seed,
        run_id=run_id,
        params=params,
        steps=steps,
        env=env,
        moments=moments,
    )
    if not report.ok:
        raise AssertionError(report.render())
    return report
