"""What a run imports, and the command line that avoids the rest.

Start-up is most of what a short pipeline costs (benchmarks/README.md). These tests do not
time anything: they check *which* modules a run from the command line loads, so that an
import that sneaks back onto the run path fails here rather than only in ``make bench``.
"""

from __future__ import annotations

import gc
import io
import json
import re
from pathlib import Path

import pytest

from conftest import run_python
from stalwart.cli._main import freeze_start_up, run_cli
from stalwart.cli._parser import build_parser

PIPELINE = """
import atexit, json, sys
before = set(sys.modules)
import stalwart

pipeline = stalwart.Pipeline("startup", root=sys.argv[1])

for index in range(3):
    def step(ctx, index=index):
        ctx.write_text(f"out-{index}.txt", f"step {index}\\n")
    step.__name__ = f"step_{index}"
    pipeline.step()(step)

atexit.register(lambda: print(json.dumps(sorted(set(sys.modules) - before))))
pipeline.main(sys.argv[2:])
"""

NEVER_ON_THE_RUN_PATH = {
    "httpx",  # only a step that uses ctx.http
    "tenacity",  # only after a first failure
    "shutil",  # argparse's help formatter, only when help is printed
    "shlex",  # the resume hint, only when a step fails
    "stalwart._alerts",
    "stalwart._deadletter",
    "stalwart.instrumentation._events",  # only with a metrics sink
    "stalwart.instrumentation._core",
    "stalwart._result",  # the CLI returns no RunResult
    "stalwart._retry",
    "stalwart.cli._status",
    "stalwart.cli._load",  # only `stalwart run file.py`
    "pythonjsonlogger",  # JSON lines come from the stdlib formatter in _logging
    "datetime",  # python-json-logger's imports: none is on the run path
    "uuid",
    "platform",
    "dataclasses",  # the run's records are named tuples (dataclasses loads inspect, ast, dis)
    "inspect",
    "typing",  # type-only imports sit under TYPE_CHECKING; records are _records.record_type
    "importlib",  # stalwart's lazy names are loaded with __import__
    "stalwart._reporting",  # alerts and the resume hint: only when a step fails
    "stalwart._alert_hygiene",  # only when a failure streak is open
    "argparse",  # `[run] [--run-id ID]` is parsed without it (tests/test_cli_fast_path.py)
    "gettext",
    "locale",
    "stalwart.cli._parser",
    "stalwart._printable",  # text logs only: a run under cron (stderr not a TTY) logs JSON
    "stalwart._store",  # object storage: only for a root with a scheme (s3://)
    "pathlib",  # ctx.write_* return a str; a Path only from ctx.path(), ctx.run_dir...
    "urllib.parse",  # ...which loads pathlib, urllib.parse, ipaddress (~4 ms)
    "ipaddress",
    "stalwart._redact",  # secrets: only once one is read (webhook, token); else none to mask
    "hashlib",  # OpenSSL (~2.5 ms): small outputs are hashed by the built-in sha256
    "_hashlib",
}
BUILTIN_SHA256 = {"_sha2", "_sha256"}  # 3.12+, 3.11


def modules_of_a_run(tmp_path: Path) -> set[str]:
    """The modules a run loads beyond what the interpreter had loaded before it: measured
    without coverage, whose own imports (pathlib, hashlib...) would hide stalwart's."""
    script = tmp_path / "startup_pipeline.py"
    script.write_text(PIPELINE)
    done = run_python([str(script), str(tmp_path / "state"), "--run-id", "r1"], drop=("COVERAGE",))
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_a_run_loads_only_what_it_uses(tmp_path: Path) -> None:
    first = modules_of_a_run(tmp_path)
    assert {"stalwart._runner", "stalwart.cli._main", "stalwart._logging"} <= first  # it ran
    assert not first & NEVER_ON_THE_RUN_PATH
    assert first & BUILTIN_SHA256  # it hashed the three outputs for their markers

    rerun = modules_of_a_run(tmp_path)
    assert not rerun & (NEVER_ON_THE_RUN_PATH | BUILTIN_SHA256)  # a re-run hashes nothing


def test_paths_handed_out_are_path_objects_and_writes_return_str(tmp_path: Path) -> None:
    import stalwart  # noqa: PLC0415 - the test is about what it hands out

    pipeline = stalwart.Pipeline("paths", root=tmp_path / "state")
    seen: list[object] = []

    @pipeline.step()
    def only(ctx: stalwart.Context) -> None:
        seen.extend([ctx.write_text("a/b.txt", "x"), ctx.path("a/b.txt"), ctx.run_dir])

    result = pipeline.run(run_id="r1")
    run_dir = tmp_path / "state" / "paths" / "runs" / "r1"
    assert seen == [str(run_dir / "a" / "b.txt"), run_dir / "a" / "b.txt", run_dir]
    assert [type(p) for p in seen] == [str, type(run_dir), type(run_dir)]  # write_*: a str
    assert result.run_dir == run_dir == pipeline.run_dir("r1")
    assert pipeline.root == tmp_path / "state"
    assert pipeline.state_dir == tmp_path / "state" / "paths"
    assert pipeline.checkpoints("r1").directory == run_dir / ".checkpoints"
    assert pipeline.checkpoints("r1").marker_path("only") == run_dir / ".checkpoints" / "only.done"


