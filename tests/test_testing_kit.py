"""stalwart.testing: no_wait (context manager and fixture), the recorders, and the documented
worked example, which must run as written."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stalwart
import stalwart.testing
from stalwart import RetryPolicy, Transient, _clock
from stalwart._retry import call_with_retries
from stalwart.testing import MemoryMetrics, RecordingAlerter, WaitRecorder, no_wait

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _always_busy() -> None:
    raise Transient("busy")


def test_no_wait_records_instead_of_sleeping_and_advances_the_clock() -> None:
    policy = RetryPolicy(attempts=3, initial=50.0, maximum=50.0, jitter=0.0, deadline=500.0)
    with no_wait() as waits:
        before = _clock.monotonic()
        with pytest.raises(Transient):
            call_with_retries(_always_busy, policy, operation="op")
        after = _clock.monotonic()
    assert waits.waits == [50.0, 50.0]
    assert waits.total == 100.0
    assert len(waits) == 2
    assert after - before >= 100.0  # the retry clock moved on by the skipped waits
    assert repr(waits) == "WaitRecorder(waits=[50.0, 50.0])"


def test_no_wait_deadline_behaves_as_in_real_time() -> None:
    policy = RetryPolicy(attempts=100, initial=10.0, maximum=10.0, jitter=0.0, deadline=35.0)
    with no_wait() as waits, pytest.raises(Transient):
        call_with_retries(_always_busy, policy, operation="op")
    assert waits.waits == [10.0, 10.0, 10.0]  # a 4th wait would end past 35 s


def test_nested_blocks_each_see_every_wait_and_clear_forgets() -> None:
    with no_wait() as outer:
        _clock.sleep(1.0)
        with no_wait() as inner:
            _clock.sleep(2.0)
        outer.clear()
        _clock.sleep(3.0)
    assert inner.waits == [2.0]
    assert outer.waits == [3.0]


def test_sleeps_are_real_again_afterwards() -> None:
    with no_wait() as waits:
        _clock.sleep(-1.0)  # a negative wait is no wait
    _clock.sleep(0.0)
    asyncio.run(_clock.async_sleep(0.0))
    assert waits.waits == [0.0]
    assert abs(_clock.monotonic() - time.monotonic()) < 1.0  # no skipped time left over


def test_async_sleeps_are_recorded() -> None:
    async def main() -> None:
        await _clock.async_sleep(4.0)

    with no_wait() as waits:
        asyncio.run(main())
    assert waits.waits == [4.0]


def test_the_fixture_is_a_recorder(no_wait: WaitRecorder, request: pytest.FixtureRequest) -> None:
    assert isinstance(no_wait, WaitRecorder)
    _clock.sleep(600.0)  # would time the test out if it were real
    assert no_wait.waits == [600.0]
    assert request.config.pluginmanager.get_plugin("stalwart") is not None


def test_recording_alerter() -> None:
    alerter = RecordingAlerter()
    with pytest.raises(AssertionError, match="no alert was sent"):
        _ = alerter.last
    alert = stalwart.Alert(
        pipeline="p",
        run_id="r",
        step="s",
        error_type="ValueError",
        error="bad",
        attempts=1,
        duration_s=0.1,
        host="h",
    )
    alerter.send(alert)
    assert alerter.last is alert
    assert len(alerter) == 1
    alerter.clear()
    assert len(alerter) == 0
    assert isinstance(alerter, stalwart.Alerter)


def test_memory_metrics_sees_a_run(root: Path) -> None:
    metrics = MemoryMetrics()
    pipeline = stalwart.Pipeline("t", root=root, alerters=[], metrics=[metrics])

    @pipeline.step()
    def only(ctx: stalwart.Context) -> None:
        ctx.write_text("x.txt", "x")

    pipeline.run(run_id="r1")
    names = [type(e).__name__ for e in metrics.events]
    assert names == ["RunStarted", "StepStarted", "StepSucceeded", "RunFinished"]


def test_testing_exports() -> None:
    for name in stalwart.testing.__all__:
        assert getattr(stalwart.testing, name) is not None
    assert {"FlakyServer", "MemoryMetrics", "RecordingAlerter", "Reply", "no_wait"} <= set(
        stalwart.testing.__all__
    )


# -- the docs ----------------------------------------------------------------------------------


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


@pytest.mark.parametrize("name", ["testing.md", "retries.md", "alerts.md"])
def test_doc_examples_are_valid_python(name: str) -> None:
    blocks = _python_blocks(DOCS / name)
    assert blocks
    for block in blocks:
        compile(block, name, "exec")


def test_the_worked_example_passes_as_written(tmp_path: Path) -> None:
    files = {}
    for block in _python_blocks(DOCS / "testing.md"):
        first = block.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            files[first[2:]] = block
    assert set(files) == {"my_pipeline.py", "test_my_pipeline.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    # Other plugins are left out to keep it quick; the no_wait fixture comes in explicitly
    # (its entry point is tested in test_the_fixture_is_a_recorder).
    argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "stalwart._pytest_plugin"]
    result = subprocess.run(
        [sys.executable, *argv, "test_my_pipeline.py"],
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_stalwart_testing_is_reachable_as_an_attribute() -> None:
    with stalwart.testing.no_wait() as waits:
        assert waits.waits == []
