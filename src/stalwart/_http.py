"""An httpx client that survives a flaky API without repeating what must not be repeated.

- Every request has a timeout (default 30 s per network operation, 10 s to connect), a total
  deadline (default 300 s, body included) and a maximum body size (default 256 MiB).
- Redirects to another origin (scheme, host or port) never carry a secret header.
- Transient failures (timeouts, connection errors, 408/425/429/5xx) are retried under a
  ``RetryPolicy``; ``Retry-After`` (seconds or HTTP-date) lengthens a wait, never shortens
  it, and a wait that would cross the deadline fails the call at once.
- POST and PATCH are retried only when that is safe: the request never reached the server
  (connect error), or it carries an ``Idempotency-Key``. Inside a pipeline step each
  POST/PATCH gets a deterministic key (see ``StepScope.idempotency_key``).
- Errors name the method, the redacted URL, the status and a short body excerpt; secrets
  (credentials, tokens in URLs) never appear in logs or exceptions.

httpx is imported on first use, so ``import stalwart`` stays fast.
"""

from __future__ import annotations

import base64
import hashlib
import json as jsonlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from ._bounded_response import (
    DEFAULT_MAX_BODY,
    DEFAULT_TOTAL_TIMEOUT,
    LimitExceeded,
    Limits,
    send_bounded,
)
from ._classify import httpx_cause, is_transient
from ._deadline_network import install_deadline_network
from ._errors import HttpError, HttpStatusError, ResponseFormatError
from ._policy import RetryPolicy
from ._redact import (
    Scrubber,
    install_httpx_log_redaction,
    is_secret_header,
    redact_url,
    register_secret,
    secrets_in_url,
)
from ._retry import RetryStats, call_with_retries
from ._scope import StepScope

if TYPE_CHECKING:
    import httpx

    from ._scope import DeadLetterWriter

__all__ = ["HttpClient", "Response", "StepHttp", "excerpt", "parse_retry_after"]

log = logging.getLogger("stalwart.http")

_MISSING: Any = object()
_SAFE_TO_REPEAT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_EXCERPT = 200


