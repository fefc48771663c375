"""The public API type-checks as a user writes it, and a user's mistakes are type errors.

``tests/typing/api.py`` is a pipeline author's file (never run) that must be ``mypy --strict``
clean; ``MISTAKES`` is one written with errors, each line marked with the error codes mypy
must report there (``# E: code, code``), and no other line may get one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API = REPO / "tests" / "typing" / "api.py"

MISTAKES = """\
from __future__ import annotations

import stalwart
from stalwart.instrumentation import Event

pipeline = stalwart.Pipeline("mistakes", root="state", alerters=[])
policy = stalwart.RetryPolicy(3)  # E: call-arg
client = stalwart.HttpClient(timeout="30")  # E: arg-type
fine = stalwart.RetryPolicy(attempts=3, deadline=30.0)


@pipeline.step()  # E: type-var
def takes_the_wrong_parameter(ctx: int) -> None:
    print(ctx)


@pipeline.step()
def forgets_the_name(ctx: stalwart.Context) -> None:
    ctx.write_json({"rows": 3})  # E: call-arg, arg-type
    ctx.write_json("rows.json", {"rows": 3})
    with ctx.atomic_write("out.bin", "wb") as out:
        out.write("text into a binary file")  # E: call-overload
    with ctx.atomic_write("out.txt") as text:
        text.write(b"bytes into a text file")  # E: arg-type
    ctx.http.get("http://api/x", timout=3.0)  # E: call-arg


@stalwart.retry(attempts=3)  # E: call-overload, untyped-decorator
def fetch() -> int:
    return 1


@stalwart.retry
def count() -> int:
    return 1


total: str = count()  # E: assignment


class NoSend:
    def post(self, alert: stalwart.Alert) -> None: ...


class SlowSink:
    def handle(self, event: Event, timeout: float) -> None: ...


bad = stalwart.Pipeline("bad", alerters=[NoSend()], metrics=[SlowSink()])  # E: list-item
result = pipeline.run("r1")  # E: call-arg
result.ran.append("more")  # E: attr-defined
"""

ERROR = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


def mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict path`` with the project's configuration and a cache of its own."""
    config = ["--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(cache)]
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *config, "--no-color-output", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_the_public_api_type_checks_as_a_user_writes_it(tmp_path: Path) -> None:
    result = mypy(API, tmp_path / "mypy-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "Success: no issues found in 1 source file"


def test_a_users_mistakes_are_type_errors(tmp_path: Path) -> None:
    mistakes = tmp_path / "mistakes.py"
    mistakes.write_text(MISTAKES, encoding="utf-8")
    expected: dict[int, set[str]] = {}
    for number, line in enumerate(MISTAKES.splitlines(), start=1):
        if "# E: " in line:
            expected[number] = set(line.partition("# E: ")[2].split(", "))
    assert len(expected) == 12

    result = mypy(mistakes, tmp_path / "mypy-cache")
    assert result.returncode == 1, result.stdout + result.stderr
    reported: dict[int, set[str]] = defaultdict(set)
    for line in result.stdout.splitlines():
        match = ERROR.match(line)
        if match:
            assert Path(match["path"]).name == "mistakes.py", line
            reported[int(match["line"])].add(match["code"])
    assert dict(reported) == expected, result.stdout
