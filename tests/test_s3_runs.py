"""Runs on an ``s3://`` root (moto's S3 on loopback) keep the local root's behaviour: done
steps are skipped on resume, outputs are whole objects (an exception inside
``ctx.atomic_write`` publishes nothing), status and reset work, dead letters are kept,
listed, replayed and discarded there, and a killed writer's multipart upload is aborted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import stalwart
from s3support import S3Server, objects
from stalwart._remote_state import open_store
from stalwart.testing import FlakyServer, Reply
from test_deadletter_runs import BODY as DEAD_LETTERS
from test_step_model import Project


def keys(server: S3Server, root: str) -> set[str]:
    return set(objects(server, root))


def test_a_resumed_run_skips_the_steps_done_on_s3(s3_server: S3Server, s3_root: str) -> None:
    pipeline = stalwart.Pipeline("orders", root=s3_root)
    calls: list[str] = []
    fail = [True]

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        calls.append("fetch")
        ctx.write_json("orders.json", [{"id": 1}, {"id": 2}])

    @pipeline.step()
    def transform(ctx: stalwart.Context) -> None:
        calls.append("transform")
        rows = ctx.read_json("orders.json")
        if fail[0]:
            raise ValueError("boom in transform")
        ctx.write_text("count.txt", str(len(rows)))

    with pytest.raises(ValueError, match="boom in transform"):
        pipeline.run(run_id="r1")
    assert "orders/runs/r1/.checkpoints/fetch.done" in keys(s3_server, s3_root)
    assert "orders/runs/r1/.checkpoints/transform.done" not in keys(s3_server, s3_root)
    fail[0] = False
    result = pipeline.run(run_id="r1")
    assert result.skipped == ("fetch",)
    assert result.ran == ("transform",)
    assert calls == ["fetch", "transform", "transform"]
    assert objects(s3_server, s3_root)["orders/runs/r1/count.txt"] == b"2"
    store = pipeline.checkpoints("r1")
    assert store.is_done("fetch", run_id="r1")
    assert store.read_record("transform").runs == 2
    assert store.read_record("transform").outcome == "done"

    # An output deleted behind stalwart's back makes its step run again.
    bucket, _, prefix = s3_root[len("s3://") :].partition("/")
    s3_server.client().delete_object(Bucket=bucket, Key=f"{prefix}/orders/runs/r1/count.txt")
    again = pipeline.run(run_id="r1")
    assert again.ran == ("transform",)


def test_outputs_are_written_read_and_opened_through_ctx(s3_server: S3Server, s3_root: str) -> None:
    pipeline = stalwart.Pipeline("io", root=s3_root)
    seen: dict[str, Any] = {}

    @pipeline.step()
    def write(ctx: stalwart.Context) -> None:
        ctx.write_bytes("raw/data.bin", b"\x00\x01")
        with open(ctx.write_text("notes.txt", "hello"), encoding="utf-8") as copy:
            seen["written"] = copy.read()  # a local copy
        with ctx.atomic_write("table.csv") as out:
            out.write("a,b\r\n1,2\r\n")
        with ctx.atomic_write("blob.bin", "wb") as binary:
            binary.write(b"x" * 100_000)
        with pytest.raises(TypeError, match="must be bytes"):
            ctx.write_bytes("bad", "text")  # type: ignore[arg-type]

    @pipeline.step()
    def read(ctx: stalwart.Context) -> None:
        seen["bytes"] = ctx.read_bytes("raw/data.bin")
        seen["text"] = ctx.read_text("notes.txt")
        local = ctx.path("table.csv")
        seen["local"] = (local.is_absolute(), local.read_bytes().decode())
        seen["url"] = ctx.url("table.csv")  # type: ignore[attr-defined]
        seen["missing"] = ctx.path("never.txt").exists()
        with pytest.raises(FileNotFoundError, match=r"never\.txt"):
            ctx.read_bytes("never.txt")
        ctx.write_json("inputs.json", [i.name for i in ctx.inputs])

    result = pipeline.run(run_id="r1")
    assert result.ran == ("write", "read")
    assert seen["written"] == "hello"
    assert seen["bytes"] == b"\x00\x01"
    assert seen["text"] == "hello"
    assert seen["local"] == (True, "a,b\r\n1,2\r\n")
    assert seen["url"] == f"{s3_root}/io/runs/r1/table.csv"
    assert seen["missing"] is False
    stored = objects(s3_server, s3_root)
    assert stored["io/runs/r1/blob.bin"] == b"x" * 100_000
    assert json.loads(stored["io/runs/r1/inputs.json"]) == ["raw/data.bin", "notes.txt"]
    marker = json.loads(stored["io/runs/r1/.checkpoints/write.done"])
    assert {o["name"]: o["size"] for o in marker["outputs"]} == {
        "raw/data.bin": 2,
        "notes.txt": 5,
        "table.csv": 10,
        "blob.bin": 100_000,
    }


def test_an_exception_inside_atomic_write_publishes_nothing(
    s3_server: S3Server, s3_root: str
) -> None:
    pipeline = stalwart.Pipeline("partial", root=s3_root)
    version = ["first"]

    @pipeline.step()
    def export(ctx: stalwart.Context) -> None:
        ctx.write_text("old.txt", "kept")
        with ctx.atomic_write("report.csv") as out:
            out.write(f"{version[0]} " * 10_000)
            if version[0] == "second":
                raise RuntimeError("the database went away mid-export")
            out.write("end\n")

    pipeline.run(run_id="r1")
    before = objects(s3_server, s3_root)["partial/runs/r1/report.csv"]
    version[0] = "second"
    with pytest.raises(RuntimeError, match="went away"):
        pipeline.run(run_id="r1", force=True)
    assert objects(s3_server, s3_root)["partial/runs/r1/report.csv"] == before  # untouched
    with pytest.raises(RuntimeError, match="went away"):
        pipeline.run(run_id="r2")
    assert "partial/runs/r2/report.csv" not in keys(s3_server, s3_root)  # never published
    assert "partial/runs/r2/old.txt" in keys(s3_server, s3_root)


def test_the_state_root_variable_selects_object_storage(
    s3_server: S3Server, s3_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STALWART_ROOT", s3_root + "/")
    pipeline = stalwart.Pipeline("env")

    @pipeline.step()
    def only(ctx: stalwart.Context) -> None:
        ctx.write_text("out.txt", ctx.run_id)

    pipeline.run(run_id="r1")
    assert objects(s3_server, s3_root)["env/runs/r1/out.txt"] == b"r1"
    assert pipeline.reset(run_id="r1") == ["only"]
    assert pipeline.reset(run_id="r1") == []  # nothing left to clear: no lease taken
    assert pipeline.reset(run_id="never") == []


def test_a_killed_writers_multipart_upload_is_aborted_at_start(
    s3_server: S3Server, s3_root: str
) -> None:
    bucket, _, prefix = s3_root[len("s3://") :].partition("/")
    client = s3_server.client()
    client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/up/runs/r1/huge.bin")
    client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/up/runs/r2/other.bin")
    pipeline = stalwart.Pipeline("up", root=s3_root)

    @pipeline.step()
    def only(ctx: stalwart.Context) -> None:
        ctx.write_text("small.txt", "ok")

    pipeline.run(run_id="r1")
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == [f"{prefix}/up/runs/r2/other.bin"]  # another run's


def s3_project(tmp_path: Path, body: str, root: str) -> Project:
    project = Project(tmp_path, body)
    text = project.file.read_text().replace(repr(str(project.state)), repr(root))
    project.file.write_text(text)
    return project


STEPS = """
@pipeline.step()
def fetch(ctx):
    trace(ctx)
    ctx.write_text("fetch.out", "rows")

