"""Run IDs and output names are names, never paths: bad ones are usage errors that create
nothing; the default run ID is today's UTC date."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stalwart
from conftest import run_python
from stalwart._atomic import is_temp_name, temp_name_for
from stalwart._errors import UsageError
from stalwart._records import is_name, is_sha256
from stalwart.cli._main import run_cli

SCRIPT = Path(__file__).parent / "scripts" / "steps_pipeline.py"
BAD_RUN_IDS = ["../x", "a/b", "", "/", "r" * 200, ".hidden", "..", "x y", "-r"]


def everything_under(path: Path) -> list[Path]:
    return sorted(path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("run_id", BAD_RUN_IDS[:6], ids=["dotdot", "slash", "empty", "root",
                                                        "200", "hidden"])  # fmt: skip
def test_bad_run_id_exits_2_in_a_real_process(tmp_path: Path, run_id: str) -> None:
    root = tmp_path / "state"
    trace = tmp_path / "trace"
    result = run_python(
        [str(SCRIPT), f"--run-id={run_id}"],
        env={"STALWART_ROOT": str(root), "TEST_TRACE": str(trace)},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "error: invalid run ID" in result.stderr
    assert "it becomes a directory name, never a path" in result.stderr
    assert "Traceback" not in result.stderr
    assert not root.exists()
    assert not trace.exists()  # no step ran
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "status", "reset"])
@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_bad_run_id_exits_2_for_every_command(root: Path, command: str, run_id: str) -> None:
    pipeline = stalwart.Pipeline("orders", root=root)
    ran: list[str] = []

    @pipeline.step()
    def only(ctx: stalwart.Context) -> None:
        ran.append(ctx.run_id)  # pragma: no cover - must never run

    err = io.StringIO()
    assert run_cli([command, f"--run-id={run_id}"], pipeline=pipeline, stderr=err) == 2
    assert "invalid run ID" in err.getvalue()
    assert ran == []
    assert everything_under(root) == []


def test_bad_run_id_in_the_api(root: Path) -> None:
    pipeline = stalwart.Pipeline("orders", root=root)
    pipeline.step(name="only")(lambda ctx: None)
    for run_id in BAD_RUN_IDS:
        with pytest.raises(UsageError):
            pipeline.run(run_id=run_id)
        with pytest.raises(UsageError):
            pipeline.reset(run_id=run_id)
        if run_id:  # checkpoints("") means today's run (``run_id or today()``)
            with pytest.raises(UsageError):
                pipeline.checkpoints(run_id)
    with pytest.raises(UsageError, match="invalid pipeline name"):
        stalwart.Pipeline("../other", root=root)
    assert everything_under(root) == []


def test_default_run_id_is_todays_utc_date(root: Path) -> None:
    pipeline = stalwart.Pipeline("orders", root=root)

    @pipeline.step(name="only")
    def only(ctx: stalwart.Context) -> None:
        ctx.write_text("x", ctx.run_id)

    before = stalwart._time.today()
    result = pipeline.run()
    assert result.run_id in (before, stalwart._time.today())
    assert len(result.run_id) == 10
    assert result.run_id[4] == result.run_id[7] == "-"
    assert (pipeline.run_dir(result.run_id) / "x").read_text() == result.run_id


BAD_OUTPUT_NAMES = ["/etc/evil", "../escape", "sub/../../escape", ".hidden", "sub/.hidden", "",
                    "a\\b", "nul\x00byte", ".checkpoints/fetch.done"]  # fmt: skip


@pytest.mark.parametrize("how", ["write_text", "atomic_write", "path", "read_text"])
@pytest.mark.parametrize("name", BAD_OUTPUT_NAMES)
def test_bad_output_names_are_errors(tmp_path: Path, name: str, how: str) -> None:
    root = tmp_path / "state"
    pipeline = stalwart.Pipeline("orders", root=root, alerters=[])

    @pipeline.step()
    def write(ctx: stalwart.Context) -> None:
        if how == "write_text":
            ctx.write_text(name, "x")
        elif how == "atomic_write":
            with ctx.atomic_write(name) as out:  # pragma: no cover - must not open
                out.write("x")
        elif how == "path":
            ctx.path(name)
        else:
            ctx.read_text(name)

    with pytest.raises(UsageError, match="invalid output name"):
        pipeline.run(run_id="r1")
    run_dir = pipeline.run_dir("r1")
    assert not pipeline.checkpoints("r1").marker_path("write").exists()
    # Nothing was written anywhere: not outside the root, not in the run directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    assert [p.name for p in run_dir.iterdir() if not p.name.startswith(".")] == []
    assert sorted(p.name for p in (run_dir / ".checkpoints").iterdir()) == []
    assert (run_dir / ".journal.jsonl").is_file()


def test_output_in_a_subdirectory_is_fine(root: Path) -> None:
    pipeline = stalwart.Pipeline("orders", root=root)

    @pipeline.step(name="nested")
    def nested(ctx: stalwart.Context) -> None:
        ctx.write_text("reports/2026/day.csv", "a,b\n")

    pipeline.run(run_id="r1")
    store = pipeline.checkpoints("r1")
    marker = store.read_marker("nested")
    assert marker is not None
    assert [o.name for o in marker.outputs] == ["reports/2026/day.csv"]
    assert (pipeline.run_dir("r1") / "reports" / "2026" / "day.csv").read_text() == "a,b\n"
    assert store.is_done("nested", run_id="r1")


@pytest.mark.parametrize("name", [".", "./"])
def test_dot_is_not_an_output_name(root: Path, name: str) -> None:
    pipeline = stalwart.Pipeline("orders", root=root, alerters=[])
    pipeline.step(name="dot")(lambda ctx: ctx.path(name))
    with pytest.raises(UsageError, match="invalid output name"):
        pipeline.run(run_id="r1")


def test_bad_output_name_is_a_step_failure_exit_1(root: Path) -> None:
    pipeline = stalwart.Pipeline("orders", root=root, alerters=[])
    pipeline.step(name="escape")(lambda ctx: ctx.write_text("../x", "x"))
    err = io.StringIO()
    assert run_cli(["--run-id", "r1"], pipeline=pipeline, stderr=err) == 1
    assert "step escape of orders (run r1) failed" in err.getvalue()


# -- the string checks that stand for regular expressions (no compile at every start) ------

_NAME_ALPHABET = st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._- /\n\x00é٣\uff21"
)


@given(st.one_of(st.text(_NAME_ALPHABET, max_size=130), st.text(max_size=8)))
@settings(max_examples=400)
def test_is_name_is_the_documented_pattern(text: str) -> None:
    pattern = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", text)
    assert is_name(text) is (pattern is not None)


@pytest.mark.parametrize("text", ["a", "A9", "2026-11-30", "x" * 128, "a.b_c-d"])
def test_is_name_takes_names(text: str) -> None:
    assert is_name(text)


@pytest.mark.parametrize(
    "text", ["", "x" * 129, ".a", "_a", "-a", "a b", "a\n", "é", "٣", "a/b", None, 7, b"ab"]
)
def test_is_name_refuses_the_rest(text: object) -> None:
    assert not is_name(text)


@given(st.text(st.sampled_from("0123456789abcdefABCDEFg \n"), min_size=62, max_size=66))
def test_is_sha256_is_64_lowercase_hex_digits(text: str) -> None:
    assert is_sha256(text) is (re.fullmatch(r"[0-9a-f]{64}", text) is not None)


@pytest.mark.parametrize(
    ("name", "temp"),
    [
        (".out.json.0123abcd.tmp", True),
        (".a\nb.0123abcd.tmp", True),
        (".out.json.0123abcd.tmp.x", False),
        ("out.json.0123abcd.tmp", False),
        (".out.json.0123ABCD.tmp", False),
        (".out.json.tmp", False),
        ("..0123abcd.tmp", False),
    ],
)
def test_temp_names_are_recognised(name: str, temp: bool) -> None:
    assert is_temp_name(name) is temp
    assert is_temp_name(temp_name_for(name.strip(".").split(".")[0] or "x")) is True