def test_a_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stalwart  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    assert stalwart.Pipeline("p", root="state/").root == tmp_path / "state"


@pytest.mark.parametrize("columns", [50, 200])
def test_help_fits_the_terminal_width(
    columns: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert run_cli(["run", "--help"], pipeline=None) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= columns
    [usage] = [line for line in lines if line.startswith("usage:")]
    # 200 columns leave room for the whole usage on one line; 50 wrap it
    assert bool(re.search(r"--step NAME\] PIPELINE$", usage)) == (columns == 200)


def _commands(*, standalone: bool, command: str | None) -> list[str]:
    parser = build_parser("p", standalone=standalone, command=command)
    [sub] = [a for a in parser._actions if a.dest == "command"]
    return sorted(sub.choices or ())


def test_a_command_builds_only_its_own_parser() -> None:
    everything = [
        "backfill",
        "chaos",
        "deadletter",
        "demo",
        "gc",
        "report",
        "reset",
        "run",
        "runs",
        "status",
    ]
    assert _commands(standalone=True, command=None) == everything
    assert _commands(standalone=True, command="--help") == everything
    assert _commands(standalone=True, command="run") == ["run"]
    assert _commands(standalone=True, command="deadletter") == ["deadletter"]
    # A pipeline's own command line has no `demo`: all are built, for argparse's message.
    pipeline_commands = ["backfill", "deadletter", "gc", "report", "reset", "run", "runs", "status"]
    assert _commands(standalone=False, command="demo") == pipeline_commands
    assert _commands(standalone=False, command="chaos") == pipeline_commands


def test_an_unknown_command_of_a_pipeline_lists_the_real_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import stalwart  # noqa: PLC0415

    pipeline = stalwart.Pipeline("p", root="unused")
    assert run_cli(["demo"], pipeline=pipeline) == 2
    assert "choose from 'run', 'status', 'reset', 'deadletter'" in capsys.readouterr().err


# -- gc.freeze: what start-up made is moved out of the collector's way -------------------------

FREEZING = """
import gc, os, sys
import stalwart

pipeline = stalwart.Pipeline("freeze", root=os.environ["FREEZE_ROOT"])
pipeline.frozen_before_main = gc.get_freeze_count()


class Cycle:
    \"\"\"Garbage in a reference cycle, with a finalizer that leaves a file behind.\"\"\"

    def __init__(self, path):
        self.path, self.me = path, self

    def __del__(self, _open=os.open, _close=os.close):
        _close(_open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))


@pipeline.step()
def count(ctx):
    Cycle(os.path.join(os.environ["FREEZE_ROOT"], "finalized"))  # garbage the collector frees
    ctx.write_text("counts.txt", f"{pipeline.frozen_before_main} {gc.get_freeze_count()}")

if __name__ == "__main__":
    pipeline.main(sys.argv[1:])
"""


def frozen_counts(state: Path) -> tuple[int, int]:
    before, during = (state / "freeze" / "runs" / "r1" / "counts.txt").read_text().split()
    return int(before), int(during)


@pytest.mark.parametrize("entry", ["main", "console"])
def test_the_entry_points_freeze_start_up_and_the_run_is_still_collected(
    tmp_path: Path, entry: str
) -> None:
    script = tmp_path / "freezing.py"
    script.write_text(FREEZING)
    state = tmp_path / "state"
    env = {"FREEZE_ROOT": str(state)}
    if entry == "main":
        done = run_python([str(script), "--run-id", "r1"], env=env)
    else:
        argv = ["-m", "stalwart", "run", f"{script}:pipeline", "--run-id", "r1"]
        done = run_python(argv, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    before, during = frozen_counts(state)
    if entry == "main":
        assert before == 0  # declaring froze nothing: main() did, when it started
    else:
        assert before > 1000  # the console script froze its start-up, then loaded the file
    assert during > 1000  # the modules imported: thousands of objects
    assert (state / "finalized").exists()  # a cycle made by the run was collected, finalized


def test_run_cli_alone_freezes_nothing(tmp_path: Path) -> None:
    """Tests and embedders call ``run_cli`` in a long-lived process: it leaves the
    collector alone (only the entry points that end the process freeze)."""
    frozen = gc.get_freeze_count()
    code = run_cli(["status"], pipeline=None, stderr=io.StringIO())
    assert code == 2  # `status` needs a pipeline: a usage error, after parsing
    assert gc.get_freeze_count() == frozen


def test_an_interpreter_without_gc_freeze_runs_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gc.freeze`` is CPython's (PyPy has none): the entry points then freeze nothing."""
    monkeypatch.delattr(gc, "freeze")
    monkeypatch.setattr(gc, "get_freeze_count", lambda: pytest.fail("asked without freeze"))
    freeze_start_up()  # no AttributeError