@pipeline.step()
def report(ctx):
    trace(ctx)
    if os.environ.get("FAIL"):
        raise ValueError("report failed")
    ctx.write_text("report.out", ctx.read_text("fetch.out").upper())
"""


def test_status_and_reset_work_on_s3(tmp_path: Path, s3_root: str) -> None:
    project = s3_project(tmp_path, STEPS, s3_root)
    missing = project.run("status", "--run-id", "r0")
    assert "this run has not started yet" in missing.stdout
    failed = project.run("--run-id", "r1", env={"FAIL": "1"})
    assert failed.returncode == 1
    status = project.run("status", "--run-id", "r1")
    assert status.returncode == 0, status.stderr
    assert f"({s3_root}/p/runs/r1)" in status.stdout
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[2:]}
    assert " done " in lines["fetch"]
    assert "failed" in lines["report"]
    assert "ValueError: report failed" in lines["report"]
    other = project.run("status", "--run-id", "r9")
    assert "other runs: r1" in other.stdout
    data = json.loads(project.run("status", "--run-id", "r1", "--json").stdout)
    assert data["exists"] is True
    assert data["locked_by"] is None
    assert data["run_dir"] == f"{s3_root}/p/runs/r1"
    assert [s["state"] for s in data["steps"]] == ["done", "failed"]

    reset = project.run("reset", "--run-id", "r1")
    assert reset.returncode == 0, reset.stderr
    after = json.loads(project.run("status", "--run-id", "r1", "--json").stdout)
    assert [s["state"] for s in after["steps"]] == ["pending", "failed"]
    again = project.run("--run-id", "r1")
    assert again.returncode == 0, again.stderr
    assert project.ran() == ["fetch", "report", "fetch", "report"]


def letters(project: Project) -> list[dict[str, str]]:
    listed = project.run("deadletter", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout)["dead_letters"])


def test_dead_letters_are_kept_replayed_and_discarded_on_s3(
    tmp_path: Path, s3_server: S3Server, s3_root: str
) -> None:
    project = s3_project(tmp_path, DEAD_LETTERS, s3_root)
    with FlakyServer() as sink:
        sink.route("POST", "/r", [Reply(status=400, body="bad"), Reply(status=201)])
        env = {"SINK": sink.url("/r")}
        failed = project.run("--run-id", "r1", env=env)
        assert failed.returncode == 1
        [kept] = letters(project)
        assert (kept["run_id"], kept["step"], kept["state"]) == ("r1", "upload", "pending")
        stored = objects(s3_server, s3_root)[f"p/deadletter/{kept['id']}.json"]
        assert json.loads(stored)["state"] == "pending"
        shown = project.run("deadletter", "show", kept["id"])
        assert shown.returncode == 0, shown.stderr
        assert kept["id"] in shown.stdout

        replayed = project.run("deadletter", "replay", kept["id"], env=env)
        assert replayed.returncode == 0, replayed.stderr
        assert sink.count("POST", "/r") == 2
        stored = objects(s3_server, s3_root)[f"p/deadletter/{kept['id']}.json"]
        assert json.loads(stored)["state"] == "replayed"

        resumed = project.run("--run-id", "r1", env=env)
        assert resumed.returncode == 0, resumed.stderr
    rows = {row["reason"]: row for row in letters(project)}
    assert rows["row 7 rejected"]["state"] == "pending"
    discarded = project.run("deadletter", "discard", rows["row 7 rejected"]["id"])
    assert discarded.returncode == 0, discarded.stderr
    assert {row["reason"]: row["state"] for row in letters(project)} == {
        "HTTP 400": "replayed",
        "row 7 rejected": "discarded",
    }
    unknown = project.run("deadletter", "show", "20260101T000000000000Z-00000000")
    assert unknown.returncode == 2
    assert f"{s3_root}/p/deadletter" in unknown.stderr
    lock = f"p/deadletter/.{rows['row 7 rejected']['id']}.lock/"
    assert open_store(s3_root).list_keys(lock) != []  # released, not gone
