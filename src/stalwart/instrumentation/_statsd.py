"""The StatsD sink: a few lines over UDP, DogStatsD tags; no dependency."""

from __future__ import annotations

import logging
import re
import socket
import threading
from typing import Any

from .._errors import UsageError
from ._core import METRICS, Observation, observations
from ._events import (
    Event,
    RunFinished,
)

__all__ = ["StatsD"]

log = logging.getLogger("stalwart.metrics")

_STATSD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*")
_TAG_UNSAFE = re.compile(r"[\s|,#@]")


class StatsD:
    """Sends the metrics to a StatsD or DogStatsD server over UDP, as they happen.

    ``<prefix>.retries``, ``.step_runs``, ``.dead_letters``: counters (``|c``);
    ``.step_duration``: timer in milliseconds (``|ms``); ``.last_success_timestamp``: gauge,
    Unix seconds (``|g``). Labels travel as DogStatsD tags: ``|#pipeline:daily,step:fetch``.
    One datagram per line; UDP never blocks a run, and an unresolvable host is logged once and
    skipped for the rest of the run. The socket is closed at the end of each run.
    """

    def __init__(self, host: str, port: int, *, prefix: str = "stalwart") -> None:
        if not isinstance(host, str) or not host or _TAG_UNSAFE.search(host):
            raise UsageError(f"the StatsD host must be a host name or address, not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise UsageError(f"the StatsD port must be 1-65535, not {port!r}")
        if prefix and not _STATSD_NAME.fullmatch(prefix):
            raise UsageError(
                f"the StatsD prefix must look like 'stalwart' or 'a.b', not {prefix!r}"
            )
        self.host = host.removeprefix("[").removesuffix("]")
        self.port = port
        self.prefix = prefix
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._address: Any = None
        self._down = False
        self._warned = False

    def __repr__(self) -> str:
        return f"StatsD({self.host!r}, {self.port}, prefix={self.prefix!r})"

    def handle(self, event: Event) -> None:
        lines = [self.line(seen) for seen in observations(event)]
        with self._lock:
            if lines and not self._down:
                self._send(lines)
            if isinstance(event, RunFinished):
                self._close()

    def line(self, seen: Observation) -> str:
        """``stalwart.retries:1|c|#pipeline:daily,step:fetch,reason:status_503``."""
        metric = METRICS[seen.name]
        name = f"{self.prefix}.{metric.statsd_name}" if self.prefix else metric.statsd_name
        value = seen.value * 1000.0 if metric.statsd_type == "ms" else seen.value
        number = str(int(value)) if value.is_integer() else f"{value:.3f}"
        tags = ",".join(
            f"{label}:{_TAG_UNSAFE.sub('_', label_value)}"
            for label, label_value in zip(metric.labels, seen.labels, strict=True)
        )
        return f"{name}:{number}|{metric.statsd_type}|#{tags}"

    def close(self) -> None:
        """Close the socket (reopened by the next event)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = self._address = None
        self._down = self._warned = False

    def _send(self, lines: list[str]) -> None:
        if self._socket is None:
            try:
                family, kind, proto, _, address = socket.getaddrinfo(
                    self.host, self.port, type=socket.SOCK_DGRAM
                )[0]
                sock = socket.socket(family, kind, proto)
            except OSError:
                self._down = True
                self._warn(f"cannot reach StatsD at {self.host}:{self.port}; no StatsD metrics")
                return
            sock.setblocking(False)
            self._socket, self._address = sock, address
        for text in lines:
            try:
                self._socket.sendto(text.encode("utf-8"), self._address)
            except OSError:
                self._warn(f"could not send a metric to StatsD at {self.host}:{self.port}")

    def _warn(self, message: str) -> None:
        if self._warned:
            log.debug("%s (again)", message, exc_info=True)
            return
        self._warned = True
        log.warning("%s; the run goes on (said once per run)", message, exc_info=True)


def statsd_from_setting(value: str) -> StatsD:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError("expected host:port, e.g. localhost:8125 or [::1]:8125")
    return StatsD(host, int(port))
