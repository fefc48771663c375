"""A network layer for httpcore that gives every socket operation at most the time left
before the current request's total deadline.

httpx's timeouts apply to each read: a server that sends its status line and headers one
byte at a time, each byte within the read timeout, keeps a request alive for ever, and no
check between body chunks can see it (the headers arrive before ``send`` returns). Here each
``connect``, ``read`` and ``write`` of the thread's current request is capped at the time
left (``deadline_scope``), and once none is left it fails as a timeout at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    import httpcore
    import httpx

__all__ = ["deadline_scope", "install_deadline_network"]

_current = threading.local()


@contextlib.contextmanager
def deadline_scope(deadline: float) -> Iterator[None]:
    """Within the block, this thread's socket operations end by ``deadline``
    (``time.monotonic()`` seconds)."""
    previous = getattr(_current, "deadline", None)
    _current.deadline = deadline
    try:
        yield
    finally:
        _current.deadline = previous


def _capped(timeout: float | None, kind: str) -> float | None:
    deadline: float | None = getattr(_current, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        import httpcore  # noqa: PLC0415 - loaded with httpx already

        errors: dict[str, type[httpcore.TimeoutException]] = {
            "connect": httpcore.ConnectTimeout,
            "write": httpcore.WriteTimeout,
        }
        raise errors.get(kind, httpcore.ReadTimeout)("the request's total deadline has passed")
    return left if timeout is None else min(timeout, left)


def install_deadline_network(transport: httpx.BaseTransport) -> bool:
    """Make ``transport``'s connections honour ``deadline_scope``; ``False`` (nothing done)
    if its connection pool is not the one this was written for."""
    pool: Any = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None or isinstance(backend, _DeadlineBackend):
        return isinstance(backend, _DeadlineBackend)
    pool._network_backend = _DeadlineBackend(backend)
    return True


class _DeadlineStream:
    """An httpcore ``NetworkStream`` whose operations are capped by the thread's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _capped(timeout, "read"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout, "write"))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> _DeadlineStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _capped(timeout, "read"))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend:
    """An httpcore ``NetworkBackend`` wrapping another, handing out ``_DeadlineStream``s."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> _DeadlineStream:
        stream = self._inner.connect_tcp(
            host, port, _capped(timeout, "connect"), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> _DeadlineStream:
        stream = self._inner.connect_unix_socket(path, _capped(timeout, "connect"), socket_options)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
