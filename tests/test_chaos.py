"""`stalwart chaos`: SIGKILL a user's pipeline, resume it, and name what the kills broke.

Every test drives real pipeline processes (the fault injector kills them at a file-system
call, reproducibly for a seed) in scratch directories, against a real local HTTP server where
HTTP matters. Kill counts stay small: each case costs two or three process starts.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from stalwart._chaos import (
    Breakage,
    ChaosCase,
    ChaosError,
    ChaosReport,
    Kill,
    KillPlan,
    _Chaos,
    _classify,
    _File,
    _last_words,
    _Reference,
    run_chaos,
)
from stalwart.cli._chaos import _progress
from stalwart.cli._main import run_cli
from stalwart.testing import FlakyServer, Reply, chaos_check

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "daily_report.py"

WELL_BEHAVED = """
    import time
    import stalwart

    pipeline = stalwart.Pipeline("tidy")

    @pipeline.step()
    def make(ctx):
        ctx.write_text("rows.csv", "".join(f"{i},{i * i}\\n" for i in range(100)))
        ctx.write_text("stamp.txt", f"{time.time_ns()}")  # differs between clean runs

    @pipeline.step()
    def total(ctx):
        rows = ctx.read_text("rows.csv").splitlines()
        with ctx.atomic_write("total.json") as out:
            out.write(f'{{"rows": {len(rows)}}}')
"""

APPENDS = """
    import stalwart

    pipeline = stalwart.Pipeline("appends")

    @pipeline.step()
    def make(ctx):
        ctx.write_text("rows.csv", "".join(f"{i},{i * i}\\n" for i in range(20)))

    @pipeline.step()
    def collect(ctx):
        with open(ctx.path("all.csv"), "a") as out:  # a resume appends the rows again
            out.write(ctx.read_text("rows.csv"))
"""

CURSOR = """
    from pathlib import Path
    import stalwart

    pipeline = stalwart.Pipeline("cursor")

    @pipeline.step()
    def work(ctx):
        cursor = Path("cursor.txt")  # beside ctx, in the working directory
        position = int(cursor.read_text()) if cursor.exists() else 0
        done = []
        while position < 100:
            position += 25
            cursor.write_text(str(position))  # updated before the batch is durable
            done += range(position - 25, position)
        ctx.write_text("done.csv", "".join(f"{i}\\n" for i in done))
"""

POSTS = """
    import os
    import httpx
    import stalwart

    SINK = os.environ["SINK"]
    pipeline = stalwart.Pipeline("posts")

    @pipeline.step()
    def report(ctx):
        ctx.write_text("report.csv", "id,amount\\n1,2.50\\n")

    @pipeline.step()
    def upload(ctx):
        body = ctx.read_bytes("report.csv")
        if os.environ["HOW"] == "plain":
            httpx.post(SINK + "/reports", content=body)  # a plain client: no key
        else:
            ctx.http.client.post(SINK + "/reports", content=body)  # the step's key bypassed
"""

STAMPED_POST = """
    import os
    import time
    import stalwart

    pipeline = stalwart.Pipeline("stamped")

    @pipeline.step()
    def upload(ctx):
        ctx.http.post(os.environ["SINK"] + "/events", json={"sent_at": time.time_ns()})
        ctx.write_text("sent.txt", "sent")  # file-system calls after the POST, to kill at
