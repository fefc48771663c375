"""What a step may be, and what it may do: async steps are awaited, generators and classes are
refused, a returned value fails the step, ``sys.exit`` inside a step never passes for success,
step retries and timeouts, run parameters. Each case runs a real pipeline file as a
subprocess, as cron would."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import stalwart
from conftest import run_python
from stalwart.testing import FlakyServer, Reply


class Project:
    """A pipeline file in a temp directory, its state, and a trace of which steps ran."""

    def __init__(self, tmp_path: Path, body: str) -> None:
        self.tmp_path = tmp_path
        self.state = tmp_path / "state"
        self.trace = tmp_path / "trace.txt"
        self.file = tmp_path / "pipe.py"
        header = f"""
            import os, sys, asyncio, time
            import stalwart
            pipeline = stalwart.Pipeline("p", root={str(self.state)!r})

            def trace(ctx):
                with open({str(self.trace)!r}, "a") as f:
                    f.write(ctx.step + "\\n")
        """
        self.file.write_text(textwrap.dedent(header) + textwrap.dedent(body) + MAIN)

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):  # type: ignore[no-untyped-def]
        return run_python(
            [str(self.file), *args, "--log-format", "text"], env=env, cwd=cwd or self.tmp_path
        )

    def stalwart(self, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        """``python -m stalwart ...`` (the ``stalwart`` command)."""
        return run_python(["-m", "stalwart", *args], env=env, cwd=self.tmp_path)

    def ran(self) -> list[str]:
        return self.trace.read_text().split() if self.trace.exists() else []

    def marker(self, step: str, run_id: str = "r1") -> dict[str, object]:
        path = self.state / "p" / "runs" / run_id / ".checkpoints" / f"{step}.done"
        return dict(json.loads(path.read_text()))


MAIN = """
if __name__ == "__main__":
    pipeline.main()
