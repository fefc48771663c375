"""The Prometheus sinks: a node_exporter textfile and a Pushgateway (prometheus_client)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .._atomic import atomic_write_bytes
from .._errors import UsageError
from .._redact import redact_url
from ._core import METRICS, Observation, State, observations
from ._events import (
    Event,
    RunFinished,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


__all__ = ["PrometheusTextfile", "Pushgateway"]

log = logging.getLogger("stalwart.metrics")


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
    and are never logged. ``timeout``: seconds for each of the two requests; the whole push
    runs in a helper thread abandoned after ``3 * timeout`` seconds (15 s by default), and
    the gateway's answer is read up to 64 MiB, so a stalled or endless gateway never holds
    the end of a run.
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
            changes = self._pending.take(event.pipeline)
            worker = threading.Thread(
                target=self._push, args=(event.pipeline, changes), daemon=True
            )
            worker.start()  # a thread bounds the whole push, however the gateway stalls
            worker.join(3 * self.timeout)
            if worker.is_alive():
                log.warning(
                    "the Pushgateway at %s did not finish the push of %s within %g s; "
                    "this run's metrics may not be recorded",
                    self.url,
                    event.pipeline,
                    3 * self.timeout,
                )

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
        with _opener().open(request, timeout=self.timeout) as response:
            text = _read_limited(response, self.timeout).decode("utf-8")

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
        """prometheus_client's push, through an opener that follows no redirect: urllib
        would carry the ``Authorization`` header to whatever host a redirect names."""
        sent = list(headers)
        if self._auth is not None:
            token = base64.b64encode(":".join(self._auth).encode("utf-8")).decode("ascii")
            sent.append(("Authorization", f"Basic {token}"))

        def handle() -> None:
            request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
            for name, value in sent:
                request.add_header(name, value)
            with _opener().open(request, timeout=timeout) as response:
                if response.status >= 400:
                    raise OSError(f"the Pushgateway answered {response.status}")

        return handle


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A Pushgateway does not redirect; a redirect is an error, never followed (the
    credentials would go with it to another host)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx answer


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirects)


_MAX_GATEWAY_ANSWER = 64 * 1024 * 1024


def _read_limited(response: Any, seconds: float) -> bytes:
    """The body of ``response`` read within ``seconds`` in all and up to 64 MiB, else
    ``OSError`` (a dripping or endless gateway must not hold the run's end or its memory)."""
    import time  # noqa: PLC0415 - already loaded by urllib

    deadline = time.monotonic() + seconds
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(65536):
        size += len(chunk)
        if size > _MAX_GATEWAY_ANSWER:
            raise OSError("the Pushgateway's answer is larger than 64 MiB")
        if time.monotonic() > deadline:
            raise OSError(f"the Pushgateway's answer took longer than {seconds:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def shown_gateway(url: str) -> str:
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
            f"the Pushgateway URL {shown_gateway(str(url))!r} is not an http:// or https:// URL "
            f"with a host and a numeric port, e.g. http://pushgateway:9091"
        )
    if parts.query or parts.fragment:
        raise UsageError(
            f"the Pushgateway URL {shown_gateway(url)!r} must have no query string or fragment"
        )
    netloc = parts.netloc.rsplit("@", 1)[-1]
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if parts.username is None:
        return base, None
    return base, (unquote(parts.username), unquote(parts.password or ""))
