"""Metrics sinks (placeholder until the observability work lands)."""

from __future__ import annotations

from typing import Any

__all__ = ["sinks_from_env"]


def sinks_from_env() -> list[Any]:
    return []


class MemoryMetrics:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def handle(self, event: Any) -> None:
        self.events.append(event)
