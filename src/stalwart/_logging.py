"""Logging with run context. The library only logs; ``configure`` is for the CLI alone.

Every record stalwart (or a step, through ``ctx.log``) emits while a step runs carries
``pipeline``, ``run_id``, ``step`` and ``attempt``; the CLI's handler adds pipeline, run_id
and step to records of other loggers too (httpx, the user's own), from the running step's
scope. Two formats carry the same information (docs/observability.md):

- JSON, one object per line: ``timestamp`` (UTC RFC 3339), ``level``, ``logger``,
  ``message``, then the context and event fields (``duration_s``, ``wait_s``...) and
  ``exc_info`` (the traceback) if any;
- text, one line per record for people: the same fields, in the same order.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import traceback
import types
from collections.abc import MutableMapping

from ._scope import current_scope
from ._time import utc_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

__all__ = [
    "ContextAdapter",
    "ContextFilter",
    "JsonFormatter",
    "SecretFilter",
    "TextFormatter",
    "configure",
    "json_formatter",
    "rfc3339",
    "step_logger",
]

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
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def step_logger(step: str) -> logging.Logger:
    """The logger named ``stalwart.step.<step>`` (what ``ctx.log`` logs through), without
    registering it with ``logging``, which would keep one ``Logger`` per step name forever.

    It behaves as the registered one would: its parent is ``stalwart.step`` (levels, handlers
    and propagation come from there and above). If the application has configured
    ``stalwart.step.<step>`` itself (``logging.getLogger(...)``), that logger is used.
    """
    name = f"stalwart.step.{step}"
    configured = logging.Logger.manager.loggerDict.get(name)
    if isinstance(configured, logging.Logger):
        return configured
    logger = logging.Logger(name)
    logger.parent = logging.getLogger("stalwart.step")
    return logger


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


class SecretFilter(logging.Filter):
    """Masks registered secrets in every record (``_redact.RecordScrubber``), loading the
    scrubber only once a secret can exist: secrets are registered through ``_redact``
    (``register_secret``), so while that module is not loaded there is none to mask, and a
    run that reads no secret (no webhook, no token) never loads it."""

    def __init__(self) -> None:
        super().__init__()
        self._scrubber: logging.Filter | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self._scrubber is None:
            if __package__ + "._redact" not in sys.modules:
                return True
            from . import _redact  # noqa: PLC0415 - waits if another thread is importing it

            scrubber = getattr(_redact, "RecordScrubber", None)
            if scrubber is None:  # this very thread is importing it: no secret exists yet
                return True
            self._scrubber = scrubber()
        return self._scrubber.filter(record) is not False


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record carries beyond the standard ones (context and event fields)."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def rfc3339(created: float) -> str:
    """A record's time as UTC RFC 3339 with milliseconds: ``2026-11-28T03:00:00.123Z``."""
    return utc_text(created, digits=3)


class TextFormatter(logging.Formatter):
    """One line per record for people, with what the JSON form has: time, level, logger,
    ``[pipeline/run_id/step #attempt]``, message, ``(other=fields)``, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        from ._printable import printable  # noqa: PLC0415 - text only: JSON runs never need it

        fields = extra_fields(record)
        where = "/".join(str(fields.pop(k)) for k in ("pipeline", "run_id", "step") if k in fields)
        attempt = fields.pop("attempt", None)
        if where:
            where = f"[{where}{f' #{attempt}' if attempt is not None else ''}] "
        elif attempt is not None:
            fields["attempt"] = attempt
        rest = " ".join(f"{k}={printable(_quoted(v))}" for k, v in fields.items() if v is not None)
        line = (
            f"{rfc3339(record.created)} {record.levelname:<7} {record.name} "
            f"{printable(where)}{printable(record.getMessage())}"
        )
        if rest:
            line += f"  ({rest})"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # already scrubbed of secrets by the CLI's SecretFilter
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _quoted(value: object) -> str:
    """A field value that stays one token on one line: quoted when it has spaces, quotes,
    newlines or ``=``, or is empty."""
    text = str(value)
    if not text or any(c.isspace() or c in "\"'=()" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _json_default(value: Any) -> Any:
    """JSON for what ``json`` cannot encode, as python-json-logger's encoder does it:
    dates and times in ISO 8601, an exception as ``Type: message``, a traceback as text, an
    enum as its value, bytes as URL-safe base64, a dataclass as a dict, a class as its name,
    anything else as ``str()`` (``repr()``, then ``"__could_not_encode__"``, if that fails).
    Nothing is imported for it unless such a value is logged."""
    dt = sys.modules.get("datetime")  # a date cannot exist unless datetime is loaded
    if dt is not None and isinstance(value, dt.time | dt.date):
        return value.isoformat()
    if isinstance(value, BaseException):
        return f"{value.__class__.__name__}: {value}"
    if isinstance(value, types.TracebackType):
        return "".join(traceback.format_tb(value)).strip()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, enum.EnumMeta):
        return [member.value for member in value]  # type: ignore[var-annotated]
    if isinstance(value, bytes | bytearray):
        import base64  # noqa: PLC0415 - only when bytes are logged

        return base64.urlsafe_b64encode(value).decode("utf8")
    if hasattr(type(value), "__dataclass_fields__") and not isinstance(value, type):
        import dataclasses  # noqa: PLC0415 - only when a dataclass is logged

        return dataclasses.asdict(value)
    if isinstance(value, type):
        return value.__name__
    for show in (str, repr):
        try:
            return show(value)
        except Exception:  # noqa: BLE001, S112 - the log line must still be written
            continue
    return "__could_not_encode__"


_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False)
"""What ``json.dumps(..., default=_json_default, ensure_ascii=False)`` builds per call, built
once (it keeps no state between calls)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``timestamp``, ``level``, ``logger``, ``message``, then
    ``exc_info`` (the traceback) and ``stack_info`` if any, then the record's extra fields
    (context and event fields), in the order they were set.

    The lines are those python-json-logger wrote with the same fields (stalwart used it
    until 0.2), byte for byte: a record whose ``msg`` is a dict logs its keys as fields and
    an empty message; values ``json`` cannot encode go through ``_json_default``.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {}
        if isinstance(record.msg, dict):
            fields = record.msg.copy()
            record.message = ""
        else:
            record.message = record.getMessage()
        if record.exc_info and not fields.get("exc_info"):
            fields["exc_info"] = self.formatException(record.exc_info)
        if not fields.get("exc_info") and record.exc_text:
            fields["exc_info"] = record.exc_text
        if record.stack_info and not fields.get("stack_info"):
            fields["stack_info"] = self.formatStack(record.stack_info)
        line: dict[str, Any] = {
            "timestamp": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.message,
        }
        line.update(fields)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        return _ENCODER.encode(line)


def json_formatter() -> logging.Formatter:
    """The JSON lines formatter (``JsonFormatter``)."""
    return JsonFormatter()


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
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = logging.DEBUG if verbose else logging.INFO
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return handler
