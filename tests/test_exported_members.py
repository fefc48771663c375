"""``__all__`` is honest: every name in it resolves, and every public name is in it."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

import pytest

import stalwart
import stalwart.testing
from stalwart import instrumentation
from stalwart.instrumentation._prometheus import PrometheusTextfile
from stalwart.instrumentation._statsd import StatsD

NAMESPACES = (stalwart, instrumentation)


@pytest.mark.parametrize("namespace", NAMESPACES, ids=lambda m: m.__name__)
def test_every_name_in_all_resolves(namespace: ModuleType) -> None:
    for name in namespace.__all__:
        assert getattr(namespace, name) is not None, name


@pytest.mark.parametrize("namespace", NAMESPACES, ids=lambda m: m.__name__)
def test_all_is_sorted_and_complete(namespace: ModuleType) -> None:
    assert namespace.__all__ == sorted(namespace.__all__)
    assert set(namespace._EXPORTS) <= set(namespace.__all__)
    assert set(namespace.__all__) - set(namespace._EXPORTS) <= {"__version__"}
    assert set(dir(namespace)) >= set(namespace.__all__)


@pytest.mark.parametrize("namespace", NAMESPACES, ids=lambda m: m.__name__)
def test_names_come_from_their_private_modules(namespace: ModuleType) -> None:
    for name, module in namespace._EXPORTS.items():
        defined = importlib.import_module(f"{namespace.__name__}.{module}")
        assert getattr(defined, name) is getattr(namespace, name)


@pytest.mark.parametrize("namespace", NAMESPACES, ids=lambda m: m.__name__)
def test_type_checkers_see_the_same_names(namespace: ModuleType) -> None:
    """The ``if TYPE_CHECKING:`` block (``from .x import Y as Y``) names what the table does."""
    source = Path(namespace.__file__ or "").read_text()
    seen = set(re.findall(r"^    from \.\S+ import (\w+) as \1$", source, flags=re.MULTILINE))
    assert seen == set(namespace._EXPORTS)


def test_the_top_level_namespace_stays_small() -> None:
    """Events and sinks live in ``stalwart.instrumentation``; the top level is what a
    pipeline author writes, at most 30 names."""
    assert len(stalwart.__all__) <= 30
    assert not {"PrometheusTextfile", "StepFailed", "MetricsSink"} & set(stalwart.__all__)


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


def test_instrumentation_hands_out_its_sinks_lazily() -> None:
    assert instrumentation.PrometheusTextfile is PrometheusTextfile
    assert instrumentation.StatsD is StatsD
    with pytest.raises(AttributeError, match="nothing_here"):
        instrumentation.nothing_here  # noqa: B018
