"""Failure alerts: an ``Alert`` record, the ``Alerter`` protocol, the log and Slack alerters.

Sending an alert never raises and never hides the original error: a webhook that is down,
slow or rate-limited is retried briefly (the whole send is bounded), then the failure is
logged, without the webhook URL (it is a secret).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._bounded_response import LimitExceeded, Limits, send_bounded
from ._classify import httpx_cause, is_transient
from ._deadline_network import install_deadline_network
from ._errors import HttpError, HttpStatusError, UsageError
from ._http import excerpt, parse_retry_after
from ._policy import RetryPolicy
from ._redact import install_httpx_log_redaction, register_secret, scrub_registered
from ._retry import call_with_retries

if TYPE_CHECKING:
    import httpx

__all__ = ["Alert", "Alerter", "LogAlerter", "SlackWebhook", "send_all", "slack_payload"]

log = logging.getLogger("stalwart.alert")

_SECTION_LIMIT = 3000  # Slack: a section block's text
_HEADER_LIMIT = 150  # Slack: a header block's plain text
_FIELD_LIMIT = 2000  # Slack: each field of a section block
_TEXT_LIMIT = 4000  # Slack truncates top-level text past 40,000; notifications show far less
_FENCE = "```"
_SHOWN = "<slack webhook>"  # what logs and errors say instead of the URL
_MAX_ANSWER = 64 * 1024  # Slack answers "ok" or a short error; more is not Slack
_REPEATS = (
    "Repeats of this failure (same step, same error type) will not alert again "
    "until a run succeeds."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """What an alerter receives when a step fails (``step`` is empty when the run failed
    before its first step: the state directory or the lock could not be set up).

    ``error`` is ``str(exception)`` (stalwart's own errors never carry a secret);
    ``attempts`` counts the tries of the failing call; ``resume_command`` re-runs the run;
    ``dead_letter_id``/``replay_command`` are set when the failed request was kept.
    """

    pipeline: str
    run_id: str
    step: str
    error_type: str
    error: str
    attempts: int
    duration_s: float
    host: str
    resume_command: str = ""
    dead_letter_id: str | None = None
    replay_command: str = ""
    kind: str = "failure"
    """``failure``, or ``recovery``: the first success after failed runs (``error`` says so)."""
    streak: int = 1
    """Failed runs in a row, failing this way: a failure alerts at 1 only; a recovery counts
    the streak that ended."""

    @property
    def message(self) -> str:
        """The error's message (the same as ``error``)."""
        return self.error

    @property
    def duration(self) -> float:
        """Seconds the step ran before it failed (the same as ``duration_s``)."""
        return self.duration_s

    @property
    def title(self) -> str:
        if self.kind == "recovery":
            return f"stalwart: {self.pipeline} recovered (run {self.run_id})"
        where = f"at step {self.step}" if self.step else "before its first step"
        return f"stalwart: {self.pipeline} failed {where} (run {self.run_id})"

    def as_text(self) -> str:
        if self.kind == "recovery":
            return f"{self.title}\n{self.error}"
        lines = [
            self.title,
            f"{self.error_type}: {self.error}",
            f"attempts: {self.attempts}; ran {self.duration_s:.1f} s on {self.host}",
        ]
        if self.dead_letter_id:
            lines.append(f"dead letter: {self.dead_letter_id} (replay: {self.replay_command})")
        if self.resume_command:  # an alert of a run (not one built by hand)
            lines.append(f"resume: {self.resume_command}")
            lines.append(_REPEATS)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _webhook_problem(url: str) -> str:
    """What is wrong with a webhook URL (empty if nothing): scheme, host, port, spaces."""
    from urllib.parse import urlsplit  # noqa: PLC0415 - only when the variable is set

    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return "it does not start with https://"
        if not parts.hostname:
            return "it has no host name"
        if any(c.isspace() or ord(c) < 32 for c in url):
            return "it contains spaces or control characters"
        _ = parts.port  # a port that is not a number raises ValueError
    except ValueError:
        return "it cannot be parsed as a URL"
    return ""


def default_host() -> str:
    return socket.gethostname()


@runtime_checkable
class Alerter(Protocol):
    """Anything with ``send(alert)``. It should not raise; if it does, the runner logs it."""

    def send(self, alert: Alert) -> bool | None: ...


class LogAlerter:
    """Logs the alert at ERROR on ``stalwart.alert`` (always on, whatever else is set)."""

    def send(self, alert: Alert) -> None:
        if alert.kind == "recovery":
            log.warning(
                "RECOVERED %s: %s",
                alert.title,
                alert.error,
                extra={
                    "alert": True,
                    "recovered": True,
                    "pipeline": alert.pipeline,
                    "run_id": alert.run_id,
                    "streak": alert.streak,
                },
            )
            return
        error = scrub_registered(alert.error)
        log.error(
            "ALERT %s: %s: %s",
            alert.title,
            alert.error_type,
            error,
            extra={
                "alert": True,
                "pipeline": alert.pipeline,
                "run_id": alert.run_id,
                "step": alert.step,
                "error_type": alert.error_type,
                "error": error,
                "attempts": alert.attempts,
                "duration_s": round(alert.duration_s, 3),
                "dead_letter_id": alert.dead_letter_id,
                "resume_command": alert.resume_command,
            },
        )


def _mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, an ellipsis marking a cut (never in the
    middle of an ``&amp;``-style escape)."""
    if len(text) <= limit:
        return text
    return re.sub(r"&[a-z]{0,3}$", "", text[: limit - 1]) + "…"


def slack_payload(alert: Alert) -> dict[str, Any]:
    """The incoming-webhook body: ``text`` (the notification) and ``blocks`` within Slack's
    limits: 150 characters in the header, 3,000 per section, 2,000 per field."""
    if alert.kind == "recovery":
        text = _cut(
            f":white_check_mark: {_mrkdwn(alert.title)}: {_mrkdwn(alert.error)}", _TEXT_LIMIT
        )
        return {
            "text": text,
            "blocks": [
                {
                    "type": "header",
                    "text": {"type": "plain_text", "text": _cut(alert.title, _HEADER_LIMIT)},
                },
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": _cut(_mrkdwn(alert.error), _SECTION_LIMIT)},
                },
            ],
        }
    error = scrub_registered(alert.error).replace(_FENCE, "'''") or "(no message)"
    error_line = _cut(f"*{_mrkdwn(alert.error_type)}*", 200) + "\n"
    room = _SECTION_LIMIT - len(error_line) - 2 * len(_FENCE)
    error_text = f"{error_line}{_FENCE}{_cut(_mrkdwn(error), room)}{_FENCE}"
    facts = [
        f"*Pipeline*\n{_mrkdwn(alert.pipeline)}",
        f"*Run*\n{_mrkdwn(alert.run_id)}",
        f"*Step*\n{_mrkdwn(alert.step) if alert.step else '(before the first)'}",
        f"*Attempts*\n{alert.attempts}",
        f"*Duration*\n{alert.duration_s:.1f} s",
        f"*Host*\n{_mrkdwn(alert.host)}",
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(alert.title, _HEADER_LIMIT)},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": error_text}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": _cut(f, _FIELD_LIMIT)} for f in facts],
        },
    ]
    actions = []
    if alert.dead_letter_id:
        actions.append(
            f"*Dead letter* `{_mrkdwn(alert.dead_letter_id)}`: replay with "
            f"`{_mrkdwn(alert.replay_command)}`"
        )
    if alert.resume_command:
        actions.append(f"*Resume* with `{_mrkdwn(alert.resume_command)}`")
    if alert.resume_command:  # an alert of a run (not one built by hand)
        actions.append(f"_{_REPEATS}_")
    if actions:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _cut("\n".join(actions), _SECTION_LIMIT)},
            }
        )
    text = _cut(
        f":rotating_light: {_mrkdwn(alert.title)}: {_mrkdwn(alert.error_type)}: {_mrkdwn(error)}",
        _TEXT_LIMIT,
    )
    return {"text": text, "blocks": blocks}


class SlackWebhook:
    """Posts alerts to a Slack incoming webhook (https://api.slack.com/messaging/webhooks).

    Success is HTTP 200 with body ``ok``. A 429 honours Retry-After; 408, 5xx, timeouts and
    connection errors get a couple of quick retries; other answers (400 ``invalid_payload``,
    403, 404 ``no_service``, 410 ``channel_is_archived``) are not retried. Each request gives
    up after ``timeout`` seconds in all (body included; an answer over 64 KiB is refused),
    and no retry starts later than ``budget - timeout`` seconds after the first; the send
    runs in a helper thread that is abandoned at ``budget`` seconds, so ``send`` returns
    within ``budget`` seconds whatever the server does. ``send`` never raises: a failure is
    logged without the URL, which is a secret (kept out of ``repr`` and masked in every URL
    stalwart logs, httpx's request log included).
    """

    def __init__(
        self, url: str, *, timeout: float = 10.0, attempts: int = 3, budget: float = 30.0
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise UsageError("SlackWebhook needs an http(s) URL (SLACK_WEBHOOK_URL)")
        if not 0 < timeout <= budget:
            raise UsageError("SlackWebhook: timeout must be > 0 and no longer than budget")
        register_secret(url)
        self._url = url
        self.timeout = float(timeout)
        self.budget = float(budget)
        self.policy = RetryPolicy(
            attempts=attempts, initial=1.0, maximum=5.0, deadline=budget - timeout
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SlackWebhook | None:
        """A ``SlackWebhook`` for ``$SLACK_WEBHOOK_URL``, or ``None`` if it is unset or empty.
        A value that is not an http(s) URL raises ``UsageError`` (exit 2 before any step
        runs, like every other malformed setting), without repeating the value: a secret."""
        url = (environ if environ is not None else os.environ).get("SLACK_WEBHOOK_URL", "")
        url = url.strip()
        if not url:
            return None
        problem = _webhook_problem(url)
        if problem:
            raise UsageError(
                f"SLACK_WEBHOOK_URL is set but is not an http(s) URL: {problem} (value withheld: "
                "it is a secret); set it to the webhook's https://hooks.slack.com/... URL or "
                "unset it"
            )
        return cls(url)

    def __repr__(self) -> str:
        return "SlackWebhook(url='***')"

    def send(self, alert: Alert) -> bool:
        """Post ``alert``; log (never raise) if it cannot be delivered. True if delivered."""
        where = f"{alert.pipeline}/{alert.step or '-'} (run {alert.run_id})"
        outcome: list[Exception | None] = []

        def post() -> None:
            try:
                self._post(slack_payload(alert))
            except Exception as exc:  # noqa: BLE001 - handed to the caller's thread below
                outcome.append(exc)
            else:
                outcome.append(None)

        # A thread bounds the whole send, however a server stalls (even inside its headers).
        worker = threading.Thread(target=post, name="stalwart-slack-alert", daemon=True)
        worker.start()
        worker.join(self.budget)
        if not outcome:
            log.error(
                "Slack alert for %s was not delivered: no answer within %g s "
                "(webhook URL withheld)",
                where,
                self.budget,
                extra={"alert_delivered": False},
            )
            return False
        exc = outcome[0]
        if exc is not None:
            log.error(
                "Slack alert for %s was not delivered: %s: %s (webhook URL withheld)",
                where,
                type(exc).__name__,
                scrub_registered(str(exc)),
                # An HttpError says all there is to say in one line (and carries no URL); a
                # traceback would also drag in the step's error as its context. Bugs get one.
                exc_info=exc if not isinstance(exc, HttpError) else None,
                extra={"alert_delivered": False},
            )
            return False
        log.info("Slack alert sent for %s", where, extra={"alert_delivered": True})
        return True

    def _post(self, payload: dict[str, Any]) -> None:
        import httpx  # noqa: PLC0415 - loaded only when an alert is actually sent

        install_httpx_log_redaction()
        body = json.dumps(payload).encode("utf-8")
        transport = httpx.HTTPTransport()
        install_deadline_network(transport)  # each attempt ends by its deadline, headers too
        # one TLS setup for all attempts
        with httpx.Client(timeout=self.timeout, transport=transport) as client:
            call_with_retries(
                lambda: self._attempt(client, body),
                self.policy,
                operation=f"POST {_SHOWN}",
                classify=is_transient,
                retry_after=lambda exc: getattr(exc, "retry_after", None),
                describe=str,
                logger=log,
            )

    def _attempt(self, client: httpx.Client, body: bytes) -> None:
        import httpx  # noqa: PLC0415 - already loaded by _post

        limits = Limits(
            total_timeout=self.timeout,
            max_body=_MAX_ANSWER,
            timeout_option="SlackWebhook(timeout=...)",
            body_option="fixed",
        )
        try:
            request = client.build_request(
                "POST", self._url, content=body, headers={"Content-Type": "application/json"}
            )
            response = send_bounded(client, request, limits, follow_redirects=False)
        except LimitExceeded as exc:
            raise HttpError(
                f"the Slack webhook's answer broke a limit: {exc}",
                method="POST",
                url=_SHOWN,
                cause="timeout" if exc.kind == "deadline" else "",
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise HttpError(
                f"{type(exc).__name__} talking to the Slack webhook",
                method="POST",
                url=_SHOWN,
                cause=httpx_cause(exc),
            ) from None
        if response.status_code == 200 and response.text.strip() == "ok":
            return
        shown = scrub_registered(excerpt(response.content, 100))
        raise HttpStatusError(
            f"Slack answered {response.status_code}: {shown!r}",
            method="POST",
            url=_SHOWN,
            status=response.status_code,
            body_excerpt=shown,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )


def send_all(alerters: Sequence[Alerter], alert: Alert) -> bool:
    """Send ``alert`` through every alerter; an alerter that raises is logged, never raised.
    True if every alerter delivered it (an alerter returning ``None`` counts as delivered)."""
    delivered = True
    for alerter in alerters:
        try:
            delivered = alerter.send(alert) is not False and delivered
        except Exception:
            log.exception("alerter %r failed; carrying on", alerter)
            delivered = False
    return delivered
