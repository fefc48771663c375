"""``[run] [--run-id ID]`` is parsed without argparse, into exactly what argparse gives.

The fast path takes only the command lines a scheduler runs (``python pipeline.py``,
``python pipeline.py --run-id ID``, ``stalwart run PIPELINE [--run-id ID]``); every other
command line, abbreviations argparse would accept included, goes to argparse.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart import Context, Pipeline
from stalwart._time import today
from stalwart.cli._main import fast_run_args, run_cli
from stalwart.cli._parser import build_parser, mistyped_command, with_default_command


def argparse_args(argv: list[str], *, standalone: bool) -> dict[str, object] | None:
    """What argparse makes of ``argv`` (as ``run_cli`` calls it); None if it refuses it."""
    if mistyped_command(argv, standalone=standalone) is not None:
        return None
    words = with_default_command(argv, standalone=standalone)
    parser = build_parser("p", standalone=standalone, command=words[0])
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(parser.parse_args(words))
    except SystemExit:
        return None


FAST = [
    (False, []),
    (False, ["run"]),
    (False, ["--run-id", "r1"]),
    (False, ["run", "--run-id", "2026-11-28"]),
    (False, ["--run-id", "run"]),
    (False, ["--run-id", ""]),  # refused later, by the run ID check, as on argparse's path
    (False, ["--run-id", "../x"]),
    (True, ["run", "pipeline.py"]),
    (True, ["run", "pkg.module:pipeline", "--run-id", "r1"]),
]

SLOW = [  # argparse's: abbreviations, other options, help, mistakes
    (False, ["--run", "r1"]),
    (False, ["--run-i", "r1"]),
    (False, ["--run-id=r1"]),
    (False, ["run", "--run-id=r1"]),
    (False, ["--run-id", "r1", "--force"]),
    (False, ["--force", "--run-id", "r1"]),
    (False, ["--run-id", "r1", "--run-id", "r2"]),
    (False, ["--run-id", "-x"]),
    (False, ["--run-id", "-1"]),
    (False, ["--run-id"]),
    (False, ["run", "--run-id"]),
    (False, ["run", "run"]),
    (False, ["--", "--run-id", "r1"]),
    (False, ["--log-format", "json"]),
    (False, ["-v"]),
    (False, ["--help"]),
    (False, ["status"]),
    (False, ["status", "--run-id", "r1"]),
    (True, ["pipeline.py"]),
    (True, ["run"]),
    (True, ["run", "--run-id", "r1", "pipeline.py"]),
    (True, ["run", "-x"]),
    (True, ["run", "pipeline.py", "--run", "r1"]),
    (True, ["status", "pipeline.py"]),
]


@pytest.mark.parametrize(("standalone", "argv"), FAST)
def test_the_scheduler_s_command_lines_parse_as_argparse_parses_them(
    standalone: bool, argv: list[str]
) -> None:
    fast = fast_run_args(argv, standalone=standalone)
    assert fast is not None
    assert vars(fast) == argparse_args(argv, standalone=standalone)


@pytest.mark.parametrize(("standalone", "argv"), SLOW)
def test_every_other_command_line_goes_to_argparse(standalone: bool, argv: list[str]) -> None:
    assert fast_run_args(argv, standalone=standalone) is None


def test_abbreviations_stay_argparse_s_to_accept() -> None:
    """argparse takes ``--run`` for ``--run-id``: the fast path leaves it to argparse, which
    gives the same run ID as the full option."""
    full = argparse_args(["--run-id", "r1"], standalone=False)
    assert full is not None
    assert full["run_id"] == "r1"
    assert argparse_args(["--run", "r1"], standalone=False) == full
    assert argparse_args(["--run-id=r1"], standalone=False) == full


WORDS = st.sampled_from(
    [
        "run",
        "status",
        "--run-id",
        "--run",
        "--run-id=x",
        "r1",
        "",
        "-x",
        "-1",
        "--force",
        "--",
        "p.py",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(WORDS, max_size=4), st.booleans())
def test_whatever_the_fast_path_takes_argparse_reads_the_same(
    argv: list[str], standalone: bool
) -> None:
    fast = fast_run_args(argv, standalone=standalone)
    if fast is not None:
        assert vars(fast) == argparse_args(argv, standalone=standalone)


def one_step(root: Path) -> tuple[Pipeline, list[str]]:
    pipeline = Pipeline("fast", root=root, metrics=[], alerters=[])
    ran: list[str] = []

    @pipeline.step
    def only(ctx: Context) -> None:
        ran.append(ctx.run_id)

    return pipeline, ran


@pytest.mark.parametrize(
    ("argv", "run_id"),
    [([], None), (["run"], None), (["--run-id", "r1"], "r1"), (["run", "--run-id", "r1"], "r1")],
)
def test_a_run_from_the_fast_path_runs(tmp_path: Path, argv: list[str], run_id: str | None) -> None:
    pipeline, ran = one_step(tmp_path / "state")
    assert run_cli(argv, pipeline=pipeline, stderr=io.StringIO()) == 0
    assert ran == [run_id or today()]


def test_a_bad_run_id_is_the_same_usage_error_on_both_paths(tmp_path: Path) -> None:
    pipeline, ran = one_step(tmp_path / "state")
    fast, slow = io.StringIO(), io.StringIO()
    assert run_cli(["--run-id", "../x"], pipeline=pipeline, stderr=fast) == 2
    assert run_cli(["--run-id=../x"], pipeline=pipeline, stderr=slow) == 2
    fast_line, slow_line = json.loads(fast.getvalue()), json.loads(slow.getvalue())
    del fast_line["timestamp"], slow_line["timestamp"]
    assert fast_line == slow_line
    assert "invalid run ID '../x'" in fast_line["message"]
    assert ran == []


def test_argparse_still_explains_a_missing_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, ran = one_step(tmp_path / "state")
    assert run_cli(["--run-id", "-x"], pipeline=pipeline, stderr=io.StringIO()) == 2
    assert "expected one argument" in capsys.readouterr().err
    assert ran == []


def test_the_namespace_has_argparse_s_fields() -> None:
    fast = fast_run_args(["--run-id", "r1"], standalone=False)
    assert fast is not None
    assert not isinstance(fast, argparse.Namespace)  # no argparse was needed to build it
    assert (fast.command, fast.run_id, fast.force, fast.step, fast.param) == (
        "run",
        "r1",
        False,
        None,
        [],
    )
