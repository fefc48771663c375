"""One HTTP exchange with bounds a hostile or broken server cannot stretch: a total deadline
(wall clock, body included), a maximum body size, and redirects that never carry a secret
header to another origin.

httpx's timeouts apply to each network operation, so a server that drips one byte every
half second never trips them, and a body is buffered whole however long it is. Here every
read is given at most the time left, the body is read chunk by chunk against the deadline
and the size limit, and redirects are followed one hop at a time: when the scheme, host or
port changes, every header stalwart treats as secret (``is_secret_header``) is dropped, and
the client's credentials are not applied again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._deadline_network import deadline_scope
from ._redact import is_secret_header, redact_url

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_TOTAL_TIMEOUT", "LimitExceeded", "Limits", "send_bounded"]

log = logging.getLogger("stalwart.http")

DEFAULT_TOTAL_TIMEOUT = 300.0
"""Seconds one request may take in all, body included: five minutes."""
DEFAULT_MAX_BODY = 256 * 1024 * 1024
"""Bytes of one response body (decoded), held in memory: 256 MiB."""
_MAX_REDIRECTS = 20


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one exchange; ``*_option`` name the setting to change in messages."""

    total_timeout: float = DEFAULT_TOTAL_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    timeout_option: str = "HttpClient(total_timeout=...)"
    body_option: str = "HttpClient(max_body_size=...)"

    def describe(self) -> str:
        return (
            f"limits: {self.total_timeout:g} s in all per request, body included "
            f"({self.timeout_option}); {_size(self.max_body)} per response body "
            f"({self.body_option})"
        )


class LimitExceeded(Exception):
    """The response broke a bound: ``kind`` is ``"deadline"`` or ``"size"``."""

    def __init__(self, kind: Literal["deadline", "size", "redirects"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def _clamp(request: httpx.Request, left: float) -> None:
    """Give every network operation of ``request`` at most ``left`` seconds."""
    asked = request.extensions.get("stalwart.timeout") or request.extensions.get("timeout")
    timeouts = dict(asked or {})
    for name in ("connect", "read", "write", "pool"):
        value = timeouts.get(name)
        timeouts[name] = left if value is None else min(float(value), left)
    request.extensions = {**request.extensions, "stalwart.timeout": asked, "timeout": timeouts}


def send_bounded(
    client: httpx.Client, request: httpx.Request, limits: Limits, *, follow_redirects: bool
) -> httpx.Response:
    """Send ``request`` and read the whole response within ``limits``; ``LimitExceeded`` if
    it breaks one (httpx's own errors pass through). Redirects are followed when asked,
    stripping secret headers on a change of origin."""
    import httpx  # noqa: PLC0415 - loaded by the caller already

    deadline = time.monotonic() + limits.total_timeout
    try:
        with deadline_scope(deadline):  # every socket operation ends by the deadline
            return _exchange(client, request, limits, deadline, follow_redirects)
    except httpx.TimeoutException:
        if time.monotonic() >= deadline:
            raise _late(limits) from None
        raise


def _exchange(
    client: httpx.Client,
    request: httpx.Request,
    limits: Limits,
    deadline: float,
    follow_redirects: bool,
) -> httpx.Response:
    origin = _origin(request.url)
    auth_default = True
    history: list[httpx.Response] = []
    for _hop in range(_MAX_REDIRECTS + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            raise _late(limits)
        _clamp(request, left)
        if auth_default:
            response = client.send(request, stream=True, follow_redirects=False)
        else:  # a redirect hop: the client's credentials are not applied again
            response = client.send(request, stream=True, follow_redirects=False, auth=None)
        try:
            following = follow_redirects and response.next_request is not None
            if not following:
                _read_body(response, deadline, limits)
                response.history = history  # the redirects followed, as httpx keeps them
                return response
        finally:
            response.close()
        history.append(response)
        hop = response.next_request
        assert hop is not None  # noqa: S101 - `following` says so
        if _origin(hop.url) != origin:
            dropped = [name for name in hop.headers if is_secret_header(name)]
            for name in dropped:
                del hop.headers[name]
            if dropped:
                log.info(
                    "redirect to another origin (%s): not sending %s",
                    redact_url(str(hop.url)),
                    ", ".join(sorted(dropped)),
                )
        request = hop
        auth_default = False
    raise LimitExceeded("redirects", f"more than {_MAX_REDIRECTS} redirects")


def _late(limits: Limits) -> LimitExceeded:
    return LimitExceeded(
        "deadline",
        f"no complete response within {limits.total_timeout:g} s ({limits.describe()})",
    )


def _read_body(response: httpx.Response, deadline: float, limits: Limits) -> None:
    """Read the body into ``response`` (``.content`` works after), within the bounds."""
    announced = response.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limits.max_body:
        raise LimitExceeded(
            "size",
            f"the response announces {int(announced)} bytes, over the "
            f"{_size(limits.max_body)} limit ({limits.describe()})",
        )
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limits.max_body:
            raise LimitExceeded(
                "size",
                f"the response body passed the {_size(limits.max_body)} limit "
                f"({limits.describe()})",
            )
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise _late(limits)
    response._content = b"".join(chunks)  # what httpx's own read() sets
