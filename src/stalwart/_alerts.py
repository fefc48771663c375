"""Failure alerts: an ``Alert`` record, the ``Alerter`` protocol, the log and Slack alerters.

Sending an alert never raises and never hides the original error: a webhook that is down,
slow or rate-limited is retried briefly (the whole send is bounded), then the failure is
logged, without the webhook URL (it is a secret).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from ._errors import HttpError, HttpStatusError, UsageError
from ._http import excerpt, parse_retry_after
from ._retry import RetryPolicy, call_with_retries

__all__ = ["Alert", "Alerter", "LogAlerter", "SlackWebhook", "send_all"]

log = logging.getLogger("stalwart.alert")

_SECTION_LIMIT = 3000  # Slack: a section block's text
_HEADER_LIMIT = 150  # Slack: a header block's plain text
_TEXT_LIMIT = 4000  # Slack truncates top-level text past 40,000; notifications show far less


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """What an alerter receives when a step fails."""

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

    @property
    def title(self) -> str:
        return f"stalwart: {self.pipeline} failed at step {self.step} (run {self.run_id})"

    def as_text(self) -> str:
        lines = [
            self.title,
            f"{self.error_type}: {self.error}",
            f"attempts: {self.attempts}; ran {self.duration_s:.1f} s on {self.host}",
        ]
        if self.dead_letter_id:
            lines.append(f"dead letter: {self.dead_letter_id} (replay: {self.replay_command})")
        if self.resume_command:
            lines.append(f"resume: {self.resume_command}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_host() -> str:
    return socket.gethostname()


@runtime_checkable
class Alerter(Protocol):
    """Anything with ``send(alert)``. It should not raise; if it does, the runner logs it."""

    def send(self, alert: Alert) -> None: ...


class LogAlerter:
    """Logs the alert at ERROR on ``stalwart.alert`` (always on, whatever else is set)."""

    def send(self, alert: Alert) -> None:
        log.error(
            "ALERT %s: %s: %s",
            alert.title,
            alert.error_type,
            alert.error,
            extra={
                "alert": True,
                "error_type": alert.error_type,
                "error": alert.error,
                "attempts": alert.attempts,
                "duration_s": round(alert.duration_s, 3),
                "dead_letter_id": alert.dead_letter_id,
            },
        )


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(alert: Alert) -> dict[str, Any]:
    """The incoming-webhook body: ``text`` (notifications) and ``blocks`` within Slack's
    limits (3,000 characters per section, 150 per header)."""
    error_line = f"*{_mrkdwn(alert.error_type)}*: "
    fence = "```"
    room = _SECTION_LIMIT - len(error_line) - 2 * len(fence) - 2
    error_body = f"{fence}{_cut(_mrkdwn(alert.error), room)}{fence}"
    facts = [
        f"*Pipeline*\n{_mrkdwn(alert.pipeline)}",
        f"*Run*\n{_mrkdwn(alert.run_id)}",
        f"*Step*\n{_mrkdwn(alert.step)}",
        f"*Attempts*\n{alert.attempts}",
        f"*Duration*\n{alert.duration_s:.1f} s",
        f"*Host*\n{_mrkdwn(alert.host)}",
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(alert.title, _HEADER_LIMIT)},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": error_line + "\n" + error_body}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": _cut(f, 2000)} for f in facts],
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
    if actions:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _cut("\n".join(actions), _SECTION_LIMIT)},
            }
        )
    text = _cut(f":rotating_light: {alert.title}: {alert.error_type}: {alert.error}", _TEXT_LIMIT)
    return {"text": text, "blocks": blocks}


class SlackWebhook:
    """Posts alerts to a Slack incoming webhook (https://api.slack.com/messaging/webhooks).

    Success is HTTP 200 with body ``ok``. A 429 honours Retry-After; 5xx, timeouts and
    connection errors get a couple of quick retries; each request times out after ``timeout``
    seconds and the whole send after about ``budget`` seconds. ``send`` never raises: a
    failure is logged without the URL, which is a secret (it is also kept out of ``repr``).
    """

    def __init__(
        self, url: str, *, timeout: float = 10.0, attempts: int = 3, budget: float = 30.0
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise UsageError("SlackWebhook needs an http(s) URL (SLACK_WEBHOOK_URL)")
        self._url = url
        self.timeout = timeout
        self.policy = RetryPolicy(
            attempts=attempts, initial=1.0, maximum=5.0, deadline=max(0.0, budget - timeout)
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SlackWebhook | None:
        """A ``SlackWebhook`` for ``$SLACK_WEBHOOK_URL``, or ``None`` if it is unset/empty."""
        url = (environ if environ is not None else os.environ).get("SLACK_WEBHOOK_URL", "")
        return cls(url.strip()) if url.strip() else None

    def __repr__(self) -> str:
        return "SlackWebhook(url='***')"

    def send(self, alert: Alert) -> None:
        try:
            self._post(slack_payload(alert))
        except HttpError as exc:
            log.error(  # noqa: TRY400 - our own error, already says everything; no URL in it
                "Slack alert for %s/%s was not delivered: %s (webhook URL withheld)",
                alert.pipeline,
                alert.step,
                exc,
            )
        except Exception:
            log.exception(
                "Slack alert for %s/%s was not delivered (webhook URL withheld)",
                alert.pipeline,
                alert.step,
            )
        else:
            log.info("Slack alert sent for %s/%s", alert.pipeline, alert.step)

    def _post(self, payload: dict[str, Any]) -> None:
        import httpx  # noqa: PLC0415 - loaded only when an alert is actually sent

        body = json.dumps(payload).encode("utf-8")

        def attempt() -> None:
            try:
                response = httpx.post(
                    self._url,
                    content=body,
                    headers={"Content-Type": "application/json"},
                    timeout=self.timeout,
                )
            except httpx.HTTPError as exc:
                transient = isinstance(exc, httpx.TimeoutException | httpx.NetworkError)
                raise HttpError(
                    f"{type(exc).__name__} talking to the Slack webhook",
                    method="POST",
                    url="<slack webhook>",
                    transient=transient,
                ) from None
            if response.status_code == 200 and response.text.strip() == "ok":
                return
            raise HttpStatusError(
                f"Slack answered {response.status_code}: {excerpt(response.content, 100)!r}",
                method="POST",
                url="<slack webhook>",
                status=response.status_code,
                body_excerpt=excerpt(response.content, 100),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )

        call_with_retries(
            attempt,
            self.policy,
            operation="POST <slack webhook>",
            classify=lambda exc: isinstance(exc, HttpError) and exc.transient,
            retry_after=lambda exc: getattr(exc, "retry_after", None),
            logger=log,
        )


def send_all(alerters: list[Any], alert: Alert) -> None:
    """Send ``alert`` through every alerter; an alerter that raises is logged, never raised."""
    for alerter in alerters:
        try:
            alerter.send(alert)
        except Exception:
            log.exception("alerter %r failed; carrying on", alerter)
