"""pytest plugin (registered through the ``pytest11`` entry point): the ``no_wait`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._clock import WaitRecorder


@pytest.fixture(name="no_wait")
def no_wait_fixture() -> Iterator[WaitRecorder]:
    """Retries happen, sleeps don't; the planned waits are recorded (``.waits``, ``.total``)."""
    from .testing import no_wait  # noqa: PLC0415 - keep the plugin cheap to load

    with no_wait() as recorder:
        yield recorder