def excerpt(content: bytes, limit: int = _EXCERPT) -> str:
    """The start of a body, as one readable line (invalid UTF-8 replaced)."""
    text = " ".join(content[: limit * 4].decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None
    if it is absent or unreadable. A date in the past means 0."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        import email.utils  # noqa: PLC0415 - rare path; email costs ~30 ms to import

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less date is not one
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


class Response:
    """An httpx response whose ``json()`` says what came back when it is not JSON.

    Everything else (``status_code``, ``headers``, ``content``, ``text``...) is httpx's.
    """

    __slots__ = ("_operation", "_scrub", "raw")

    def __init__(
        self, raw: httpx.Response, operation: str, scrub: Callable[[str], str] = str
    ) -> None:
        self.raw = raw
        self._operation = operation
        self._scrub = scrub

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    @property
    def status_code(self) -> int:
        return self.raw.status_code

    @property
    def content(self) -> bytes:
        return self.raw.content

    @property
    def headers(self) -> httpx.Headers:
        return self.raw.headers

    @property
    def text(self) -> str:
        return self.raw.text

    def json(self) -> Any:
        """The body as JSON, or ``ResponseFormatError`` (permanent) naming the URL, the
        status, the content type and a short excerpt of what came back instead."""
        content_type = self.raw.headers.get("content-type", "no content type")
        body = self.raw.content
        try:
            return jsonlib.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problem = f"is not UTF-8 text (byte {exc.start})"
        except jsonlib.JSONDecodeError as exc:
            problem = f"is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        except RecursionError:
            problem = "is JSON nested too deeply to parse"
        method, _, url = self._operation.partition(" ")
        raise ResponseFormatError(
            f"{self._operation} -> {self.raw.status_code}: expected JSON, but the body "
            f"({content_type}, {len(body)} bytes) {problem}: {self._scrub(excerpt(body))!r}",
            method=method,
            url=url,
        )

    def __repr__(self) -> str:
        return f"<Response [{self.raw.status_code}] {self._operation}>"


class RequestOptions(TypedDict, total=False):
    """The keyword options of every verb (``get``, ``post``...): those of ``request``."""

    params: Mapping[str, Any] | None
    headers: Mapping[str, str] | None
    content: bytes | str | None
    json: Any
    data: Mapping[str, Any] | None
    timeout: float | None
    idempotency_key: str | None
    retry: RetryPolicy | None
    dead_letter: DeadLetterWriter | bool


class _Verbs:
    """``get``/``post``/... over ``request``, shared by ``HttpClient`` and ``StepHttp``."""

    __slots__ = ()

    def _bound(self) -> tuple[HttpClient, StepScope | None]:
        raise NotImplementedError

    def get(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        return self.request("GET", url, **options)

    def head(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        return self.request("HEAD", url, **options)

    def post(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        return self.request("POST", url, **options)

    def put(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        return self.request("PUT", url, **options)

    def patch(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        return self.request("PATCH", url, **options)

    def delete(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        return self.request("DELETE", url, **options)

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = _MISSING,
        data: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetterWriter | bool = False,
    ) -> Response:
        """Send one request, retrying transient failures; raise ``HttpError`` if it fails.

        A non-2xx final answer raises ``HttpStatusError``. ``timeout`` overrides the
        client's for this call. ``idempotency_key`` makes a POST/PATCH safe to retry (sent as
        ``Idempotency-Key``). ``retry`` overrides the policy for this call. ``dead_letter``
        (a ``DeadLetterStore``, or ``True`` inside a step) keeps the request for replay when
        it fails for good.
        """
        client, scope = self._bound()
        return client._send(
            _Call(
                method=method.upper(),
                url=url,
                params=params,
                headers=headers,
                content=content,
                json=json,
                data=data,
                timeout=timeout,
                idempotency_key=idempotency_key,
                policy=retry,
                dead_letter=dead_letter,
            ),
            scope,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    """The arguments of one ``request`` call."""

    method: str
    url: str
    params: Mapping[str, Any] | None
    headers: Mapping[str, str] | None
    content: bytes | str | None
    json: Any
    data: Mapping[str, Any] | None
    timeout: float | None
    idempotency_key: str | None
    policy: RetryPolicy | None
    dead_letter: DeadLetterWriter | bool


class HttpClient(_Verbs):
    """An httpx-based client with default timeouts, retries per call and redacted errors.

    ``timeout``: seconds for each network operation (``connect_timeout`` for connecting).
    ``total_timeout``: seconds one request may take in all, body included (default 300);
    ``max_body_size``: bytes of one response body (default 256 MiB). A response that breaks
    either fails the call with an ``HttpError`` naming both (the deadline is transient).
    Redirects are followed one hop at a time; on a change of scheme, host or port every
    secret header (``Authorization``, ``X-Api-Key``...) is dropped.
    ``retry``: the ``RetryPolicy`` of every call (a step's ``retry=`` overrides it).
    ``headers``/``auth``: credentials belong here, not on single calls: dead-letter replay
    re-sends through the pipeline's client, so only the client's credentials are replayed.
    ``transport``: an httpx transport (a proxy, a custom TLS setup...).
    Thread-safe; close it with ``close()`` or use it as a context manager.
    """

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        base_url: str = "",
        follow_redirects: bool = True,
        transport: httpx.BaseTransport | None = None,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_body_size: int = DEFAULT_MAX_BODY,
    ) -> None:
        if not (0 < timeout < math.inf and 0 < connect_timeout < math.inf):
            raise ValueError("HttpClient timeouts must be positive and finite: no request without")
        if not 0 < total_timeout < math.inf:
            raise ValueError(f"total_timeout must be positive and finite, not {total_timeout!r}")
        if isinstance(max_body_size, bool) or not (
            isinstance(max_body_size, int) and max_body_size > 0
        ):
            raise ValueError(f"max_body_size must be a positive integer, not {max_body_size!r}")
        self.limits = Limits(total_timeout=float(total_timeout), max_body=max_body_size)
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retry = retry or RetryPolicy()
        self._headers = dict(headers or {})
        self._auth = auth
        self._base_url = base_url
        self._follow_redirects = follow_redirects
        self._transport = transport
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        secrets = [v for k, v in self._headers.items() if is_secret_header(k)]
        secrets += [part for v in list(secrets) for part in _credential_parts(v)]
        if auth is not None:
            basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            secrets += [auth[1], basic]
        self._secrets = secrets

    def __repr__(self) -> str:
        return f"HttpClient(timeout={self.timeout}, retry={self.retry!r})"

    def _bound(self) -> tuple[HttpClient, StepScope | None]:
        return self, None

    def _httpx(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx  # noqa: PLC0415 - loaded on first request, not at import

                install_httpx_log_redaction()
                transport = self._transport
                if transport is None:  # ours: its sockets honour each request's deadline
                    transport = httpx.HTTPTransport()
                    install_deadline_network(transport)
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                    headers=self._headers,
                    auth=self._auth,
                    base_url=self._base_url,
                    follow_redirects=self._follow_redirects,
                    transport=transport,
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _build(self, client: httpx.Client, call: _Call) -> httpx.Request:
        import httpx  # noqa: PLC0415 - already loaded by _httpx()

        headers, content = call.headers, call.content
        if call.json is not _MISSING:
            content = jsonlib.dumps(call.json, separators=(",", ":"), ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        elif isinstance(content, str):
            content = content.encode("utf-8")
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if call.timeout is not None:
            if not 0 < call.timeout < math.inf:
                raise ValueError(f"timeout must be positive and finite, not {call.timeout!r}")
            timeout = httpx.Timeout(call.timeout, connect=min(call.timeout, self.connect_timeout))
        try:
            return client.build_request(
                call.method,
                call.url,
                params=call.params,
                headers=headers,
                content=content,
                data=call.data,
                timeout=timeout,
            )
        except httpx.InvalidURL as exc:
            raise HttpError(
                f"{call.method} {redact_url(call.url)}: invalid URL "
                f"({Scrubber(secrets_in_url(call.url))(str(exc))})",
                method=call.method,
                url=redact_url(call.url),
            ) from None

    def _send(self, call: _Call, scope: StepScope | None) -> Response:
        client = self._httpx()
        import httpx  # noqa: PLC0415 - already loaded by _httpx()

        request = self._build(client, call)
        body = request.read()
        method = call.method
        key = call.idempotency_key
        if method in ("POST", "PATCH") and "idempotency-key" not in request.headers:
            if key is None and scope is not None:
                key = scope.idempotency_key(
                    method, request.url.path, hashlib.sha256(body).hexdigest()
                )
            if key is not None:
                request.headers["Idempotency-Key"] = key
        repeatable = method in _SAFE_TO_REPEAT or "idempotency-key" in request.headers
        shown = redact_url(str(request.url))
        operation = f"{method} {shown}"
        call_secrets = [
            *self._secrets,
            *secrets_in_url(str(request.url)),
            *_userinfo_secrets(request),
        ]
        for name, value in request.headers.items():
            if is_secret_header(name):
                call_secrets += [value, *_credential_parts(value)]
        scrub = Scrubber(call_secrets)

        def attempt() -> httpx.Response:
            try:
                response = send_bounded(
                    client, request, self.limits, follow_redirects=self._follow_redirects
                )
            except httpx.HTTPError as exc:
                raise _transport_error(exc, method, shown, scrub) from None
            except LimitExceeded as exc:
                raise HttpError(
                    f"{operation} failed: {exc}",
                    method=method,
                    url=shown,
                    cause="timeout" if exc.kind == "deadline" else "",
                ) from None
            if response.is_success:
                return response
            body_excerpt = scrub(excerpt(response.content))
            raise HttpStatusError(
                f"{operation} -> {response.status_code} {response.reason_phrase}: {body_excerpt!r}",
                method=method,
                url=shown,
                status=response.status_code,
                body_excerpt=body_excerpt,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )

        def classify(exc: BaseException) -> bool:
            # Transient, and safe to send again: repeatable, or it never reached the server.
            if not isinstance(exc, HttpError) or not is_transient(exc):
                return False
            return repeatable or exc.not_sent

        stats = RetryStats()
        effective = call.policy or (scope.retry_policy if scope else None) or self.retry
        try:
            raw = call_with_retries(
                attempt,
                effective,
                operation=operation,
                classify=classify,
                retry_after=lambda exc: getattr(exc, "retry_after", None),
                describe=_describe,
                stats=stats,
                logger=log,
            )
        except HttpError as exc:
            exc.attempts = stats.attempts
            exc.args = (_final_message(exc, stats, effective, repeatable),)
            if call.dead_letter:
                try:
                    _keep_dead_letter(
                        call.dead_letter, scope, request=request, body=body, exc=exc, stats=stats
                    )
                except Exception as lost:  # a full disk must not hide why the request failed
                    log.error(
                        "%s: the failed request could not be kept as a dead letter (%s)",
                        operation,
                        lost,
                        exc_info=True,
                    )
                    exc.add_note(f"the dead letter was not kept: {lost}")
            raise
        return Response(raw, operation, scrub)


_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "apikey", "negotiate"})


def _credential_parts(value: str) -> list[str]:
    """The secret words of a credential header: ``Bearer abc`` -> ``abc`` (the scheme name is
    not a secret, and masking it would mask the word everywhere in every message)."""
    return [part for part in value.split() if part.lower() not in _AUTH_SCHEMES]


def _userinfo_secrets(request: httpx.Request) -> list[str]:
    """The secrets of a ``http://user:password@host`` URL as httpx sends them: the decoded
    password and the ``Authorization: Basic`` token built from both. Registered process-wide,
    so a server that echoes the header back cannot put it in any log, alert or file."""
    url = request.url
    if not url.userinfo:
        return []
    token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode("ascii")
    found = [token, url.password, url.userinfo.decode("ascii", "replace")]
    for secret in found:
        register_secret(secret)
    return found


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HttpStatusError):
        return str(exc.status)
    text = str(exc)
    return text.split(" failed: ", 1)[-1]


def _transport_error(
    exc: httpx.HTTPError, method: str, shown: str, scrub: Callable[[str], str]
) -> HttpError:
    import httpx  # noqa: PLC0415

    # The request never reached the server: safe to repeat even a POST.
    not_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    detail = scrub(str(exc)) or "no detail"
    return HttpError(
        f"{method} {shown} failed: {type(exc).__name__}: {detail}",
        method=method,
        url=shown,
        cause=httpx_cause(exc),
        not_sent=not_sent,
    )


def _final_message(exc: HttpError, stats: RetryStats, policy: RetryPolicy, repeatable: bool) -> str:
    message = str(exc)
    plural = "s" if stats.attempts != 1 else ""
    if stats.stop_reason == "deadline":
        left = max(0.0, policy.deadline - stats.elapsed)
        asked = stats.retry_after
        why = (
            f"the server asked to wait {asked:.1f} s (Retry-After), which"
            if asked is not None and asked >= stats.next_wait
            else f"the next backoff wait ({stats.next_wait:.1f} s)"
        )
        return (
            f"{message} [gave up after {stats.attempts} attempt{plural} in {stats.elapsed:.1f} s: "
            f"{why} would cross the {policy.deadline:g} s retry deadline ({left:.1f} s left); "
            f"not waiting]"
        )
    if stats.attempts > 1:
        return f"{message} [after {stats.attempts} attempts in {stats.elapsed:.1f} s]"
    if exc.transient and not repeatable and not exc.not_sent:
        return (
            f"{message} [not retried: {exc.method} is not safe to repeat without an "
            f"Idempotency-Key]"
        )
    return message


def _keep_dead_letter(
    target: DeadLetterWriter | bool,
    scope: StepScope | None,
    *,
    request: httpx.Request,
    body: bytes,
    exc: HttpError,
    stats: RetryStats,
) -> None:
    writer = scope.dead_letter if (target is True and scope is not None) else target
    if writer is None or isinstance(writer, bool):
        log.warning("dead_letter=True outside a pipeline step needs a DeadLetterStore: not kept")
        return
    exc.dead_letter_id = writer.keep_request(
        request=request, body=body, error=exc, attempts=stats.attempts, elapsed=stats.elapsed
    )


class StepHttp(_Verbs):
    """``ctx.http``: the pipeline's ``HttpClient``, bound to the running step.

    Same verbs and options as ``HttpClient``; POST/PATCH get the step's deterministic
    Idempotency-Key, the step's ``retry=`` policy applies, retries are counted in the
    step's marker and metrics, and ``dead_letter=True`` keeps failed requests for replay.
    """

    __slots__ = ("_client", "_scope")

    def __init__(self, client: HttpClient, scope: StepScope) -> None:
        self._client = client
        self._scope = scope

    @property
    def client(self) -> HttpClient:
        return self._client

    def _bound(self) -> tuple[HttpClient, StepScope | None]:
        return self._client, self._scope
