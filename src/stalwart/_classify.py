"""The one classifier: is a failure transient (worth trying again) or permanent, and which
bounded ``reason`` label does a retry of it carry in metrics and logs.

Every retry loop (``@retry``, ``HttpClient``, the Slack alerter, step retries) asks
``is_transient``; the ``stalwart_retries_total{reason}`` label comes from ``retry_reason``,
decided by the exception's type and typed fields, never by words in its message.
"""

from __future__ import annotations

import sys

from ._errors import HttpError, HttpStatusError, Permanent, Transient

__all__ = ["httpx_cause", "is_transient", "retry_reason"]

#: Exception types that mean "the network hiccupped": retried. httpx's are checked lazily.
_TRANSIENT_BUILTINS: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)


def is_transient(exc: BaseException) -> bool:
    """Would trying again plausibly succeed?

    Transient: ``Transient`` (``StepTimeout`` included); timeouts and connection errors
    (built-in and httpx); HTTP 408, 425, 429 and 5xx. Everything else is permanent:
    ``Permanent``, ``ValueError``, other 4xx, programming errors, and
    ``KeyboardInterrupt``/``SystemExit`` (never retried).
    """
    if isinstance(exc, Permanent) or not isinstance(exc, Exception):
        return False
    if isinstance(exc, (Transient, *_TRANSIENT_BUILTINS)):
        return True
    if isinstance(exc, HttpError):
        return exc.transient
    httpx = sys.modules.get("httpx")  # only consult httpx if the program already imported it
    if httpx is None:
        return False
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return status in (408, 425, 429) or status >= 500
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


def retry_reason(exc: BaseException) -> str:
    """A bounded label for a retried failure: ``status_503``, ``timeout``, ``connect``,
    ``network``, ``protocol``, ``step_timeout`` or ``transient``."""
    if isinstance(exc, HttpStatusError) and exc.status:
        return f"status_{exc.status}"
    if isinstance(exc, HttpError) and exc.cause:
        return exc.cause
    name = getattr(type(exc), "retry_reason", None)
    if isinstance(name, str):  # a Transient subclass may name its own (StepTimeout does)
        return name
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connect"
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.HTTPStatusError):
        return f"status_{exc.response.status_code}"
    return httpx_cause(exc) or "transient"


def httpx_cause(exc: BaseException) -> str:
    """What an httpx transport failure was (``HttpError.cause``): ``timeout``, ``connect``,
    ``network``, ``protocol``, or ``""`` for anything else (an invalid URL, say)."""
    httpx = sys.modules.get("httpx")
    if httpx is None:
        return ""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        return "connect"
    if isinstance(exc, httpx.NetworkError):
        return "network"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol"
    return ""
