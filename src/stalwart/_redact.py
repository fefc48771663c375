"""Keep secrets out of everything stalwart writes: logs, exceptions, alerts, dead letters.

Secret: the value of ``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``
and any header whose name mentions a token, key, secret, password, session or signature
(``X-Api-Key``, ``X-Auth-Token``; but not ``Idempotency-Key``); a URL's user-info; and query
parameters whose name mentions token, key, secret, password, signature, sig, auth, session,
credential or code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "Scrubber", "is_secret_header", "redact_headers", "redact_url"]

MASK = "***"

_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-amz-security-token"}
)
_SAFE_HEADERS = frozenset({"idempotency-key", "content-type", "content-length", "accept"})
_SECRET_WORDS = re.compile(
    r"token|secret|passw(or)?d|api[-_]?key|apikey|(^|[-_])key($|[-_])|session|signature|"
    r"credential|auth",
    re.IGNORECASE,
)
_SECRET_PARAMS = re.compile(
    r"token|key|secret|passw(or)?d|signature|(^|[-_])sig($|[-_])|auth|session|credential|"
    r"(^|[-_])code($|[-_])",
    re.IGNORECASE,
)


def is_secret_header(name: str) -> bool:
    lowered = name.lower()
    if lowered in _SAFE_HEADERS:
        return False
    return lowered in _SECRET_HEADERS or _SECRET_WORDS.search(lowered) is not None


def redact_headers(headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (MASK if is_secret_header(k) else v) for k, v in items}


def redact_url(url: str) -> str:
    """``https://u:p@host/x?token=abc&page=2`` -> ``https://***@host/x?token=***&page=2``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAMS.search(k) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if _SECRET_PARAMS.search(k) else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def secrets_in_url(url: str) -> list[str]:
    """The secret parts of ``url`` (user-info, secret query values), for ``Scrubber``."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found.append(userinfo)
        found.extend(p for p in userinfo.split(":") if p)
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_PARAMS.search(k) and v:
            found.append(v)
    return found


class Scrubber:
    """Replaces known secret strings in any text (exception messages, body excerpts)."""

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole. Short values
        # (under 4 characters) would mask innocent text and protect nothing: left alone.
        unique = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, unique))) if unique else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)
