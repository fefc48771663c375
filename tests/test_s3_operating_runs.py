"""``runs``, ``report``, ``gc`` and ``backfill`` on an ``s3://`` root (moto's S3 on loopback)
say and guarantee what they do on a local root: every state from the run's summary object and
its lease, newest first, from one listing of the run IDs and one GET per run (counted); the
report's page; gc never deletes the run whose lease is live, nor a pending dead letter, and
leaves nothing of a run it deletes; backfill skips finished days and stops at a failure."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from s3support import S3Server, objects
from stalwart._history import list_runs
from stalwart._pipeline import Pipeline
from stalwart._remote_state import open_store
from stalwart._retention import collect_garbage, format_size
from stalwart.cli._main import run_cli
from test_report_html import DONE_GREEN, FAILED_RED, HOSTILE, chromium, png_pixels

SCRIPT = REPO / "tests" / "scripts" / "ops_pipeline.py"


@pytest.fixture
def nightly(s3_root: str, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    """``tests/scripts/ops_pipeline.py``'s pipeline on the test's ``s3://`` root, in this
    process (``OPS_*`` variables steer it; see the script)."""
    monkeypatch.setenv("STALWART_ROOT", s3_root)
    spec = importlib.util.spec_from_file_location("ops_pipeline_on_s3", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pipeline: Pipeline = module.pipeline
    return pipeline


class Ops:
    """``python ops_pipeline.py ARGS`` on the test's ``s3://`` root, run in this process."""

    def __init__(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch
    ) -> None:
        self.pipeline, self._capsys, self._monkeypatch = pipeline, capsys, mp

    def cli(self, *args: str, **env: str) -> tuple[int, str, str]:
        """The command line, with ``env`` set for it alone: exit code, stdout, stderr."""
        with self._monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            code = run_cli([*args, "--log-format", "text"], pipeline=self.pipeline)
        out, err = self._capsys.readouterr()
        return code, out, err

    def runs_json(self, *args: str) -> list[dict[str, Any]]:
        code, out, err = self.cli("runs", "--json", *args)
        assert code == 0, err
        data = json.loads(out)
        assert (data["format"], data["pipeline"]) == (1, "nightly")
        runs: list[dict[str, Any]] = data["runs"]
        return runs


