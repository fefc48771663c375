"""``__all__`` is honest: every name in it resolves, and every public name is in it."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import version

import pytest

import stalwart
import stalwart._metrics as metrics
import stalwart.testing
from stalwart._prometheus import PrometheusTextfile
from stalwart._statsd import StatsD


def test_every_name_in_all_resolves() -> None:
    for name in stalwart.__all__:
        assert getattr(stalwart, name) is not None, name


def test_all_is_sorted_and_complete() -> None:
    assert stalwart.__all__ == sorted(stalwart.__all__)
    assert set(stalwart._WHERE) | {"__version__"} == set(stalwart.__all__)
    assert set(dir(stalwart)) >= set(stalwart.__all__)


def test_names_come_from_their_private_modules() -> None:
    for name, module in stalwart._WHERE.items():
        assert getattr(importlib.import_module(f"stalwart.{module}"), name) is getattr(
            stalwart, name
        )


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        stalwart.no_such_thing  # noqa: B018


def test_version_is_the_installed_distribution() -> None:
    assert stalwart.__version__ == version("stalwart")


def test_testing_all() -> None:
    for name in stalwart.testing.__all__:
        assert hasattr(stalwart.testing, name), name


def test_import_is_lazy() -> None:
    heavy = ("stalwart.", "httpx", "tenacity", "prometheus")
    code = f"import sys, stalwart; print(sorted(m for m in sys.modules if m.startswith({heavy})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_metrics_module_hands_out_its_sinks_lazily() -> None:
    assert metrics.PrometheusTextfile is PrometheusTextfile
    assert metrics.StatsD is StatsD
    with pytest.raises(AttributeError, match="nothing_here"):
        metrics.nothing_here  # noqa: B018