"""


def test_an_async_step_is_awaited(tmp_path: Path) -> None:
    project = Project(
        tmp_path,
        """
        @pipeline.step()
        async def fetch(ctx):
            await asyncio.sleep(0)
            trace(ctx)
            ctx.write_text("out.txt", "async")
        """,
    )
    first = project.run("--run-id", "r1")
    assert first.returncode == 0, first.stderr
    assert "was never awaited" not in first.stderr
    assert (project.state / "p" / "runs" / "r1" / "out.txt").read_text() == "async"
    assert project.ran() == ["fetch"]
    again = project.run("--run-id", "r1")
    assert "step fetch already done, skipping" in again.stderr
    assert project.ran() == ["fetch"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("@pipeline.step()\ndef gen(ctx):\n    yield 1\n", "generator function"),
        ("@pipeline.step()\nclass Thing:\n    pass\n", "is a class"),
        ("pipeline.step(name='x')(42)\n", "must be a function"),
    ],
    ids=["generator", "class", "not-callable"],
)
def test_what_cannot_be_a_step_is_refused_when_declared(
    tmp_path: Path, body: str, says: str
) -> None:
    project = Project(tmp_path, body)
    result = project.stalwart("run", str(project.file), "--run-id", "r1")
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "cannot import pipeline file" in result.stderr
    direct = project.run("--run-id", "r1")  # `python pipe.py`: Python's own traceback
    assert direct.returncode != 0
    assert says in direct.stderr
    assert not (project.state / "p" / "runs" / "r1" / ".checkpoints").exists()


def test_declaring_an_async_generator_is_refused_in_process() -> None:
    pipeline = stalwart.Pipeline("p")

    async def agen(ctx: stalwart.Context):  # type: ignore[no-untyped-def]
        yield 1

    with pytest.raises(stalwart.UsageError, match="generator function"):
        pipeline.step()(agen)


def test_a_step_that_returns_a_value_fails_and_names_ctx_write(tmp_path: Path) -> None:
    project = Project(
        tmp_path,
        """
        @pipeline.step()
        def compute(ctx):
            return {"rows": 3}
        """,
    )
    result = project.run("--run-id", "r1")
    assert result.returncode == 1
    assert "returned dict" in result.stderr
    assert "ctx.write_json" in result.stderr
    assert not (project.state / "p" / "runs" / "r1" / ".checkpoints" / "compute.done").exists()


def test_a_coroutine_returned_by_a_plain_callable_is_awaited_not_marked_done(
    tmp_path: Path,
) -> None:
    project = Project(
        tmp_path,
        """
        import functools
        async def _work(ctx, text):
            trace(ctx)
            ctx.write_text("w.txt", text)
        pipeline.step(name="work")(functools.partial(_work, text="partial"))
        """,
    )
    result = project.run("--run-id", "r1")
    assert result.returncode == 0, result.stderr
    assert (project.state / "p" / "runs" / "r1" / "w.txt").read_text() == "partial"


@pytest.mark.parametrize(
    ("call", "code"), [("sys.exit(0)", 1), ("sys.exit()", 1), ("sys.exit(3)", 3)]
)
def test_sys_exit_in_a_step_is_never_success(tmp_path: Path, call: str, code: int) -> None:
    project = Project(
        tmp_path,
        f"""
        @pipeline.step()
        def first(ctx):
            trace(ctx)
            {call}

        @pipeline.step()
        def second(ctx):
            trace(ctx)
        """,
    )
    hook = FlakyServer()
    with hook:
        hook.route("POST", "/hook", Reply(body="ok"))
        result = project.run("--run-id", "r1", env={"SLACK_WEBHOOK_URL": hook.url("/hook")})
        alerts = hook.count("POST", "/hook")
    assert result.returncode == code, result.stderr
    assert project.ran() == ["first"]
    assert "did not finish" in result.stderr
    assert alerts == 1  # a run that did not finish pages someone
    assert not (project.state / "p" / "runs" / "r1" / ".checkpoints" / "first.done").exists()


def test_sys_exit_zero_in_a_step_is_not_success_in_process_either(root: Path) -> None:
    pipeline = stalwart.Pipeline("p", root=root, alerters=[])

    @pipeline.step()
    def leaves(ctx: stalwart.Context) -> None:
        raise SystemExit(0)

    with pytest.raises(SystemExit) as info:
        pipeline.run(run_id="r1")
    assert info.value.code == 1


def test_a_step_retry_reruns_the_whole_step_after_transient(tmp_path: Path) -> None:
    project = Project(
        tmp_path,
        """
        @pipeline.step(retry=stalwart.RetryPolicy(attempts=3, initial=0.01, maximum=0.01))
        def flaky(ctx):
            trace(ctx)
            ctx.write_text("attempt.txt", str(len(open(os.environ["TRACE"]).read().split())))
            if len(open(os.environ["TRACE"]).read().split()) < 3:
                ctx.write_text("partial-only-in-a-failed-attempt.txt", "x")
                raise stalwart.Transient("upstream not ready")
        """.replace('os.environ["TRACE"]', repr(str(tmp_path / "trace.txt"))),
    )
    result = project.run("--run-id", "r1")
    assert result.returncode == 0, result.stderr
    assert project.ran() == ["flaky", "flaky", "flaky"]
    marker = project.marker("flaky")
    outputs = [o["name"] for o in marker["outputs"]]  # type: ignore[attr-defined]
    assert outputs == ["attempt.txt"]  # the failed attempts' outputs are not recorded
    assert marker["retries"] == 2
    assert "retrying" in result.stderr


def test_a_permanent_error_is_not_retried_by_the_step_retry(tmp_path: Path) -> None:
    project = Project(
        tmp_path,
        """
        @pipeline.step(retry=stalwart.RetryPolicy(attempts=5, initial=0.01, maximum=0.01))
        def broken(ctx):
            trace(ctx)
            raise ValueError("bad input")
        """,
    )
    result = project.run("--run-id", "r1")
    assert result.returncode == 1
    assert project.ran() == ["broken"]


def test_a_hanging_step_is_interrupted_by_its_timeout_and_retried(tmp_path: Path) -> None:
    project = Project(
        tmp_path,
        """
        quick = stalwart.RetryPolicy(attempts=2, initial=0.01, maximum=0.01)

        @pipeline.step(timeout=0.3, retry=quick)
        def hangs(ctx):
            trace(ctx)
            time.sleep(3600)
        """,
    )
    result = project.run("--run-id", "r1")
    assert result.returncode == 1
    assert "StepTimeout" in result.stderr
    assert "longer than its timeout of 0.3 s" in result.stderr
    assert project.ran() == ["hangs", "hangs"]  # transient: the retry applied


def test_an_async_step_with_a_timeout_is_cancelled(tmp_path: Path) -> None:
    project = Project(
        tmp_path,
        """
        @pipeline.step(timeout=0.2)
        async def waits(ctx):
            trace(ctx)
            await asyncio.sleep(3600)
        """,
    )
    result = project.run("--run-id", "r1")
    assert result.returncode == 1
    assert "StepTimeout" in result.stderr


THREADED_TIMEOUT = """
import sys, threading
import stalwart
pipeline = stalwart.Pipeline("p", root=sys.argv[1], alerters=[])