"""

TORN = """
    import os
    import stalwart

    pipeline = stalwart.Pipeline("torn")

    @pipeline.step()
    def dump(ctx):
        fd = os.open(ctx.path("big.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for i in range(8):
            os.write(fd, bytes([65 + i]) * 4096)  # in place: a kill leaves part of it
        os.close(fd)
"""

REWRITES_UPSTREAM = """
    import stalwart

    pipeline = stalwart.Pipeline("rewrites")

    @pipeline.step()
    def make(ctx):
        ctx.write_text("rows.csv", "a\\nb\\n")

    @pipeline.step()
    def stamp(ctx):
        with open(ctx.path("rows.csv"), "a") as out:  # changes make's recorded output
            out.write("stamped\\n")
        ctx.write_text("ok.txt", "ok")
"""

RUNS_ONCE = """
    from pathlib import Path
    import stalwart

    pipeline = stalwart.Pipeline("once")

    @pipeline.step()
    def claim(ctx):
        flag = Path("claimed")
        if flag.exists():
            raise RuntimeError("already claimed by an earlier run")
        flag.write_text("yes")
        ctx.write_text("claim.txt", "mine")
"""

HANGS = """
    import threading
    import stalwart

    pipeline = stalwart.Pipeline("hangs")

    @pipeline.step()
    def wait(ctx):
        threading.Event().wait()
"""

FAILS = """
    import stalwart

    pipeline = stalwart.Pipeline("fails")

    @pipeline.step()
    def boom(ctx):
        raise ValueError("the input is bad")
"""

ABSOLUTE_ROOT = """
    import stalwart

    pipeline = stalwart.Pipeline("elsewhere", root={root!r})

    @pipeline.step()
    def make(ctx):
        ctx.write_text("x.txt", "x")
"""


def pipeline_file(tmp_path: Path, source: str, name: str = "pipe.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return str(path)


def kinds(report: ChaosReport) -> set[str]:
    return {b.kind for case in report.cases for b in case.broke} | {h.kind for h in report.hazards}


@pytest.fixture
def sink() -> Iterator[FlakyServer]:
    with FlakyServer() as server:
        server.route("POST", "/reports", Reply(status=201))
        server.route("POST", "/events", Reply(status=201))
        yield server


def test_plain_append_is_caught_as_duplicated_rows(tmp_path: Path) -> None:
    target = pipeline_file(tmp_path, APPENDS)
    report = run_chaos(target, kills=3, seed=0, steps=["collect"], moments=0.0)
    assert not report.ok
    duplicated = [b for c in report.cases for b in c.broke if b.kind == "duplicated-rows"]
    assert duplicated
    assert duplicated[0].path.endswith("runs/chaos/all.csv")
    assert duplicated[0].step == "collect"
    assert "20 line(s) more than a clean run" in duplicated[0].detail
    assert report.reproduce is not None
    first = report.first_failure
    assert first is not None
    assert f"--seed 0 --kills {first.index + 1}" in report.reproduce
    assert "--steps collect" in report.reproduce
    text = report.render()
    assert "a kill in step collect broke:" in text
    assert "FAILED" in text


def test_cursor_updated_before_the_work_is_caught(tmp_path: Path) -> None:
    target = pipeline_file(tmp_path, CURSOR)
    # Kill points are drawn among the step's file-system calls, the run's end (its summary)
    # included: six cases reach one between the cursor's writes.
    report = run_chaos(target, kills=6, seed=0, moments=0.0)
    assert not report.ok
    broken = [b for c in report.cases for b in c.broke]
    assert any(b.kind == "missing-rows" and b.path.endswith("done.csv") for b in broken)


@pytest.mark.parametrize("how", ["plain", "bypass"])
def test_post_without_idempotency_key_is_flagged_and_its_repeat_caught(
    tmp_path: Path, sink: FlakyServer, how: str
) -> None:
    target = pipeline_file(tmp_path, POSTS)
    with_password = sink.url("").rstrip("/").replace("http://", "http://user:hunter2@")
    env = {"SINK": with_password, "HOW": how}
    report = run_chaos(target, kills=3, seed=0, steps=["upload"], env=env, moments=0.0)
    assert "hunter2" not in report.render() + report.to_json()
    assert not report.ok
    assert [(h.kind, h.step) for h in report.hazards] == [("http-no-key", "upload")]
    repeated = [b for c in report.cases for b in c.broke if b.kind == "http-repeated"]
    assert repeated
    assert repeated[0].path == f"POST {sink.url('/reports').replace('http://', 'http://***@')}"
    # The receiver really got a case's POST twice: more POSTs than runs that finished.
    assert sink.count("POST", "/reports") > 2 + len(report.cases)
    assert "hazards (a clean run already does this)" in report.render()
    [effect] = [e for e in report.http if e.method == "POST"]
    assert effect.clean_requests == 1
    assert effect.by_key[0][0] is None


def test_same_request_under_two_keys_is_caught(tmp_path: Path, sink: FlakyServer) -> None:
    target = pipeline_file(tmp_path, STAMPED_POST)
    env = {"SINK": sink.url("").rstrip("/")}
    report = run_chaos(target, kills=2, seed=0, env=env, moments=0.0)
    assert report.hazards == ()  # ctx.http gave every POST a key
    assert "http-two-keys" in kinds(report)
    keys = {r.headers["idempotency-key"] for r in sink.requests_for("POST", "/events")}
    assert len(keys) > 2 + len(report.cases)  # a key per sending, never the same one


def test_a_file_written_in_place_is_seen_half_written_after_a_kill(tmp_path: Path) -> None:
    target = pipeline_file(tmp_path, TORN)
    report = run_chaos(target, kills=3, seed=0, moments=0.0)
    partial = [b for c in report.cases for b in c.broke if b.kind == "partial-file"]
    assert partial
    assert partial[0].path.endswith("big.bin")
    assert "right after a kill" in partial[0].detail


def test_a_step_changing_an_upstream_output_shows_wrong_markers_and_extra_runs(
    tmp_path: Path,
) -> None:
    target = pipeline_file(tmp_path, REWRITES_UPSTREAM)
    report = run_chaos(target, kills=2, seed=0, steps=["stamp"], moments=0.0)
    found = kinds(report)
    assert "wrong-marker" in found
    assert "extra-runs" in found


def test_well_behaved_pipeline_survives_and_names_its_nondeterministic_file(
    tmp_path: Path,
) -> None:
    target = pipeline_file(tmp_path, WELL_BEHAVED)
    report = chaos_check(target, kills=4, seed=7)
    assert report.ok
    assert report.kills_landed >= 4
    assert [s.step for s in report.steps if s.step != "(setup)"] == ["make", "total"]
    assert all(s.kills_landed >= 1 for s in report.steps if s.step in ("make", "total"))
    assert report.nondeterministic == ("root/tidy/runs/chaos/stamp.txt",)
    assert report.reproduce is None
    assert "every kill was survived" in report.render()


def test_a_seed_replays_the_same_kills_and_findings(tmp_path: Path) -> None:
    target = pipeline_file(tmp_path, APPENDS)

    def outline(seed: int) -> list[object]:
        report = run_chaos(target, kills=2, seed=seed, moments=0.0)
        return [(c.plan, c.kills, c.broke) for c in report.cases]

    first = outline(11)
    assert outline(11) == first
    assert outline(12) != first


def test_chaos_check_fails_the_test_with_the_report(tmp_path: Path) -> None:
    target = pipeline_file(tmp_path, APPENDS)
    with pytest.raises(AssertionError, match="duplicated-rows") as caught:
        chaos_check(target, kills=2, steps=["collect"])
    assert "reproduce: stalwart chaos" in str(caught.value)


def test_cli_passes_the_reference_pipeline(
    sink: FlakyServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    orders = [{"id": i, "customer": f"c{i % 7}", "amount": i * 1.5} for i in range(500)]
    sink.route("GET", "/orders", Reply(json=orders))
    monkeypatch.setenv("DAILY_REPORT_API", sink.url("").rstrip("/"))
    monkeypatch.setenv("DAILY_REPORT_SINK", sink.url("").rstrip("/"))
    code = run_cli(["chaos", str(EXAMPLE), "--kills", "4", "--seed", "1"], pipeline=None)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "every kill was survived" in out
    assert err.count("case ") == 4  # one line per case when stderr is not a terminal
    posts = sink.requests_for("POST", "/reports")
    assert len(posts) >= 6  # two clean runs and four cases
    assert len({p.headers["idempotency-key"] for p in posts}) == 1  # one key: dedupable


def test_cli_exits_1_with_the_reproducing_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = pipeline_file(tmp_path, APPENDS)
    code = run_cli(["chaos", target, "--kills", "2", "--steps", "collect", "--json"], pipeline=None)
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == 1
    assert data["ok"] is False
    assert data["reproduce"].startswith("stalwart chaos ")


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--kills", "-1"], "--kills must be 0 or more"),
        (["--steps", "nope"], "no step 'nope'"),
        (["--param", "novalue"], "expected KEY=VALUE"),
        (["--run-id", "../x"], "invalid run ID"),
    ],
)
def test_cli_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], words: list[str], message: str
) -> None:
    target = pipeline_file(tmp_path, WELL_BEHAVED)
    assert run_cli(["chaos", target, "--kills", "0", *words], pipeline=None) == 2
    assert message in capsys.readouterr().err


def test_cli_a_missing_pipeline_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["chaos", str(tmp_path / "nope.py")], pipeline=None) == 2
    assert "no pipeline file" in capsys.readouterr().err


def test_cli_params_reach_the_run_or_are_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = pipeline_file(tmp_path, WELL_BEHAVED)
    code = run_cli(["chaos", target, "--kills", "0", "--param", "day=1"], pipeline=None)
    err = capsys.readouterr().err
    if code == 2:  # this `stalwart run` has no --param yet
        assert "rejected --param" in err
    else:
        assert code == 0, err


def test_cli_a_pipeline_that_fails_on_its_own_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = pipeline_file(tmp_path, FAILS)
    assert run_cli(["chaos", target, "--kills", "1"], pipeline=None) == 1
    err = capsys.readouterr().err
    assert "did not succeed (exit 1)" in err
    assert "the input is bad" in err


def test_a_pipeline_with_its_own_absolute_root_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "real-state"
    target = pipeline_file(tmp_path, ABSOLUTE_ROOT.format(root=str(elsewhere)))
    with pytest.raises(ChaosError, match="absolute root="):
        run_chaos(target, kills=1)


def test_a_step_that_cannot_run_twice_is_caught(tmp_path: Path) -> None:
    target = pipeline_file(tmp_path, RUNS_ONCE)
    report = run_chaos(target, kills=2, seed=0, moments=0.0)
    [*_, last] = [b for c in report.cases for b in c.broke if b.kind == "did-not-finish"]
    assert "process 2 of the case exited 1" in last.detail
    assert "already claimed" in last.detail


def test_kills_at_a_moment_are_planned_after_the_first_step_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline_file(tmp_path, WELL_BEHAVED, name="tidy_pipe.py")
    monkeypatch.chdir(tmp_path)  # a module target, imported from the working directory
    report = run_chaos("tidy_pipe:pipeline", kills=4, seed=3, moments=1.0)
    assert report.ok, report.render()
    timed = [c.plan for c in report.cases if c.plan.step is None]
    assert timed  # the first case per step is a file-system call; then moments
    assert all(p.kill_after >= 0 for p in timed)
    assert "s after the first step started" in timed[0].describe()


def test_a_hanging_pipeline_is_refused_with_the_timeout(tmp_path: Path) -> None:
    target = pipeline_file(tmp_path, HANGS)
    with pytest.raises(ChaosError, match=r"still running after 1\.5 s"):
        run_chaos(target, kills=1, timeout=1.5)


def test_moments_out_of_range_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="moments must be between 0 and 1"):
        run_chaos("anything.py", moments=2.0)


def test_classify_names_how_a_file_differs() -> None:
    clean = b"a\nb\nc\n"
    assert _classify(clean, b"a\nb")[0] == "partial-file"
    assert _classify(clean, b"a\nb\nc\nb\n")[0] == "duplicated-rows"
    assert _classify(clean, b"a\nc\n")[0] == "missing-rows"
    kind, detail = _classify(clean, b"a\nX\nc\n")
    assert kind == "differs"
    assert "first difference at byte 2" in detail


def test_last_words_reads_json_logs_and_plain_text() -> None:
    log = '{"message": "step x failed", "error": "ValueError: bad"}\n\n'
    assert _last_words(log) == "step x failed (ValueError: bad)"
    assert _last_words("stalwart: error: no pipeline file\n") == "error: no pipeline file"
    assert _last_words("") == ""


def _engine(tmp_path: Path) -> _Chaos:
    return _Chaos(
        "p.py",
        kills=0,
        seed=0,
        run_id="r",
        params=["day=1"],
        steps=["make"],
        env=None,
        python="python",
        timeout=1.0,
        moments=0.0,
        scratch=tmp_path,
    )


def test_compare_finds_missing_extra_resized_files_and_debris(tmp_path: Path) -> None:
    clean, case = tmp_path / "clean", tmp_path / "case"
    for base in (clean, case):
        (base / "out").mkdir(parents=True)
    (clean / "out" / "kept.txt").write_text("kept")
    (clean / "out" / "gone.txt").write_text("gone")
    (case / "out" / "kept.txt").write_text("kept")
    (case / "out" / "new.txt").write_text("new")
    (case / "out" / ".kept.txt.0123abcd.tmp").write_text("half")
    reference = _Reference(
        base=clean,
        files={"out/kept.txt": _File(4, _sha("kept")), "out/gone.txt": _File(4, _sha("gone"))},
        sizes={"out/stamp.txt": 10, "out/when.txt": None},
        unstable=set(),
        steps=["make"],
        ops={"make": 3},
        elapsed=0.1,
        http=[[], []],
    )
    (case / "out" / "stamp.txt").write_text("12345")
    found = {(b.kind, b.path) for b in _engine(tmp_path).compare(case, reference, "make")}
    assert found == {
        ("missing-file", "out/gone.txt"),
        ("missing-file", "out/when.txt"),
        ("differs", "out/stamp.txt"),
        ("extra-file", "out/new.txt"),
        ("debris", "out/.kept.txt.0123abcd.tmp"),
    }


def test_markers_that_do_not_parse_or_name_missing_outputs_are_wrong(tmp_path: Path) -> None:
    checkpoints = tmp_path / "root" / "p" / "runs" / "r" / ".checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "make.done").write_text("{not json")
    marker = {
        "format": 1,
        "pipeline": "p",
        "step": "total",
        "run_id": "r",
        "started": "2026-01-01T00:00:00Z",
        "finished": "2026-01-01T00:00:01Z",
        "duration": 1.0,
        "attempts": 1,
        "retries": 0,
        "runs": 1,
        "outputs": [{"name": "gone.csv", "size": 3, "sha256": "0" * 64}],
    }
    (checkpoints / "total.done").write_text(json.dumps(marker))
    kills = [Kill(step="make", at="os.write #1")]
    found = _engine(tmp_path).check_markers(tmp_path, kills, ["make", "total"], "make")
    assert [b.kind for b in found] == ["wrong-marker", "wrong-marker"]
    assert "not valid JSON" in found[0].detail
    assert "gone.csv (3 bytes) but the file on disk is missing" in found[1].detail


def test_the_reproducing_command_carries_params_and_steps(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    reference = _Reference(
        base=tmp_path,
        files={},
        sizes={},
        unstable=set(),
        steps=["make"],
        ops={},
        elapsed=0.0,
        http=[[], []],
    )
    hazard = Breakage(kind="http-no-key", step="make", path="POST http://x/y")
    report = engine.report(reference, [], [hazard])
    assert report.reproduce == (
        "stalwart chaos p.py --seed 0 --kills 0 --run-id r --param day=1 --steps make"
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(tmp_path: Path) -> None:
    case = ChaosCase(
        index=0,
        plan=KillPlan(step="make", kill_at=1),
        kills=(Kill(step="make", at="os.write #1"),),
        processes=2,
        broke=(Breakage(kind="debris", step="make", path="x.tmp"),),
    )
    terminal = _Terminal()
    tick, close = _progress(terminal)
    tick(case, 2)
    close()
    assert "1/2" in terminal.getvalue()
    assert "broke=1" in terminal.getvalue()
    expected = "case 1/2: make at os.write #1: BROKE: debris x.tmp\n"
    plain = io.StringIO()
    tick, close = _progress(plain)
    tick(case, 2)
    close()
    assert plain.getvalue() == expected


def test_progress_without_tqdm_is_one_line_per_case_even_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if the extra were not installed
    case = ChaosCase(index=1, plan=KillPlan(kill_after=0.5), kills=(), processes=1, broke=())
    terminal = _Terminal()
    tick, close = _progress(terminal)
    tick(case, 3)
    close()
    assert terminal.getvalue() == "case 2/3: no kill landed: survived\n"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
