"""Declaring steps stays linear and keeps nothing per step once the run is over."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from stalwart import Context, Pipeline, UsageError
from stalwart._context import Step


@pytest.fixture
def _no_step_loggers() -> Iterator[None]:
    """Forget ``stalwart.step.*`` loggers other tests registered (to count ours)."""
    registered = logging.Logger.manager.loggerDict
    before = dict(registered)
    for name in [n for n in registered if n.startswith("stalwart.step.")]:
        del registered[name]
    yield
    registered.clear()
    registered.update(before)


def _noop(ctx: Context) -> None:
    ctx.log.info("ran")


def test_twenty_thousand_steps_declare_and_a_duplicate_is_still_refused(root: Path) -> None:
    pipeline = Pipeline("wide", root=root)
    for index in range(20_000):
        pipeline.step(name=f"s{index}")(_noop)
    assert len(pipeline.steps) == 20_000
    assert pipeline.step_names[-1] == "s19999"
    with pytest.raises(UsageError, match="already has a step 's123'"):
        pipeline.step(name="s123")(_noop)
    assert len(pipeline.steps) == 20_000


def test_a_step_added_to_the_list_in_place_is_still_a_duplicate(root: Path) -> None:
    pipeline = Pipeline("edited", root=root)
    pipeline.step(name="a")(_noop)
    pipeline.steps.append(Step("b", _noop))  # an application editing the list directly
    with pytest.raises(UsageError, match="already has a step 'b'"):
        pipeline.step(name="b")(_noop)
    pipeline.steps.pop()
    pipeline.step(name="b")(_noop)  # removed in place: free again
    assert pipeline.step_names == ["a", "b"]


@pytest.mark.usefixtures("_no_step_loggers")
def test_a_run_keeps_no_logger_per_step(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline("many", root=root, metrics=[])
    for index in range(50):
        pipeline.step(name=f"s{index}")(_noop)
    with caplog.at_level(logging.INFO):
        pipeline.run(run_id="r1")
    kept = [name for name in logging.Logger.manager.loggerDict if name.startswith("stalwart.step.")]
    assert kept == []
    mine = [r for r in caplog.records if r.getMessage() == "ran"]
    assert [r.name for r in mine] == [f"stalwart.step.s{index}" for index in range(50)]
    first = mine[0].__dict__
    assert (first["pipeline"], first["run_id"], first["step"], first["attempt"]) == (
        "many",
        "r1",
        "s0",
        1,
    )


@pytest.mark.usefixtures("_no_step_loggers")
def test_a_step_logger_the_application_configured_is_honoured(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = Pipeline("quiet", root=root, metrics=[])
    pipeline.step(name="loud")(_noop)
    pipeline.step(name="hushed")(_noop)
    logging.getLogger("stalwart.step.hushed").setLevel(logging.WARNING)
    with caplog.at_level(logging.INFO):
        pipeline.run(run_id="r1")
    assert [r.name for r in caplog.records if r.getMessage() == "ran"] == ["stalwart.step.loud"]


@pytest.mark.usefixtures("_no_step_loggers")
def test_step_records_follow_the_stalwart_step_parent_level(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = Pipeline("parent", root=root, metrics=[])
    pipeline.step(name="one")(_noop)
    parent = logging.getLogger("stalwart.step")
    level = parent.level
    parent.setLevel(logging.ERROR)
    try:
        with caplog.at_level(logging.INFO):
            pipeline.run(run_id="r1")
    finally:
        parent.setLevel(level)
    assert not [r for r in caplog.records if r.getMessage() == "ran"]
