"""Dead letters belong to their run: an envelope records pipeline, run and step; when that
step later succeeds in that run, its pending letters become ``superseded`` (listed so,
skipped by ``replay --all``, refused by ``replay ID`` without ``--force``)."""

from __future__ import annotations

import json
from pathlib import Path

from stalwart.testing import FlakyServer, Reply
from test_step_model import Project

BODY = """
@pipeline.step()
def upload(ctx):
    trace(ctx)
    ctx.http.post(os.environ["SINK"], content=b"report", dead_letter=True)

@pipeline.step()
def audit(ctx):
    ctx.dead_letter({"row": 7}, reason="row 7 rejected")  # kept on purpose: stays pending
"""


def letters(project: Project, *args: str) -> list[dict[str, str]]:
    listed = project.run("deadletter", "list", "--json", *args)
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout)["dead_letters"])


def test_a_later_success_supersedes_the_runs_pending_letters(tmp_path: Path) -> None:
    project = Project(tmp_path, BODY)
    with FlakyServer() as sink:
        sink.route("POST", "/r", [Reply(status=400, body="bad"), Reply(status=201)])
        env = {"SINK": sink.url("/r")}
        failed = project.run("--run-id", "r1", env=env)
        assert failed.returncode == 1
        [kept] = letters(project)
        assert (kept["run_id"], kept["step"], kept["state"]) == ("r1", "upload", "pending")
        # The failure summary names the dead letter and how to re-send it.
        assert f"Kept dead letter {kept['id']}" in failed.stderr
        assert f"deadletter replay {kept['id']}" in failed.stderr

        resumed = project.run("--run-id", "r1", env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert f"dead letter {kept['id']} is superseded" in resumed.stderr
        rows = {row["reason"]: row["state"] for row in letters(project)}
        assert rows == {"HTTP 400": "superseded", "row 7 rejected": "pending"}
        table = project.run("deadletter", "list")
        assert "superseded" in table.stdout

        everything = project.run("deadletter", "replay", "--all", env=env)
        assert everything.returncode == 1  # the payload cannot be re-sent, and says so
        assert "replayed 0 of 1 pending" in everything.stdout
        assert sink.count("POST", "/r") == 2  # the superseded request was not sent again

        refused = project.run("deadletter", "replay", kept["id"], env=env)
        assert refused.returncode == 1
        assert "superseded" in refused.stderr
        assert "--force" in refused.stderr
        assert sink.count("POST", "/r") == 2

        sink.route("POST", "/r", Reply(status=201))
        forced = project.run("deadletter", "replay", kept["id"], "--force", env=env)
        assert forced.returncode == 0, forced.stderr
        assert sink.count("POST", "/r") == 3


def test_list_filters_by_run_id(tmp_path: Path) -> None:
    project = Project(tmp_path, BODY)
    with FlakyServer() as sink:
        sink.route("POST", "/r", Reply(status=400, body="bad"))
        for run_id in ("r1", "r2"):
            assert project.run("--run-id", run_id, env={"SINK": sink.url("/r")}).returncode == 1
    assert {row["run_id"] for row in letters(project)} == {"r1", "r2"}
    assert [row["run_id"] for row in letters(project, "--run-id", "r2")] == ["r2"]
    assert letters(project, "--run-id", "r9") == []


RETRIED = """
@pipeline.step()
def extract(ctx):
    ctx.write_text("a.txt", "a")  # no dead letter anywhere yet: the run notes it once

tries = []

@pipeline.step(retry=stalwart.RetryPolicy(attempts=2, initial=0.01, maximum=0.01))
def load(ctx):
    tries.append(1)
    if len(tries) == 1:
        ctx.dead_letter({"row": 1}, reason="first attempt")
        raise stalwart.Transient("first attempt fails")
    ctx.dead_letter({"row": 2}, reason="kept by the attempt that succeeded")

@pipeline.step()
def report(ctx):
    ctx.write_text("b.txt", "b")
"""


def test_letters_kept_after_an_empty_listing_are_still_settled(tmp_path: Path) -> None:
    # The run lists the dead-letter directory once while it is empty; a later step's
    # failed attempt keeps a letter in this same run: its success still supersedes it.
    project = Project(tmp_path, RETRIED)
    done = project.run("--run-id", "r1")
    assert done.returncode == 0, done.stderr
    rows = {row["reason"]: row["state"] for row in letters(project)}
    assert rows == {"first attempt": "superseded", "kept by the attempt that succeeded": "pending"}
