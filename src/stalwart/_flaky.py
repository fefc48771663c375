"""A real HTTP server on loopback that misbehaves on cue, for testing code that calls flaky APIs.

``FlakyServer`` is a threaded HTTP/1.1 server (stdlib ``http.server``) bound to an ephemeral port
on 127.0.0.1. A test scripts each route with a sequence of :class:`Reply` objects: every request
to that route consumes the next one, so "two 503s, then the data" is one line. A reply can be
slow (``delay``, ``drip``), can lie about its length (``truncate``) or can drop the connection
(``reset``, ``reset_after``), which is what real APIs do on a bad day and what mocks rarely do.
Every request is logged as a frozen :class:`Request`, and ``wait_for_requests`` lets a test wait
for traffic without sleeping::

    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 2, then=Reply(json=[{"id": 1}]))
        assert fetch(server.url("/orders")) == [{"id": 1}]
        assert server.count("GET", "/orders") == 3

Shutting down never hangs: handler threads are daemons, a pending ``delay`` or ``drip`` is
interrupted by :meth:`FlakyServer.stop` (the client sees the connection close without a
complete response), and ``stop`` closes idle keep-alive connections.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import re
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, cast
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from socketserver import _RequestType

__all__ = ["FlakyServer", "Reply", "Request"]

_log = logging.getLogger("stalwart.testing")

_HOST: Final = "127.0.0.1"
_POLL_INTERVAL: Final = 0.05  # how often serve_forever looks for shutdown(): bounds stop()
_MAX_LINE: Final = 65536
_CHUNK_SIZE_LINE: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_SERVER_OWNED_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a TCP RST


class _NoJson(enum.Enum):
    NO_JSON = "NO_JSON"

    def __repr__(self) -> str:
        return "NO_JSON"


_NO_JSON: Final = _NoJson.NO_JSON


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One scripted response, from an honest 200 to a connection reset halfway through the body.

    The fields combine: ``Reply(status=503, headers={"Retry-After": "2"}, delay=1.0)`` is a slow
    rate-limit answer, ``Reply(json=data, drip=0.1, truncate=10)`` trickles ten bytes of a JSON
    body and hangs up. Contradictions (``body`` with ``json``, ``reset`` with ``truncate``, a
    ``truncate`` that cuts nothing) raise ``ValueError`` here, not in the middle of a test.
    The body is encoded once, at construction, so mutating the ``json`` value later changes nothing.
    """

    status: int = 200
    """HTTP status code, 200-599."""
    body: bytes | str = b""
    """Response body; a ``str`` is sent as UTF-8 with ``Content-Type: text/plain; charset=utf-8``,
    non-empty ``bytes`` as ``application/octet-stream``."""
    json: object = field(default=_NO_JSON, hash=False)
    """If given (``None`` included, which is JSON ``null``), the body is this value as JSON and
    the Content-Type is ``application/json``. Exclusive with ``body``."""
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Extra response headers, e.g. ``{"Retry-After": "3"}``; a ``Content-Type`` here replaces the
    default one. ``Content-Length`` is always the server's (the full body's length) and may not be
    set here; use ``truncate`` to send fewer bytes than announced."""
    delay: float = 0.0
    """Seconds to wait before sending anything (or before ``reset``): a slow or hanging server.
    Interrupted by :meth:`FlakyServer.stop`, which then closes the connection unanswered."""
    reset: bool = False
    """Send nothing at all and abort the connection with a TCP reset (RST)."""
    drip: float = 0.0
    """Send the body one byte at a time, pausing this many seconds between bytes: a slow drip
    that defeats a per-read timeout but not a total deadline. Meant for short bodies."""
    truncate: int | None = None
    """Announce the full Content-Length, send only this many body bytes, then close the
    connection normally (FIN): a truncated body. Must be shorter than the body."""
    reset_after: int | None = None
    """Send the headers and this many body bytes (``0``: right after the headers), then abort
    the connection with a TCP reset. Must be shorter than the body."""

    _payload: bytes = field(init=False, repr=False, compare=False, hash=False)
    _wire_headers: tuple[tuple[str, str], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        headers = MappingProxyType(dict(self.headers))
        object.__setattr__(self, "headers", headers)
        if not 200 <= self.status <= 599:
            raise ValueError(f"status={self.status} is not a final HTTP status (200-599)")
        if self.json is not _NO_JSON and self.body:
            raise ValueError("give a Reply either body= or json=, not both")
        for name, seconds in (("delay", self.delay), ("drip", self.drip)):
            if not 0.0 <= seconds < math.inf:
                raise ValueError(f"{name}={seconds!r} must be a finite number of seconds >= 0")
        owned = sorted(name for name in headers if name.lower() in _SERVER_OWNED_HEADERS)
        if owned:
            raise ValueError(f"the server sets {', '.join(owned)} itself; use truncate= to lie")
        if self.truncate is not None and self.reset_after is not None:
            raise ValueError("truncate= closes the connection and reset_after= resets it: pick one")
        if self.reset and (self.drip or self.truncate is not None or self.reset_after is not None):
            raise ValueError(
                "reset=True sends nothing, so drip, truncate and reset_after cannot apply"
            )

        payload, content_type = _encode(self.body, self.json)
        for name, cut in (("truncate", self.truncate), ("reset_after", self.reset_after)):
            if cut is not None and not 0 <= cut < len(payload):
                raise ValueError(
                    f"{name}={cut} does not cut the {len(payload)}-byte body short "
                    f"(0 <= {name} < {len(payload)})"
                )

        wire: list[tuple[str, str]] = []
        if payload and not any(name.lower() == "content-type" for name in headers):
            wire.append(("Content-Type", content_type))
        wire.extend(headers.items())
        wire.append(("Content-Length", str(len(payload))))
        object.__setattr__(self, "_payload", payload)
        object.__setattr__(self, "_wire_headers", tuple(wire))


def _encode(body: bytes | str, value: object) -> tuple[bytes, str]:
    """A reply's payload and its default Content-Type."""
    if value is not _NO_JSON:
        return json.dumps(value).encode(), "application/json"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return bytes(body), "application/octet-stream"


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One request as the server received it (before it answered)."""

    method: str
    """Upper-case method, e.g. ``"POST"``."""
    path: str
    """The path without the query string, e.g. ``"/orders"``; not percent-decoded."""
    query_string: str
    """The raw query string without the ``?``, e.g. ``"date=2026-11-28&page=2"``."""
    query: dict[str, list[str]] = field(hash=False)
    """The parsed query string (blank values kept): ``{"date": ["2026-11-28"], "page": ["2"]}``."""
    headers: dict[str, str] = field(hash=False)
    """Request headers with lower-case names; repeated headers are joined with ``", "``."""
    body: bytes
    """The request body (``Content-Length`` or chunked), ``b""`` if there was none."""
    received_at: float
    """``time.monotonic()`` when the request had been read."""

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(slots=True)
class _Script:
    replies: tuple[Reply, ...]
    repeat_last: bool
    served: int = 0

    def next_reply(self, method: str, path: str) -> Reply:
        if self.served < len(self.replies):
            reply = self.replies[self.served]
        elif self.repeat_last:
            reply = self.replies[-1]
        else:
            reply = Reply(
                status=500,
                body=f"FlakyServer: the script for {method} {path} ran out after "
                f"{len(self.replies)} replies (repeat_last=False)\n",
            )
        self.served += 1
        return reply


class FlakyServer:
    """A scriptable HTTP/1.1 server on ``127.0.0.1:<ephemeral port>``; see the module docstring.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Routes may be scripted
    before or after starting; all methods are thread-safe. A stopped server cannot be restarted.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._scripts: dict[tuple[str, str], _Script] = {}
        self._log: list[Request] = []
        self._connections: set[socket.socket] = set()
        self._running: tuple[_HTTPServer, threading.Thread] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Bind a fresh port and serve in a daemon thread."""
        if self._running is not None:
            raise RuntimeError("this FlakyServer was already started; create a new one")
        httpd = _HTTPServer(self)
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"stalwart-FlakyServer-{httpd.server_port}",
            daemon=True,
        )
        self._running = (httpd, thread)
        thread.start()

    def stop(self) -> None:
        """Stop serving, interrupt delayed and dripping replies, close every connection.

        Returns promptly; idempotent; a no-op if the server never started.
        """
        if self._running is None or self._stopping.is_set():
            return
        httpd, thread = self._running
        self._stopping.set()
        httpd.shutdown()  # after this no new connection is accepted (nor tracked)
        httpd.server_close()
        thread.join()
        with self._lock:
            self._arrived.notify_all()
            for connection in self._connections:  # idle keep-alive ones block in a read
                with contextlib.suppress(OSError):  # already closed by a reset reply
                    connection.shutdown(socket.SHUT_RDWR)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``; the server must be started."""
        if self._running is None:
            raise RuntimeError("start the FlakyServer before asking for its URL")
        return f"http://{_HOST}:{self._running[0].server_port}"

    def url(self, path: str = "/") -> str:
        """The absolute URL of ``path`` (which may carry a query string) on this server."""
        return self.base_url + (path if path.startswith("/") else f"/{path}")

    def route(
        self,
        method: str,
        path: str,
        replies: Sequence[Reply] | Reply,
        *,
        repeat_last: bool = True,
    ) -> None:
        """Script ``method path``: each request consumes the next reply, in order.

        When the script is exhausted the last reply repeats, or, with ``repeat_last=False``,
        every further request gets a 500 saying the script ran out. Scripting a route again
        replaces its script and starts it from the beginning. Requests to routes never scripted
        get a 404. ``path`` has no query string; HEAD is routed on its own, not as GET.
        """
        script = (replies,) if isinstance(replies, Reply) else tuple(replies)
        if not script:
            raise ValueError(f"the script for {method} {path} needs at least one Reply")
        if not path.startswith("/") or "?" in path:
            raise ValueError(f"route path {path!r} must start with '/' and have no query string")
        with self._lock:
            self._scripts[(method.upper(), path)] = _Script(script, repeat_last)

    def fail_then(
        self,
        method: str,
        path: str,
        failures: int,
        *,
        status: int = 503,
        then: Reply | None = None,
    ) -> None:
        """Script ``failures`` empty answers with ``status``, then ``then`` (default: empty 200)."""
        if failures < 0:
            raise ValueError(f"failures={failures} must be >= 0")
        final = Reply() if then is None else then
        self.route(method, path, [Reply(status=status)] * failures + [final])

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._log)

    def requests_for(self, method: str, path: str) -> list[Request]:
        """The requests received for ``method path`` (path without query string), oldest first."""
        method = method.upper()
        return [r for r in self.requests if r.method == method and r.path == path]

    def count(self, method: str, path: str) -> int:
        """How many requests ``method path`` received."""
        return len(self.requests_for(method, path))

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` requests have arrived; False on timeout or stop."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self._log) >= n or self._stopping.is_set(), timeout)
            return len(self._log) >= n

    def _dispatch(self, request: Request) -> Reply:
        """Log ``request`` and pick its reply."""
        with self._lock:
            self._log.append(request)
            self._arrived.notify_all()
            script = self._scripts.get((request.method, request.path))
            if script is None:
                return Reply(
                    status=404, body=f"FlakyServer: no route for {request.method} {request.path}\n"
                )
            return script.next_reply(request.method, request.path)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close() must not wait for a handler stuck in a delay

    def __init__(self, flaky: FlakyServer) -> None:
        self.flaky = flaky
        super().__init__((_HOST, 0), _Handler)

    def process_request(self, request: _RequestType, client_address: Any) -> None:
        # Runs in the serve_forever thread, so once shutdown() returned no connection is untracked.
        with self.flaky._lock:
            self.flaky._connections.add(cast(socket.socket, request))
        super().process_request(request, client_address)

    def shutdown_request(self, request: _RequestType) -> None:
        with self.flaky._lock:
            self.flaky._connections.discard(cast(socket.socket, request))
        super().shutdown_request(request)

    def handle_error(self, request: _RequestType, client_address: Any) -> None:
        # A client that vanishes mid-request is routine for a flaky-server test, not a failure.
        _log.debug("FlakyServer: connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries a Content-Length
    server_version = "stalwart-FlakyServer"
    disable_nagle_algorithm = True  # headers and body go out as separate writes; no 40 ms stalls
    sys_version = ""
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read ``FlakyServer.requests``, not stderr."""

    def _respond(self) -> None:
        body = self._read_body()
        if body is None:
            self.send_error(400, "FlakyServer: unreadable request body")
            return
        target = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        reply = self.server.flaky._dispatch(
            Request(
                method=self.command.upper(),
                path=target.path,
                query_string=target.query,
                query=parse_qs(target.query, keep_blank_values=True),
                headers=headers,
                body=body,
                received_at=time.monotonic(),
            )
        )
        try:
            self._send(reply)
        except ConnectionError:
            _log.debug(
                "FlakyServer: client left during %s %s", self.command, target.path, exc_info=True
            )
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _respond

    def _read_body(self) -> bytes | None:
        """The request body, or None if its framing is invalid."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length", "0").strip()
        return self.rfile.read(int(length)) if length.isdigit() else None

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        while True:
            size = self.rfile.readline(_MAX_LINE).split(b";", 1)[0].strip()
            if not _CHUNK_SIZE_LINE.fullmatch(size):
                return None
            if int(size, 16) == 0:
                break
            chunks.append(self.rfile.read(int(size, 16)))
            self.rfile.readline(_MAX_LINE)  # the CRLF closing the chunk
        while self.rfile.readline(_MAX_LINE).strip():  # trailer fields, ignored
            pass
        return b"".join(chunks)

    def _send(self, reply: Reply) -> None:
        stopping = self.server.flaky._stopping
        if stopping.wait(reply.delay):  # True only if the server is stopping
            self.close_connection = True
            return
        if reply.reset:
            self._reset()
            return
        self.send_response(reply.status)
        for name, value in reply._wire_headers:
            self.send_header(name, value)
        self.end_headers()
        cut = reply.truncate if reply.truncate is not None else reply.reset_after
        body = b"" if self.command == "HEAD" else reply._payload[:cut]
        pieces = [body[i : i + 1] for i in range(len(body))] if reply.drip else [body]
        for i, piece in enumerate(pieces):
            if i and stopping.wait(reply.drip):
                self.close_connection = True
                return
            self.wfile.write(piece)
        if reply.reset_after is not None:
            self._reset()
        elif reply.truncate is not None:
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection: SO_LINGER 0, then close, so the peer gets a TCP RST."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.rfile.close()  # drop makefile()'s reference, or close() would not close the socket
        with self.server.flaky._lock:  # never while stop() is shutting connections down
            self.connection.close()
