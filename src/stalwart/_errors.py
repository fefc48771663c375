"""The exceptions stalwart raises, and the two a user raises to route an error.

::

    Exception
     +-- StalwartError                 everything stalwart raises on purpose
          +-- UsageError(ValueError)   bad run ID, step or dead-letter id, bad setting (exit 2)
          +-- RunLockedError(BlockingIOError)  another process holds this run (exit 75)
          +-- HttpError(OSError)       an HTTP call failed for good (after its retries)
          |    +-- HttpStatusError     the server answered with a status that is not 2xx
          |    +-- ResponseFormatError(ValueError)  the body is not what the step asked for
          +-- DeadLetterError          a dead letter cannot be read, replayed or discarded
          +-- Transient                raise it (or ``raise Transient(...) from exc``): retry me
          |    +-- StepTimeout(TimeoutError)  a step ran longer than its ``timeout=``
          +-- Permanent                raise it: never retry me

Each error keeps its context as attributes (``step``, ``run_id``, ``url``, ``status``...) and
survives pickling. No message ever contains a secret: URLs are redacted before they get here.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DeadLetterError",
    "HttpError",
    "HttpStatusError",
    "Permanent",
    "ResponseFormatError",
    "RunLockedError",
    "StalwartError",
    "StepTimeout",
    "Transient",
    "UsageError",
]


class StalwartError(Exception):
    """Base class of every exception stalwart raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword attributes across pickling (multiprocessing, executors).
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[StalwartError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


class UsageError(StalwartError, ValueError):
    """The caller asked for something malformed: a bad run ID, step name, id or setting."""


class RunLockedError(StalwartError, BlockingIOError):
    """Another process is running this pipeline run; nothing was touched. (A
    ``BlockingIOError``, like the ``flock(LOCK_NB)`` that found the lock taken.)

    ``holder`` is what that process wrote into the lock file (pid, host, started), if known.
    """

    def __init__(self, message: str, *, lock_path: str = "", holder: str = "") -> None:
        super().__init__(message)
        self.lock_path = lock_path
        self.holder = holder


#: What a failed HTTP exchange was, when no status came back: the request timed out, could
#: not connect, the connection broke, or the server spoke broken HTTP. All four are transient.
TRANSPORT_CAUSES = frozenset({"timeout", "connect", "network", "protocol"})


class HttpError(StalwartError, OSError):
    """An HTTP call failed for good. ``url`` is redacted; ``attempts`` counts the tries.

    ``cause``: ``"timeout"``, ``"connect"``, ``"network"`` or ``"protocol"`` for a transport
    failure (all transient), ``""`` otherwise. ``not_sent``: the request never reached the
    server (safe to repeat, even a POST). ``dead_letter_id``: the envelope that keeps the
    request, if it was dead-lettered.

    An ``OSError``, like the standard library's ``urllib.error.HTTPError``; ``errno`` is None.
    Not a ``ConnectionError`` or ``TimeoutError``: whether it was transient is ``transient``.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        attempts: int = 1,
        cause: str = "",
        not_sent: bool = False,
        dead_letter_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.attempts = attempts
        self.cause = cause
        self.not_sent = not_sent
        self.dead_letter_id = dead_letter_id

    @property
    def transient(self) -> bool:
        """Would the same request plausibly succeed later? (See ``is_transient``.)"""
        return self.cause in TRANSPORT_CAUSES


class HttpStatusError(HttpError):
    """The server answered with a non-2xx status (``status``; ``body_excerpt`` is short)."""

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        status: int = 0,
        body_excerpt: str = "",
        attempts: int = 1,
        retry_after: float | None = None,
        dead_letter_id: str | None = None,
    ) -> None:
        super().__init__(
            message, method=method, url=url, attempts=attempts, dead_letter_id=dead_letter_id
        )
        self.status = status
        self.body_excerpt = body_excerpt
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return transient_status(self.status)


class ResponseFormatError(HttpError, ValueError):
    """The response body is not what the step asked for (not JSON, not UTF-8...)."""


class DeadLetterError(StalwartError):
    """A dead-letter envelope cannot be read, replayed or discarded."""


class Transient(StalwartError):
    """Raise (or ``raise Transient(...) from exc``) to have ``retry`` try again."""


class StepTimeout(Transient, TimeoutError):
    """A step ran longer than its ``timeout=`` and was interrupted. Transient, so the step's
    ``retry=`` applies; ``step`` and ``timeout`` (seconds) say which and how long."""

    retry_reason = "step_timeout"

    def __init__(self, message: str = "", *, step: str = "", timeout: float = 0.0) -> None:
        super().__init__(message)
        self.step = step
        self.timeout = timeout


class Permanent(StalwartError):
    """Raise to stop retrying at once, whatever the cause."""


#: Statuses that mean "try again later": timeouts, too early, too many requests, and 5xx.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def transient_status(status: int) -> bool:
    """The one rule for HTTP statuses: 408, 425, 429 and every 5xx are worth retrying."""
    return status in TRANSIENT_STATUSES or status >= 500