@pytest.fixture
def ops(
    nightly: Pipeline, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Ops:
    return Ops(nightly, capsys, monkeypatch)


def hold(s3_root: str, run_id: str, *, lease: int = 30) -> subprocess.Popen[str]:
    """The pipeline in another process, stopped inside ``load`` holding the run's lease (of
    ``lease`` seconds: a test ends it by moving the store's clock, never by waiting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "SLACK_"))}
    env.update({"STALWART_ROOT": s3_root, "OPS_BLOCK_STEP": "load"})
    env["STALWART_LEASE_SECONDS"] = str(lease)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--run-id", run_id, "--log-format", "text"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("READY"), process.communicate()
    return process


def test_runs_on_s3_lists_every_state_from_summaries_and_leases(
    ops: Ops,
    s3_server: S3Server,
    s3_root: str,
) -> None:
    assert ops.cli("--run-id", "r1", "--param", "day=mon")[0] == 0
    dead = {"OPS_FAIL": "load", "OPS_DEAD_LETTER": "load"}
    assert ops.cli("--run-id", "r2", **dead)[0] == 1
    summary = json.loads(objects(s3_server, s3_root)["nightly/runs/r1/.summary.json"])
    assert (summary["state"], summary["params"], summary["ran"]) == ("succeeded", {"day": "mon"}, 2)

    holder = hold(s3_root, "r3", lease=5)
    try:
        running = ops.runs_json()
        assert [(r["run_id"], r["state"]) for r in running] == [
            ("r3", "running"),
            ("r2", "failed"),
            ("r1", "succeeded"),
        ]
        assert f"pid {holder.pid} on host" in running[0]["note"]
    finally:
        holder.kill()  # SIGKILL: the summary still says running, the lease outlives it...
        holder.communicate()
    assert ops.runs_json()[0]["state"] == "running"
    s3_server.ahead = 10  # ...until it expires on the store's clock (5 s)
    try:
        runs = {r["run_id"]: r for r in ops.runs_json()}
    finally:
        s3_server.ahead = 0
    assert (runs["r3"]["state"], runs["r3"]["note"]) == (
        "interrupted",
        "the process running it died",
    )
    assert (runs["r2"]["state"], runs["r2"]["failed_step"], runs["r2"]["error_type"]) == (
        "failed",
        "load",
        "ValueError",
    )
    assert runs["r2"]["dead_letters_pending"] == 1
    assert (runs["r1"]["state"], runs["r1"]["params"]) == ("succeeded", {"day": "mon"})
    assert isinstance(runs["r1"]["duration_s"], float)

    code, table, _err = ops.cli("runs", "--limit", "2")
    assert code == 0
    lines = table.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["r3", "running"], ["r2", "failed"]]
    assert "ValueError: boom" in lines[2]


def test_runs_of_a_hundred_runs_lists_once_and_reads_one_summary_each(
    ops: Ops,
    s3_server: S3Server,
    s3_root: str,
) -> None:
    store = open_store(s3_root)
    states = ["succeeded", "failed", "running"]

    def plant(n: int) -> None:  # a run's summary, one output, one marker, a journal segment
        run = f"nightly/runs/d{n:03d}"
        state = states[n % 3] if n < 3 else "succeeded"
        started = f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}.000000Z"
        summary = {"state": state, "started": started}
        store.write(f"{run}/.summary.json", json.dumps(summary).encode())
        store.write(f"{run}/rows.csv", b"id\n1\n")
        store.write(f"{run}/.checkpoints/extract.done", b"{}")
        store.write(f"{run}/.journal/seg-000000000001", b"{}\n")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(plant, range(100)))
    s3_server.requests.clear()
    runs = ops.runs_json()
    assert [r["run_id"] for r in runs] == [f"d{n:03d}" for n in reversed(range(100))]
    assert runs[-3]["state"] == "interrupted"  # said running; nobody holds its lease

    gets = [path for method, path, query in s3_server.requests if method == "GET" and not query]
    lists = [query for method, path, query in s3_server.requests if "list-type=2" in query]
    assert len(gets) == 100
    assert all(path.endswith("/.summary.json") for path in gets)  # no output, marker, journal
    assert len(lists) == 3  # the run IDs, the dead letters, d002's lease
    assert "delimiter=%2F" in lists[0]
    assert len(s3_server.requests) == 103


def test_the_report_of_an_s3_run(
    ops: Ops,
    s3_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _out, err = ops.cli("report")
    assert (code, "no runs yet" in err) == (2, True)
    assert ops.cli("--run-id", "r0")[0] == 0
    dead = {"OPS_FAIL": "load", "OPS_DEAD_LETTER": "load", "OPS_ERROR": HOSTILE}
    assert ops.cli("--run-id", "r1", "--param", "k=<v>", **dead)[0] == 1
    again = {"OPS_FAIL": "load", "OPS_ERROR": HOSTILE}
    assert ops.cli("--run-id", "r1", "--param", "k=<v>", **again)[0] == 1

    page = tmp_path / "report.html"
    code, out, err = ops.cli("report", "--run-id", "r1", "-o", str(page))
    assert code == 0, err
    assert f"to {page}" in out
    html = page.read_text()
    assert html.count('class="attempt failed"') == 2  # both tries of load, from the journal
    assert html.count('class="attempt done"') == 1  # extract, once
    assert "Step <b>load</b> failed after 2 attempt(s)" in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "<script" not in html
    assert 'id="dead-letter-table"' in html
    assert "warehouse said no" in html
    assert "<td><code>k</code></td><td>&lt;v&gt;</td>" in html
    assert "<code>rows.csv</code> 1.5 kB" in html
    assert html.count('<g class="run ') == 2
    assert f"Made by stalwart from {s3_root}/nightly/runs/r1." in html

    shot = tmp_path / "report.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1000", page.as_uri())
    assert done.returncode == 0, done.stderr
    _width, _height, pixels = png_pixels(shot.read_bytes())
    assert pixels.count(FAILED_RED) > 500
    assert pixels.count(DONE_GREEN) > 500

    monkeypatch.chdir(tmp_path)
    code, out, err = ops.cli("report")  # the newest run: r1
    assert code == 0, err
    assert "run r1" in (tmp_path / "nightly-r1.html").read_text()
    code, _out, err = ops.cli("report", "--run-id", "zzz")
    assert code == 2
    assert "has no run 'zzz'" in err


def run_keys(s3_server: S3Server, s3_root: str, run_id: str) -> dict[str, bytes]:
    prefix = f"nightly/runs/{run_id}/"
    return {k: v for k, v in objects(s3_server, s3_root).items() if k.startswith(prefix)}


def settled(found: dict[str, bytes], run_id: str | None = None) -> dict[str, bytes]:
    """Outputs, markers and summary (not the lease or the journal, which a live run renews
    and flushes in the background), of ``run_id`` if given."""
    inside = f"nightly/runs/{run_id}/" if run_id else ""
    return {
        k: v
        for k, v in found.items()
        if k.startswith(inside) and ".lease/" not in k and ".journal/" not in k
    }


def letters(s3_server: S3Server, s3_root: str) -> dict[str, dict[str, str]]:
    found = {}
    for key, value in objects(s3_server, s3_root).items():
        if key.startswith("nightly/deadletter/") and key.endswith(".json"):
            data = json.loads(value)
            found[data["id"]] = {"run_id": data["run_id"], "state": data["state"]}
    return found


def test_gc_on_s3_keeps_the_run_whose_lease_is_live_and_pending_dead_letters(
    ops: Ops,
    s3_server: S3Server,
    s3_root: str,
) -> None:
    dead = {"OPS_FAIL": "load", "OPS_DEAD_LETTER": "load"}
    assert ops.cli("--run-id", "d1", **dead)[0] == 1  # discarded
    assert ops.cli("--run-id", "d2", **dead)[0] == 1  # pending
    assert ops.cli("--run-id", "d3")[0] == 0
    by_run = {v["run_id"]: k for k, v in letters(s3_server, s3_root).items()}
    assert ops.cli("deadletter", "discard", by_run["d1"])[0] == 0
    d1 = run_keys(s3_server, s3_root, "d1")
    d1_size = format_size(sum(len(v) for k, v in d1.items() if ".lease/" not in k))

    store = open_store(s3_root)
    holder = hold(s3_root, "d0")
    try:  # d0 started last: make it the oldest, so only its lease can save it
        summary = json.loads(store.read("nightly/runs/d0/.summary.json") or b"")
        summary["started"] = "2000-01-01T00:00:00.000000Z"
        store.write("nightly/runs/d0/.summary.json", json.dumps(summary).encode())
        before = objects(s3_server, s3_root)

        code, dry, err = ops.cli("gc", "--keep-last", "1", "--dry-run")
        assert code == 0, err
        assert f"would delete run d1 ({d1_size})" in dry
        assert "would delete run d2" in dry
        assert f"would delete dead letter {by_run['d1']} of run d1" in dry
        assert "kept run d0: it is running now (pid" in dry
        assert "dry run: nothing was deleted" in dry
        assert settled(objects(s3_server, s3_root)) == settled(before)

        code, done, err = ops.cli("gc", "--keep-last", "1")
        assert code == 0, err
        assert settled(run_keys(s3_server, s3_root, "d0")) == settled(before, "d0")
    finally:
        holder.communicate("go\n", timeout=60)
    assert holder.returncode == 0, holder.stderr  # the run gc did not touch finished fine
    assert f"deleted run d1 ({d1_size})" in done
    assert "deleted run d2 (" in done
    assert f"deleted dead letter {by_run['d1']} of run d1" in done
    assert "kept run d0: it is running now (pid" in done
    assert f"kept dead letter {by_run['d2']} of run d2: pending" in done
    assert done.splitlines()[-1].startswith("freed ")
    assert "2 run(s), 1 dead letter(s)" in done
    assert run_keys(s3_server, s3_root, "d1") == {}  # nothing left: no lease either
    assert run_keys(s3_server, s3_root, "d2") == {}
    assert "nightly/runs/d3/.summary.json" in objects(s3_server, s3_root)
    assert json.loads(store.read("nightly/runs/d0/.summary.json") or b"")["state"] == "succeeded"
    assert letters(s3_server, s3_root) == {by_run["d2"]: {"run_id": "d2", "state": "pending"}}
    assert not [k for k in objects(s3_server, s3_root) if by_run["d1"] in k]  # its lock too
    ids = [r["run_id"] for r in ops.runs_json()]
    assert sorted(ids) == ["d0", "d3"]
    # the pending one can still be dealt with, its run gone
    assert ops.cli("deadletter", "discard", by_run["d2"])[0] == 0


def test_gc_older_than_on_s3_and_a_deleted_run_starts_afresh(
    ops: Ops,
    s3_server: S3Server,
    s3_root: str,
) -> None:
    for run_id in ("old", "new"):
        assert ops.cli("--run-id", run_id)[0] == 0
    store = open_store(s3_root)
    summary = json.loads(store.read("nightly/runs/old/.summary.json") or b"")
    summary["started"] = summary["finished"] = "2020-01-01T00:00:00.000000Z"
    store.write("nightly/runs/old/.summary.json", json.dumps(summary).encode())
    code, done, err = ops.cli("gc", "--older-than", "30")
    assert code == 0, err
    assert done.startswith("deleted run old (")
    assert run_keys(s3_server, s3_root, "old") == {}
    code, again, _err = ops.cli("gc", "--older-than", "30")
    assert again.strip() == "freed 0 B: 0 run(s), 0 dead letter(s)"
    code, _out, err = ops.cli("--run-id", "old")  # not locked out
    assert code == 0, err
    assert "step extract started" in err  # nothing was left to skip


def test_gc_older_than_on_s3_ages_a_run_without_summary_or_journal_by_its_objects(
    ops: Ops,
    s3_server: S3Server,
    s3_root: str,
) -> None:
    """A run killed before it wrote its summary or a journal line has only its objects to
    tell its age: their newest ``LastModified``. It ages, and ``gc --older-than`` deletes it
    once that is old enough (it used to be kept forever)."""
    assert ops.cli("--run-id", "bare")[0] == 0
    store = open_store(s3_root)
    told = [k for k in store.list_keys("nightly/runs/bare/") if "summary" in k or "journal" in k]
    assert told
    store.delete(told)
    history = ops.pipeline.history()
    [run] = list_runs(history, ops.pipeline.step_names, dead_letters=False)
    assert (run.run_id, run.started) == ("bare", "")
    left = store.list_keys("nightly/runs/bare/")
    newest = max(info.modified for info in map(store.head, left) if info is not None)
    assert history.last_change("bare") == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(newest))
    steps = ops.pipeline.step_names
    young = collect_garbage(history, steps, older_than_days=1, now=newest + 3600)
    assert (young.runs, set(run_keys(s3_server, s3_root, "bare"))) == ([], set(left))
    old = collect_garbage(history, steps, older_than_days=1, now=newest + 2 * 86400)
    assert [run_id for run_id, _size in old.runs] == ["bare"]
    assert run_keys(s3_server, s3_root, "bare") == {}
    assert history.last_change("bare") == ""  # nothing left to date it by


def test_backfill_on_s3_skips_finished_days_and_stops_at_a_failure(
    ops: Ops,
    s3_server: S3Server,
    s3_root: str,
) -> None:
    assert ops.cli("--run-id", "2026-11-01")[0] == 0
    code, out, _err = ops.cli(
        "backfill", "2026-11-01", "2026-11-04",
        OPS_FAIL="load@2026-11-03",
    )  # fmt: skip
    assert code == 1
    assert out.splitlines()[0] == (
        "backfill 2026-11-01..2026-11-04: 1 succeeded, 1 skipped (already done), 1 failed, "
        "1 not run"
    )
    assert "failed   2026-11-03: ValueError: boom" in out
    assert "not run  2026-11-04" in out
    assert "nightly/runs/2026-11-04/rows.csv" not in objects(s3_server, s3_root)
    code, out, _err = ops.cli("backfill", "2026-11-01", "2026-11-04")
    assert code == 0
    assert out.splitlines()[0] == (
        "backfill 2026-11-01..2026-11-04: 2 succeeded, 2 skipped (already done), 0 failed, "
        "0 not run"
    )
    runs = {r["run_id"]: r["state"] for r in ops.runs_json()}
    assert runs == dict.fromkeys(
        ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"], "succeeded"
    )


def test_runs_on_s3_without_a_summary_are_described_from_their_journal_and_collected(
    ops: Ops,
    s3_server: S3Server,
    s3_root: str,
) -> None:
    for run_id in ("ok", "bad"):
        env = {"OPS_FAIL": "load"} if run_id == "bad" else {}
        ops.cli("--run-id", run_id, **env)
    store = open_store(s3_root)
    store.delete(["nightly/runs/ok/.summary.json", "nightly/runs/bad/.summary.json"])
    store.write("nightly/runs/bare/rows.csv", b"id\n")  # nothing but an output
    runs = {r["run_id"]: r for r in ops.runs_json()}
    assert (runs["ok"]["state"], runs["bad"]["state"], runs["bad"]["failed_step"]) == (
        "succeeded",
        "failed",
        "load",
    )
    assert "older stalwart" in runs["ok"]["note"]
    assert runs["bare"]["state"] == "unknown"
    code, out, err = ops.cli("gc", "--keep-last", "0")
    assert code == 0, err
    assert "3 run(s)" in out.splitlines()[-1]
    assert not [k for k in objects(s3_server, s3_root) if k.startswith("nightly/runs/")]
