"""The alerting rules docs/ ships (a dead man's switch on the last success) are valid for
Prometheus' own checker, and fire when - and only when - the last success is too old."""

from __future__ import annotations

import subprocess

from conftest import REPO
from stalwart.instrumentation._core import LAST_SUCCESS
from test_metrics_prometheus import need

DOCS = REPO / "docs"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("promtool"), *args],
        cwd=DOCS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_checks_the_shipped_rules() -> None:
    done = promtool("check", "rules", "alerts.rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 2 rules found" in done.stdout


def test_the_dead_mans_switch_fires_after_26_hours_without_a_success() -> None:
    done = promtool("test", "rules", "alerts.rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_rule_watches_the_metric_stalwart_exports() -> None:
    rules = (DOCS / "alerts.rules.yml").read_text()
    assert f"time() - {LAST_SUCCESS} > 26 * 3600" in rules
