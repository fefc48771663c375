"""Metrics sinks: what a run did, for Prometheus (textfile, Pushgateway), StatsD or a test.

A sink is a ``MetricsSink`` (``handle(event)``, see ``_events``). Every event becomes zero or
more observations of five metrics (names and meanings: ``METRICS`` and docs/observability.md):

- ``stalwart_retries_total{pipeline,step,reason}``: +1 per ``RetryScheduled``;
- ``stalwart_step_runs_total{pipeline,step,outcome}``: +1 per step success, failure, skip or
  interruption;
- ``stalwart_step_duration_seconds{pipeline,step}``: gauge, the duration of the step's last run;
- ``stalwart_dead_letters_total{pipeline,step}``: +1 per ``DeadLettered``;
- ``stalwart_last_success_timestamp_seconds{pipeline}``: set when a run succeeds, only then.

No sink ever fails a run: one that cannot deliver logs a warning (with the traceback, never a
secret) and the run goes on. prometheus_client is needed only by the two Prometheus sinks
(``pip install 'stalwart[prometheus]'``) and is imported when one is created.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import math
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from ._atomic import atomic_write_bytes
from ._errors import UsageError
from ._events import (
    DeadLettered,
    Event,
    RetryScheduled,
    RunFinished,
    StepFailed,
    StepInterrupted,
    StepSkipped,
    StepSucceeded,
)
from ._redact import redact_url

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._events import MetricsSink

__all__ = [
    "METRICS",
    "MemoryMetrics",
    "Observation",
    "PrometheusTextfile",
    "Pushgateway",
    "StatsD",
    "observations",
    "sinks_from_env",
]

log = logging.getLogger("stalwart.metrics")

E = TypeVar("E")
Labels = tuple[str, ...]
State = dict[str, dict[Labels, float]]
"""Metric name -> label values (in ``Metric.labels`` order) -> value."""


@dataclass(frozen=True, slots=True)
class Metric:
    kind: Literal["counter", "gauge"]
    labels: Labels
    help: str
    statsd_name: str
    statsd_type: Literal["c", "ms", "g"]


RETRIES = "stalwart_retries_total"
STEP_RUNS = "stalwart_step_runs_total"
STEP_DURATION = "stalwart_step_duration_seconds"
DEAD_LETTERS = "stalwart_dead_letters_total"
LAST_SUCCESS = "stalwart_last_success_timestamp_seconds"

#: The metrics, in the order they are written. Help texts never change between runs: the
#: Pushgateway refuses a push whose help differs from what another group pushed.
METRICS: Mapping[str, Metric] = {
    RETRIES: Metric(
        "counter",
        ("pipeline", "step", "reason"),
        "Retries scheduled after a transient failure (reason: status_503, timeout, connect...).",
        "retries",
        "c",
    ),
    STEP_RUNS: Metric(
        "counter",
        ("pipeline", "step", "outcome"),
        "Step runs by outcome: success, failure, skipped, interrupted.",
        "step_runs",
        "c",
    ),
    STEP_DURATION: Metric(
        "gauge",
        ("pipeline", "step"),
        "Duration in seconds of the last run of the step, whatever its outcome.",
        "step_duration",
        "ms",
    ),
    DEAD_LETTERS: Metric(
        "counter",
        ("pipeline", "step"),
        "Payloads kept as dead letters.",
        "dead_letters",
        "c",
    ),
    LAST_SUCCESS: Metric(
        "gauge",
        ("pipeline",),
        "Unix time the last successful run of the pipeline finished.",
        "last_success_timestamp",
        "g",
    ),
}


@dataclass(frozen=True, slots=True)
class Observation:
    """One change to one series: an increment of a counter, or a gauge's new value."""

    name: str
    labels: Labels
    value: float


