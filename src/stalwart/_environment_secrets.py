"""Secrets a run knows from its environment, registered before its first step runs.

A step's own exception may quote the Slack webhook URL or the Pushgateway password (a step
that reads ``$SLACK_WEBHOOK_URL`` itself, a library error repeating a URL). Registered only
when the alert is sent, they would already be in the step-failed log line; registered here,
before the first step, every record and message is masked from the start.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from ._redact import register_secret

__all__ = ["register_environment_secrets"]


def register_environment_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Register ``$SLACK_WEBHOOK_URL`` and the credentials of ``$STALWART_PUSHGATEWAY``."""
    env = os.environ if environ is None else environ
    webhook = env.get("SLACK_WEBHOOK_URL", "").strip()
    if webhook:
        register_secret(webhook)
    gateway = env.get("STALWART_PUSHGATEWAY", "").strip()
    if "@" in gateway:
        try:
            parts = urlsplit(gateway if "//" in gateway else f"http://{gateway}")
        except ValueError:
            return
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        if password:
            register_secret(password)
            register_secret(base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))
