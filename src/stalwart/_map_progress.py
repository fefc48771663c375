"""How far a map step is: a live bar on a terminal (tqdm, imported only to draw one), else a
log record at most every few seconds (a JSON log gets ``done``, ``failed``, ``pending``,
``total`` and ``rate`` as fields)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["Progress"]

log = logging.getLogger("stalwart.map")

LOG_EVERY_S = 5.0


class Progress:
    """Counts of one map step as its items end; draws or logs them."""

    def __init__(
        self, *, step: str, total: int, done: int, failed: int, extra: dict[str, Any]
    ) -> None:
        self.step = step
        self.total = total
        self.done = done
        self.failed = failed
        self._extra = extra
        self._started = time.monotonic()
        self._finished_here = 0
        self._last_log = self._started
        self._bar: Any = None
        if sys.stderr.isatty() and total:
            try:
                from tqdm import tqdm  # noqa: PLC0415 - optional, drawn only on a terminal
            except ImportError:
                tqdm = None
            if tqdm is not None:
                import shutil  # noqa: PLC0415 - only to draw

                size = shutil.get_terminal_size()  # 80 x 24 if the terminal says 0 x 0
                self._bar = tqdm(
                    total=total,
                    initial=done + failed,
                    desc=f"step {step}",
                    unit="item",
                    ncols=size.columns,
                    nrows=size.lines,
                    leave=True,
                )
                self._bar.set_postfix(failed=failed)

    def add(self, *, done: int = 0, failed: int = 0) -> None:
        self.done += done
        self.failed += failed
        self._finished_here += done + failed
        if self._bar is not None:
            self._bar.update(done + failed)
            if failed:
                self._bar.set_postfix(failed=self.failed)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            self.report(now)

    def report(self, now: float | None = None) -> None:
        """One progress record: done, failed, pending of N, rate and time left."""
        now = time.monotonic() if now is None else now
        rate = self._finished_here / max(now - self._started, 1e-9)
        pending = max(0, self.total - self.done - self.failed)
        left = f", ~{pending / rate:.0f} s left" if rate > 0 and pending else ""
        log.info(
            "step %s: %d done / %d failed / %d pending of %d items (%.1f/s%s)",
            self.step,
            self.done,
            self.failed,
            pending,
            self.total,
            rate,
            left,
            extra={
                **self._extra,
                "done": self.done,
                "failed": self.failed,
                "pending": pending,
                "total": self.total,
                "rate": round(rate, 3),
            },
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