def observations(event: Event) -> list[Observation]:
    """What ``event`` changes in the metrics (the same for every sink)."""
    pipeline = event.pipeline
    if isinstance(event, RetryScheduled):
        return [Observation(RETRIES, (pipeline, event.step, event.reason), 1.0)]
    if isinstance(event, DeadLettered):
        return [Observation(DEAD_LETTERS, (pipeline, event.step), 1.0)]
    if isinstance(event, StepSkipped):
        return [Observation(STEP_RUNS, (pipeline, event.step, "skipped"), 1.0)]
    if isinstance(event, StepSucceeded | StepFailed | StepInterrupted):
        outcome = {StepSucceeded: "success", StepFailed: "failure"}.get(type(event), "interrupted")
        return [
            Observation(STEP_RUNS, (pipeline, event.step, outcome), 1.0),
            Observation(STEP_DURATION, (pipeline, event.step), event.duration_s),
        ]
    if isinstance(event, RunFinished) and event.outcome == "success":
        return [Observation(LAST_SUCCESS, (pipeline,), event.finished_at)]
    return []


class MemoryMetrics:
    """A sink that keeps every event, for tests; its counts are the Prometheus sinks'.
    Thread-safe::

        metrics = MemoryMetrics()
        Pipeline("daily", metrics=[metrics]).run()
        assert metrics.retries(step="fetch", reason="status_503") == 2
        assert metrics.step_runs("fetch", "success") == 1
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def __repr__(self) -> str:
        return f"MemoryMetrics(<{len(self.events)} events>)"

    def handle(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        """Every event received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._events)

    def events_of(self, kind: type[E]) -> list[E]:
        """The events of one type: ``metrics.events_of(RetryScheduled)``."""
        return [event for event in self.events if isinstance(event, kind)]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def retries(self, step: str | None = None, reason: str | None = None) -> int:
        """``stalwart_retries_total`` summed over the series matching the given labels."""
        return int(self._sum(RETRIES, step=step, reason=reason))

    def step_runs(self, step: str | None = None, outcome: str | None = None) -> int:
        """``stalwart_step_runs_total``; ``outcome``: success, failure, skipped, interrupted."""
        return int(self._sum(STEP_RUNS, step=step, outcome=outcome))

    def dead_letters(self, step: str | None = None) -> int:
        """``stalwart_dead_letters_total`` (of ``step``, or of every step)."""
        return int(self._sum(DEAD_LETTERS, step=step))

    def last_duration(self, step: str) -> float | None:
        """``stalwart_step_duration_seconds`` of ``step`` (``None`` if it never ran)."""
        found = self._values(STEP_DURATION, step=step)
        return found[-1] if found else None

    @property
    def last_success(self) -> float | None:
        """``stalwart_last_success_timestamp_seconds`` (``None`` before the first success)."""
        found = self._values(LAST_SUCCESS)
        return found[-1] if found else None

    def _values(self, name: str, **match: str | None) -> list[float]:
        names = METRICS[name].labels
        return [
            seen.value
            for event in self.events
            for seen in observations(event)
            if seen.name == name
            and all(
                value is None or seen.labels[names.index(k)] == value for k, value in match.items()
            )
        ]

    def _sum(self, name: str, **match: str | None) -> float:
        return math.fsum(self._values(name, **match))


class _Pending:
    """This run's observations per pipeline, until its ``RunFinished`` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_pipeline: dict[str, list[Observation]] = {}

    def add(self, event: Event) -> None:
        seen = observations(event)
        if seen:
            with self._lock:
                self._by_pipeline.setdefault(event.pipeline, []).extend(seen)

    def take(self, pipeline: str) -> list[Observation]:
        with self._lock:
            return self._by_pipeline.pop(pipeline, [])


def _apply(state: State, changes: list[Observation]) -> State:
    """Counters add, gauges take the new value."""
    for change in changes:
        series = state.setdefault(change.name, {})
        if METRICS[change.name].kind == "counter":
            series[change.labels] = series.get(change.labels, 0.0) + change.value
        else:
            series[change.labels] = change.value
    return state


def _parse(text: str, keep: Callable[[Mapping[str, str]], bool]) -> State:
    """Our series in Prometheus text ``text`` (other metrics are ignored); ``ValueError`` if
    it is not Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    state: State = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            metric = METRICS.get(sample.name)
            if metric is not None and keep(sample.labels):
                labels = tuple(sample.labels.get(name, "") for name in metric.labels)
                state.setdefault(sample.name, {})[labels] = float(sample.value)
    return state


def _registry(state: State) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

    class StateCollector:
        def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
            for name, metric in METRICS.items():
                if state.get(name):
                    kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
                    family = kind(name, metric.help, labels=metric.labels)
                    for labels, value in sorted(state[name].items()):
                        family.add_metric(labels, value)
                    yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector())
    return registry


