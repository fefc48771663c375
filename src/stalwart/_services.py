"""What a run talks to, handed down as one immutable record (``RunServices``).

``Pipeline`` declares steps and holds the configuration; when a run starts it builds this
record and hands it to the runner, which hands it on to each step's ``Context``. Nothing
below ``_pipeline`` ever reaches back into a ``Pipeline``.
"""

from __future__ import annotations

import logging
import os
import threading

from ._records import record_type

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    from ._alerts import Alerter
    from ._http import HttpClient
    from ._store import StateStore
    from .instrumentation._events import Event, MetricsSink

__all__ = ["Emitter", "RunServices", "SharedHttp"]

#: The open failure streak of a pipeline (``_alert_hygiene``), beside its ``runs/``.
STREAK_FILE = ".alert-streak.json"

log = logging.getLogger("stalwart.run")


class Emitter:
    """Dispatches events to the metric sinks; a sink that raises is logged once, then ignored
    for the rest of the run."""

    def __init__(self, sinks: list[MetricsSink]) -> None:
        self._sinks = sinks
        self._broken: set[int] = set()

    def __bool__(self) -> bool:
        """False without sinks: then no event is even built (nor ``_events`` imported)."""
        return bool(self._sinks)

    def __call__(self, event: Event) -> None:
        for index, sink in enumerate(self._sinks):
            if index in self._broken:
                continue
            try:
                sink.handle(event)
            except Exception:
                self._broken.add(index)
                log.warning(
                    "metrics sink %r failed on %s; ignoring it for the rest of this run",
                    sink,
                    type(event).__name__,
                    exc_info=True,
                )


class SharedHttp:
    """The ``HttpClient`` behind ``ctx.http``: the one given to the pipeline, or a default
    one made on first use (httpx is imported only then) and closed when the last run that
    used it ends. Thread-safe."""

    def __init__(self, client: HttpClient | None) -> None:
        self._client = client
        self._own = client is None
        self._lock = threading.Lock()
        self._runs = 0

    def get(self) -> HttpClient:
        with self._lock:
            if self._client is None:
                from ._http import HttpClient  # noqa: PLC0415 - httpx only when HTTP is used

                self._client = HttpClient()
            return self._client

    def enter(self) -> None:
        """A run starts using the client."""
        with self._lock:
            self._runs += 1

    def leave(self) -> None:
        """A run ended: the default client is closed by the last run that ends."""
        with self._lock:
            self._runs -= 1
            if self._own and self._client is not None and not self._runs:
                self._client.close()
                self._client = None


if TYPE_CHECKING:

    class _RunServicesFields(NamedTuple):
        pipeline: str
        """The pipeline's name."""
        root: str
        """The absolute state root: ``<root>/<pipeline>/runs/<run_id>/`` holds a run."""
        http: SharedHttp
        alerters: tuple[Alerter, ...]
        """The configured alerters (Slack...); the log alerter is always added when alerting."""
        emit: Emitter
        """The metric sinks (an ``Emitter`` that is false when there are none)."""
        resume_hint: str | None = None
        """How to run this pipeline again (``cd DIR && stalwart run file.py:name``), if known;
        worked out from ``sys.argv`` when a run fails otherwise."""
        store: StateStore | None = None
        """Where the run's state lives when the root is object storage (its writes check the
        run's lease); ``None`` for a local directory (``root``)."""

else:

    def _new_run_services(  # noqa: PLR0917 - the fields, as namedtuple takes them
        _cls, pipeline, root, http, alerters, emit, resume_hint=None, store=None
    ):
        return tuple.__new__(_cls, (pipeline, root, http, alerters, emit, resume_hint, store))

    _RunServicesFields = record_type("RunServices", _new_run_services)


class RunServices(_RunServicesFields):
    """The services of one run, built when it starts (a ``NamedTuple``: immutable, and
    cheaper to define at import than a frozen dataclass)."""

    __slots__ = ()

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, self.pipeline)

    @property
    def deadletter_dir(self) -> str:
        return os.path.join(self.root, self.pipeline, "deadletter")

    def streak_may_be_open(self) -> bool:
        """Whether a failure streak may be open (so a success must close it): one ``stat``
        on a local root; always on object storage, where ``_alert_hygiene`` reads it."""
        return self.store is not None or os.path.exists(
            os.path.join(self.root, self.pipeline, STREAK_FILE)
        )

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.root, self.pipeline, "runs", run_id)
