"""Keep secrets out of everything stalwart writes: logs, exceptions, alerts, dead letters.

Secret: the value of ``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``
and any header whose name mentions a token, key, secret, password, session or signature
(``X-Api-Key``, ``X-Auth-Token``; but not ``Idempotency-Key``); a URL's user-info; query
(and fragment) parameters whose name mentions token, key, secret, password, signature, sig,
auth, session, credential or code; and whole URLs that are secrets themselves (a Slack
webhook URL), registered with ``register_secret``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping

__all__ = [
    "MASK",
    "RecordScrubber",
    "Scrubber",
    "install_httpx_log_redaction",
    "is_secret_header",
    "redact_headers",
    "redact_url",
    "register_secret",
    "scrub_registered",
    "secrets_in_url",
]

MASK = "***"

_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-amz-security-token"}
)
_SAFE_HEADERS = frozenset({"idempotency-key", "content-type", "content-length", "accept"})
# Compiled on first use (re caches them): the command line loads this module for its log
# filter on every start, and a run without HTTP never asks (~0.5 ms of every start).
_HEADER_WORDS = (
    r"token|secret|passw(or)?d|api[-_]?key|apikey|(^|[-_])key($|[-_])|session|signature|"
    r"credential|auth"
)
_PARAM_WORDS = (
    r"token|key|secret|passw(or)?d|signature|(^|[-_])sig($|[-_])|auth|session|credential|"
    r"(^|[-_])code($|[-_])"
)


def _is_secret_word(name: str) -> bool:
    return re.search(_HEADER_WORDS, name, re.IGNORECASE) is not None


def _is_secret_param(name: str) -> bool:
    return re.search(_PARAM_WORDS, name, re.IGNORECASE) is not None


_MIN_SECRET = 4
"""Shorter values would mask innocent text and protect nothing: they are left alone."""


def is_secret_header(name: str) -> bool:
    lowered = name.lower()
    if lowered in _SAFE_HEADERS:
        return False
    return lowered in _SECRET_HEADERS or _is_secret_word(lowered)


def redact_headers(headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (MASK if is_secret_header(k) else v) for k, v in items}


# urllib.parse (with ipaddress: ~4 ms) is imported by the functions that parse URLs, not at
# import: the command line loads this module for its log filter on every start.


def _redact_params(text: str) -> str:
    from urllib.parse import parse_qsl, urlencode  # noqa: PLC0415 - see above

    if "=" not in text:
        return text
    pairs = parse_qsl(text, keep_blank_values=True)
    if not any(_is_secret_param(k) for k, _ in pairs):
        return text
    return urlencode([(k, MASK if _is_secret_param(k) else v) for k, v in pairs], safe="*")


def redact_url(url: str) -> str:
    """``https://u:p@host/x?token=abc&page=2`` -> ``https://***@host/x?token=***&page=2``.

    A registered secret URL (``register_secret``) becomes ``***`` as a whole."""
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415 - see above

    if _registry.is_registered(url):
        return MASK
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    shown = urlunsplit(
        (
            parts.scheme,
            netloc,
            parts.path,
            _redact_params(parts.query),
            _redact_params(parts.fragment),
        )
    )
    return scrub_registered(shown)


def secrets_in_url(url: str) -> list[str]:
    """The secret parts of ``url`` (user-info, secret parameter values), as they appear
    decoded and encoded, for ``Scrubber``."""
    from urllib.parse import parse_qsl, quote, quote_plus, urlsplit  # noqa: PLC0415 - see above

    found: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found.append(userinfo)
        found.extend(p for p in userinfo.split(":") if p)
    for text in (parts.query, parts.fragment):
        for raw in text.split("&"):
            key, _, value = raw.partition("=")
            if value and _is_secret_param(key):
                found.append(value)
        for k, v in parse_qsl(text, keep_blank_values=True):
            if v and _is_secret_param(k):
                found += [v, quote(v, safe=""), quote_plus(v)]
    return found


class Scrubber:
    """Replaces known secret strings in any text (exception messages, body excerpts)."""

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole.
        unique = sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, unique))) if unique else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)


class _Registry:
    """Secrets known process-wide (webhook URLs): masked in every URL stalwart shows and in
    httpx's own request log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._scrubber = Scrubber(())

    def add(self, secret: str) -> None:
        with self._lock:
            if len(secret) >= _MIN_SECRET and secret not in self._secrets:
                self._secrets.add(secret)
                self._scrubber = Scrubber(self._secrets)

    def has_secrets(self) -> bool:
        with self._lock:
            return bool(self._secrets)

    def is_registered(self, text: str) -> bool:
        with self._lock:
            return text in self._secrets

    def scrub(self, text: str) -> str:
        with self._lock:
            scrubber = self._scrubber
        return scrubber(text)


_registry = _Registry()


def register_secret(secret: str) -> None:
    """Treat ``secret`` (a webhook URL, a token) as secret in every URL and httpx log line
    stalwart emits from now on, in this process. Values under 4 characters are ignored."""
    from urllib.parse import urlsplit  # noqa: PLC0415 - see above

    _registry.add(secret)
    try:
        parts = urlsplit(secret)
    except ValueError:
        return
    if parts.scheme and parts.netloc:
        # httpx normalises URLs (default port, percent-encoding); mask the path form too.
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(path.strip("/")) >= 8:
            _registry.add(path)


def scrub_registered(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    return _registry.scrub(text)


class _HttpxLogRedaction(logging.Filter):
    """httpx logs every request's full URL at INFO; mask the secrets in it first."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = scrub_registered(record.msg)
        return True


def _redact_arg(arg: object) -> object:
    if type(arg).__name__ == "URL":  # httpx.URL, without importing httpx
        return redact_url(str(arg))
    if isinstance(arg, str):
        return scrub_registered(arg)
    return arg


class RecordScrubber(logging.Filter):
    """Masks every registered secret in every field of a record: the message (arguments
    merged), each extra field that is text, and the traceback (formatted here, once). Added
    by the CLI to its handler: a record a step logs itself is scrubbed too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _registry.has_secrets():
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed call: logging's own handler reports it
            return True
        record.msg = scrub_registered(message)
        record.args = None
        for name, value in list(record.__dict__.items()):
            if isinstance(value, str) and name not in ("msg", "name", "levelname", "pathname"):
                record.__dict__[name] = scrub_registered(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_registered(record.exc_text)
            record.exc_info = None  # the formatter would format the raw one again
        return True


_install_lock = threading.Lock()


def install_httpx_log_redaction() -> None:
    """Add the URL-masking filter to the ``httpx`` logger (once: idempotent, thread-safe)."""
    logger = logging.getLogger("httpx")
    with _install_lock:
        if not any(isinstance(f, _HttpxLogRedaction) for f in logger.filters):
            logger.addFilter(_HttpxLogRedaction())
