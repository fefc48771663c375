"""Logging with run context. The library only logs; ``configure`` is for the CLI alone.

Every record stalwart (or a step, through ``ctx.log``) emits while a step runs carries
``pipeline``, ``run_id``, ``step`` and ``attempt``; the CLI's handler adds them to records of
other loggers too, from the running step's scope.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

from ._scope import current_scope

__all__ = ["ContextAdapter", "ContextFilter", "TextFormatter", "configure"]

CONTEXT_FIELDS = ("pipeline", "run_id", "step", "attempt")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class ContextAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds fixed context (pipeline, run_id, step, attempt) to every record;
    a call's own ``extra=`` is kept and wins on conflicts."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class ContextFilter(logging.Filter):
    """Fills in pipeline/run_id/step from the running step for records that lack them."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = current_scope.get()
        if scope is not None:
            for name, value in (
                ("pipeline", scope.pipeline),
                ("run_id", scope.run_id),
                ("step", scope.step),
            ):
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record carries beyond the standard ones (context and event fields)."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _rfc3339(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


class TextFormatter(logging.Formatter):
    """One line per event for people: time, level, context, message, then other fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = extra_fields(record)
        where = "/".join(str(fields.pop(k)) for k in ("pipeline", "run_id", "step") if k in fields)
        attempt = fields.pop("attempt", None)
        rest = " ".join(f"{k}={_short(v)}" for k, v in fields.items() if v not in (None, ""))
        line = (
            f"{_rfc3339(record.created)} {record.levelname:<7} "
            f"{('[' + where + (f' #{attempt}' if attempt else '') + '] ') if where else ''}"
            f"{record.getMessage()}"
        )
        if rest:
            line += f"  ({rest})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _short(value: object) -> str:
    text = str(value)
    return repr(text) if " " in text else text


def json_formatter() -> logging.Formatter:
    """python-json-logger, one object per line: timestamp, level, logger, message, fields."""
    from pythonjsonlogger.json import JsonFormatter  # noqa: PLC0415 - CLI-only dependency

    class _Formatter(JsonFormatter):
        def add_fields(
            self,
            log_data: dict[str, Any],
            record: logging.LogRecord,
            message_dict: dict[str, Any],
        ) -> None:
            super().add_fields(log_data, record, message_dict)
            log_data["timestamp"] = _rfc3339(record.created)
            log_data.move_to_end("timestamp", last=False) if hasattr(
                log_data, "move_to_end"
            ) else None

    return _Formatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        json_ensure_ascii=False,
    )


def configure(
    fmt: Literal["json", "text"] | None = None,
    *,
    verbose: bool = False,
    stream: Any = None,
) -> logging.Handler:
    """Send stalwart's (and the steps') records to stderr, as JSON or text. CLI only.

    ``fmt=None`` picks text on a terminal and JSON otherwise (cron, Kubernetes).
    Returns the handler so a caller (or a test) can remove it again.
    """
    stream = stream if stream is not None else sys.stderr
    if fmt is None:
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = logging.DEBUG if verbose else logging.INFO
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return handler


def context_extra(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: mapping[k] for k in CONTEXT_FIELDS if k in mapping}