@pipeline.step(timeout=0.2)
def spin(ctx):
    while True:  # pure Python: the interrupt lands at the next instruction
        pass

errors = []
def run():
    try:
        pipeline.run(run_id="r1")
    except BaseException as exc:
        errors.append(exc)

thread = threading.Thread(target=run, daemon=True)
thread.start()
thread.join(timeout=30)
print(thread.is_alive(), [type(e).__name__ for e in errors], [str(e) for e in errors])
"""


def test_a_timeout_outside_the_main_thread_interrupts_the_step(tmp_path: Path) -> None:
    """In a thread of its own (no SIGALRM there), the step is interrupted by an exception set
    on its thread. Run without coverage: a tracer can keep that exception from landing."""
    script = tmp_path / "threaded.py"
    script.write_text(THREADED_TIMEOUT)
    done = run_python([str(script), str(tmp_path / "state")], drop=("COVERAGE",))
    assert done.returncode == 0, done.stderr
    alive, kinds, messages = done.stdout.strip().split(" ", 2)
    assert alive == "False"
    assert kinds == "['StepTimeout']"
    assert "spin ran longer than its timeout of 0.2 s" in messages


def test_step_options_are_checked_when_declared() -> None:
    pipeline = stalwart.Pipeline("p")
    with pytest.raises(stalwart.UsageError, match="timeout"):
        pipeline.step(timeout=0)
    with pytest.raises(stalwart.UsageError, match="RetryPolicy"):
        pipeline.step(retry=3)  # type: ignore[call-overload]
    with pytest.raises(stalwart.UsageError, match="RetryPolicy"):
        pipeline.step(http_retry="fast")  # type: ignore[call-overload]


def test_a_changed_param_reruns_the_steps_and_status_shows_it(tmp_path: Path) -> None:
    project = Project(
        tmp_path,
        """
        @pipeline.step()
        def report(ctx):
            trace(ctx)
            ctx.write_text("region.txt", ctx.params.get("region", "none"))
        """,
    )
    assert project.run("--run-id", "r1", "--param", "region=eu").returncode == 0
    assert project.run("--run-id", "r1", "-p", "region=eu").returncode == 0
    assert project.ran() == ["report"]  # same parameters: skipped
    changed = project.run("--run-id", "r1", "-p", "region=us")
    assert changed.returncode == 0, changed.stderr
    assert "parameters changed (region=eu -> region=us)" in changed.stderr
    assert project.ran() == ["report", "report"]
    assert project.marker("report")["params"] == {"region": "us"}
    status = project.run("status", "--run-id", "r1")
    assert "params: region=us" in status.stdout
    as_json = json.loads(project.run("status", "--run-id", "r1", "--json").stdout)
    assert as_json["params"] == {"region": "us"}


@pytest.mark.parametrize("bad", ["region", "=eu", "9x=1"])
def test_a_malformed_param_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    project = Project(tmp_path, "@pipeline.step()\ndef only(ctx):\n    trace(ctx)\n")
    result = project.run("--run-id", "r1", "--param", bad)
    assert result.returncode == 2
    assert project.ran() == []


def test_params_are_read_only_and_run_takes_them(root: Path) -> None:
    pipeline = stalwart.Pipeline("p", root=root)
    seen: list[dict[str, str]] = []

    @pipeline.step()
    def only(ctx: stalwart.Context) -> None:
        seen.append(dict(ctx.params))
        with pytest.raises(TypeError):
            ctx.params["x"] = "y"  # type: ignore[index]

    pipeline.run(run_id="r1", params={"day": "monday"})
    assert seen == [{"day": "monday"}]
    with pytest.raises(stalwart.UsageError, match="parameter"):
        pipeline.run(run_id="r2", params={"day": 1})  # type: ignore[dict-item]