def _require_prometheus_client(sink: str) -> None:
    try:
        import prometheus_client  # noqa: F401, PLC0415 - optional, checked where needed
    except ImportError:
        raise UsageError(
            f"{sink} needs prometheus_client, which is not installed: "
            f"pip install 'stalwart[prometheus]'"
        ) from None


class PrometheusTextfile:
    """Writes the metrics to ``path`` (``*.prom``) for node_exporter's textfile collector,
    at the end of every run, success or failure.

    Counters carry over: each write is the file's previous values plus this run's, so the
    ``_total`` counters only grow; series of other pipelines sharing the file are kept, and so
    is ``stalwart_last_success_timestamp_seconds`` when a run fails. Deleting the file resets
    the counters (Prometheus sees a counter reset).

    What survives a crash: the file is replaced atomically (temp file, fsync, rename, directory
    fsync), so node_exporter reads the previous run's metrics or this run's, never a mix; a
    run killed before its end writes nothing. Writers (several pipelines, one file) take turns
    through an ``flock`` on ``.<name>.lock`` beside the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        _require_prometheus_client("PrometheusTextfile")
        self.path = Path(path)
        if self.path.suffix != ".prom":
            raise UsageError(
                f"the textfile {str(self.path)!r} must end in .prom "
                f"(node_exporter's textfile collector reads only *.prom files)"
            )
        if not self.path.parent.is_dir():
            raise UsageError(
                f"the directory of the textfile {str(self.path)!r} does not exist "
                f"(point it at node_exporter's --collector.textfile.directory)"
            )
        self._pending = _Pending()

    def __repr__(self) -> str:
        return f"PrometheusTextfile({str(self.path)!r})"

    def handle(self, event: Event) -> None:
        self._pending.add(event)
        if isinstance(event, RunFinished):
            self._write(self._pending.take(event.pipeline))

    def _write(self, changes: list[Observation]) -> None:
        try:
            with self._locked():
                atomic_write_bytes(self.path, _render(_apply(self._read(), changes)))
        except Exception:  # a metrics file must never fail the run: logged, not raised
            log.warning(
                "could not write the metrics textfile %s; this run's metrics are not recorded",
                self.path,
                exc_info=True,
            )

    def _read(self) -> State:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            return _parse(text, keep=lambda labels: True)
        except ValueError:
            log.warning(
                "%s is not Prometheus text; replacing it, its counters start again from zero",
                self.path,
                exc_info=True,
            )
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for one read and one write: milliseconds
            yield
        finally:
            os.close(fd)  # releases the lock


def _render(state: State) -> bytes:
    from prometheus_client import generate_latest  # noqa: PLC0415

    return generate_latest(_registry(state))


class Pushgateway:
    """Pushes the metrics to a Prometheus Pushgateway at the end of every run, success or
    failure, in the group ``job=<job>, pipeline=<pipeline name>``.

    The push is a POST (``pushadd_to_gateway``): it replaces only the metrics it carries, so a
    failed run, which carries no ``stalwart_last_success_timestamp_seconds``, leaves the last
    success time in place. Counters carry over: before pushing, the group's current values are
    read back from the gateway's ``/metrics`` and this run's are added to them, so ``_total``
    counters only grow (two runs of one pipeline finishing at the same instant may lose one's
    increments). A gateway that cannot be read or written is logged and the push skipped.

    ``url``: ``http(s)://[user:password@]host:port[/prefix]``; credentials become basic auth
    and are never logged. ``timeout``: seconds for each of the two requests.
    """

    def __init__(self, url: str, *, job: str = "stalwart", timeout: float = 5.0) -> None:
        _require_prometheus_client("Pushgateway")
        self._base, self._auth = _split_gateway_url(url)
        if not isinstance(job, str) or not job.strip():
            raise UsageError(f"the Pushgateway job must be a non-empty name, not {job!r}")
        if not (isinstance(timeout, int | float) and 0 < timeout <= 300):
            raise UsageError(f"the Pushgateway timeout must be 0 < seconds <= 300, not {timeout!r}")
        self.url = redact_url(url)
        self.job = job
        self.timeout = float(timeout)
        self._pending = _Pending()

    def __repr__(self) -> str:
        return f"Pushgateway({self.url!r}, job={self.job!r})"

    def handle(self, event: Event) -> None:
        self._pending.add(event)
        if isinstance(event, RunFinished):
            self._push(event.pipeline, self._pending.take(event.pipeline))

    def _push(self, pipeline: str, changes: list[Observation]) -> None:
        from prometheus_client import pushadd_to_gateway  # noqa: PLC0415

        try:
            state = _apply(self._current(pipeline), changes)
            pushadd_to_gateway(
                self._base,
                job=self.job,
                registry=_registry(state),
                grouping_key={"pipeline": pipeline},
                timeout=self.timeout,
                handler=self._handler,
            )
        except Exception:  # a metrics push must never fail the run: logged, not raised
            log.warning(
                "could not push the metrics of %s to the Pushgateway at %s; "
                "this run's metrics are not recorded",
                pipeline,
                self.url,
                exc_info=True,
            )

    def _current(self, pipeline: str) -> State:
        headers = {"Accept": "text/plain; version=0.0.4"}
        if self._auth is not None:
            token = base64.b64encode(":".join(self._auth).encode("utf-8")).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        # S310: the scheme is http or https, checked in __init__.
        request = urllib.request.Request(self._base + "/metrics", headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            text = response.read().decode("utf-8")

        def ours(labels: Mapping[str, str]) -> bool:
            return (
                labels.get("job") == self.job
                and labels.get("pipeline") == pipeline
                and not labels.get("instance")
            )

        return _parse(text, keep=ours)

    def _handler(
        self, url: str, method: str, timeout: float | None, headers: list[Any], data: bytes
    ) -> Callable[[], None]:
        from prometheus_client.exposition import (  # noqa: PLC0415
            basic_auth_handler,
            default_handler,
        )

        if self._auth is None:
            return default_handler(url, method, timeout, headers, data)
        user, password = self._auth
        return basic_auth_handler(url, method, timeout, headers, data, user, password)


def _shown_gateway(url: str) -> str:
    """``redact_url``, plus any ``user:password@`` that a malformed URL (no scheme, one slash)
    still carries where ``urlsplit`` sees no user-info."""
    return re.sub(r"[^\s/@]+@", "***@", redact_url(url))


def _split_gateway_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """``https://u:p@host:9091/x/`` -> (``https://host:9091/x``, (u, p)); ``UsageError`` if it
    is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except (ValueError, TypeError, AttributeError):
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"the Pushgateway URL {_shown_gateway(str(url))!r} is not an http:// or https:// URL "
            f"with a host and a numeric port, e.g. http://pushgateway:9091"
        )
    if parts.query or parts.fragment:
        raise UsageError(
            f"the Pushgateway URL {_shown_gateway(url)!r} must have no query string or fragment"
        )
    netloc = parts.netloc.rsplit("@", 1)[-1]
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if parts.username is None:
        return base, None
    return base, (unquote(parts.username), unquote(parts.password or ""))


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


