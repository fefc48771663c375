"""Fixtures of the reliability suite, and the figures it publishes in docs/reliability.md.

Each test adds what it tried to ``figures`` (faults injected per operation, requests served
by the flaky server, hypothesis examples...); the totals are printed at the end of the run,
in a "reliability figures" section, so the published numbers come from a real run.
"""

from __future__ import annotations

from collections import Counter

import pytest

_FIGURES: Counter[str] = Counter()


@pytest.fixture(scope="session")
def figures() -> Counter[str]:
    """The suite's tally: ``figures["io faults: fsync"] += 1``. Session-scoped, so that
    hypothesis tests may use it too."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    width = max(len(name) for name in _FIGURES)
    for name, value in sorted(_FIGURES.items()):
        terminalreporter.write_line(f"{name:<{width}}  {value}")
