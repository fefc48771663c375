"""``sinks_from_env``: the metric sinks named by ``STALWART_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from .._errors import UsageError
from ._events import MetricsSink
from ._prometheus import PrometheusTextfile, Pushgateway, shown_gateway
from ._statsd import statsd_from_setting

__all__ = ["sinks_from_env"]


def sinks_from_env(environ: Mapping[str, str] | None = None) -> list[MetricsSink]:
    """The sinks named by ``STALWART_PROM_TEXTFILE`` (a ``*.prom`` path in an existing
    directory), ``STALWART_PUSHGATEWAY`` (an http(s) URL) and ``STALWART_STATSD``
    (``host:port``); empty or unset variables name none. A malformed value raises
    ``UsageError`` naming the variable, before any step runs."""
    env = os.environ if environ is None else environ
    builders: list[tuple[str, Callable[[str], MetricsSink]]] = [
        ("STALWART_PROM_TEXTFILE", PrometheusTextfile),
        ("STALWART_PUSHGATEWAY", Pushgateway),
        ("STALWART_STATSD", statsd_from_setting),
    ]
    sinks: list[MetricsSink] = []
    for variable, build in builders:
        value = env.get(variable, "").strip()
        if not value:
            continue
        try:
            sinks.append(build(value))
        except UsageError as exc:
            shown = shown_gateway(value) if variable == "STALWART_PUSHGATEWAY" else value
            raise UsageError(f"{variable}={shown!r}: {exc}") from None
    return sinks