def _statsd_from_setting(value: str) -> StatsD:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError("expected host:port, e.g. localhost:8125 or [::1]:8125")
    return StatsD(host, int(port))


def sinks_from_env(environ: Mapping[str, str] | None = None) -> list[MetricsSink]:
    """The sinks named by ``STALWART_PROM_TEXTFILE`` (a ``*.prom`` path in an existing
    directory), ``STALWART_PUSHGATEWAY`` (an http(s) URL) and ``STALWART_STATSD``
    (``host:port``); empty or unset variables name none. A malformed value raises
    ``UsageError`` naming the variable, before any step runs."""
    env = os.environ if environ is None else environ
    builders: list[tuple[str, Callable[[str], MetricsSink]]] = [
        ("STALWART_PROM_TEXTFILE", PrometheusTextfile),
        ("STALWART_PUSHGATEWAY", Pushgateway),
        ("STALWART_STATSD", _statsd_from_setting),
    ]
    sinks: list[MetricsSink] = []
    for variable, build in builders:
        value = env.get(variable, "").strip()
        if not value:
            continue
        try:
            sinks.append(build(value))
        except UsageError as exc:
            shown = _shown_gateway(value) if variable == "STALWART_PUSHGATEWAY" else value
            raise UsageError(f"{variable}={shown!r}: {exc}") from None
    return sinks
