"""Behaviours a user reaches for first, straight from DESIGN.md's wording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import stalwart
from conftest import run_python
from stalwart._deadletter import DeadLetterStore
from stalwart.cli._main import run_cli
from stalwart.testing import FlakyServer, RecordingAlerter, Reply, no_wait

PIPE = """
import stalwart
pipeline = stalwart.Pipeline("mod", root={root!r})

@pipeline.step()
def only(ctx):
    ctx.write_text("out.txt", "x")
"""


def test_status_module_name_works_from_the_module_directory(tmp_path: Path) -> None:
    (tmp_path / "mypipe.py").write_text(PIPE.format(root=str(tmp_path / "state")))
    stalwart_cli = str(Path(sys.executable).with_name("stalwart"))
    ran = run_python(["-c", "import sys; from stalwart.cli._main import console_main; "
                      "sys.argv[0] = 'stalwart'; console_main()",
                      "run", "mypipe:pipeline", "--run-id", "r1"], cwd=tmp_path)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    status = subprocess.run(
        [stalwart_cli, "status", "mypipe:pipeline", "--run-id", "r1", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["steps"][0]["state"] == "done"


def test_retry_takes_policy_as_a_keyword() -> None:
    calls: list[int] = []

    @stalwart.retry(policy=stalwart.RetryPolicy(attempts=3, initial=0.0, maximum=0.0))
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("blip")
        return "ok"

    with no_wait():
        assert flaky() == "ok"
    assert len(calls) == 3


def test_stalwart_testing_is_reachable_as_an_attribute() -> None:
    with stalwart.testing.no_wait() as waits:
        assert waits.waits == []


def test_dead_letter_store_show_default_pipeline_and_replay_without_a_client(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "daily" / "deadletter"
    alerter = RecordingAlerter()
    with FlakyServer() as server:
        server.route("POST", "/x", Reply(status=400))
        pipeline = stalwart.Pipeline("daily", root=tmp_path, alerters=[alerter])

        @pipeline.step()
        def up(ctx: stalwart.Context) -> None:
            ctx.http.post(server.url("/x"), content=b"body", dead_letter=True)

        with pytest.raises(stalwart.HttpStatusError):
            pipeline.run(run_id="r1")
        store = DeadLetterStore(directory)
        assert store.pipeline == "daily"
        envelope_id = alerter.last.dead_letter_id
        assert envelope_id
        assert store.show(envelope_id)["request"]["method"] == "POST"
        server.route("POST", "/x", Reply(status=200))
        assert store.replay(envelope_id).status_code == 200
        assert server.requests_for("POST", "/x")[-1].body == b"body"


def test_marker_says_duration_and_a_step_without_http_took_one_attempt(root: Path) -> None:
    pipeline = stalwart.Pipeline("m", root=root, alerters=[])

    @pipeline.step()
    def plain(ctx: stalwart.Context) -> None:
        ctx.write_text("a.txt", "a")

    pipeline.run(run_id="r1")
    data = json.loads((root / "m" / "runs" / "r1" / ".checkpoints" / "plain.done").read_text())
    assert isinstance(data["duration"], float)
    assert data["attempts"] == 1
    assert data["retries"] == 0
    assert data["runs"] == 1
    assert sorted(p.name for p in (root / "m" / "runs" / "r1" / ".checkpoints").iterdir()) == [
        "plain.done"
    ]


def test_alert_counts_the_attempts_of_a_retried_function(root: Path) -> None:
    alerter = RecordingAlerter()
    pipeline = stalwart.Pipeline("a", root=root, alerters=[alerter])

    @stalwart.retry(stalwart.RetryPolicy(attempts=3))
    def always_down() -> None:
        raise TimeoutError("down")

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        always_down()

    with no_wait(), pytest.raises(TimeoutError):
        pipeline.run(run_id="r1")
    alert = alerter.last
    assert alert.attempts == 3
    assert alert.message == "down"
    assert alert.duration == alert.duration_s


def test_a_dead_letter_that_cannot_be_written_does_not_hide_the_http_error(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alerter = RecordingAlerter()
    with FlakyServer() as server:
        server.route("POST", "/x", Reply(status=400, body="schema mismatch"))
        pipeline = stalwart.Pipeline("d", root=root, alerters=[alerter])

        @pipeline.step()
        def up(ctx: stalwart.Context) -> None:
            ctx.http.post(server.url("/x"), content=b"body", dead_letter=True)

        def full(*args: object, **kwargs: object) -> str:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("stalwart._deadletter.StepDeadLetters.keep_request", full)
        with pytest.raises(stalwart.HttpStatusError) as caught:
            pipeline.run(run_id="r1")
    assert "schema mismatch" in alerter.last.error
    assert any("dead letter was not kept" in n for n in caught.value.__notes__)


def test_log_extra_none_is_accepted(root: Path) -> None:
    pipeline = stalwart.Pipeline("l", root=root, alerters=[])

    @pipeline.step()
    def talk(ctx: stalwart.Context) -> None:
        ctx.log.info("hello", extra=None)

    assert pipeline.run(run_id="r1").ran == ("talk",)


def test_a_root_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    pipeline = stalwart.Pipeline("f", root=not_a_dir, alerters=[])
    pipeline.step(name="s")(lambda ctx: None)
    assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == 2


def test_two_runs_of_one_pipeline_in_threads_share_the_default_client(root: Path) -> None:
    with FlakyServer() as server:
        server.route("GET", "/x", Reply(json=[1]))
        pipeline = stalwart.Pipeline("t", root=root, alerters=[])
        inside = threading.Barrier(2)

        @pipeline.step()
        def get(ctx: stalwart.Context) -> None:
            inside.wait(timeout=30)  # both runs are inside their step
            ctx.write_json("x.json", ctx.http.get(server.url("/x")).json())

        errors: list[BaseException] = []

        def run(run_id: str) -> None:
            try:
                pipeline.run(run_id=run_id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(f"r{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert server.count("GET", "/x") == 2
        assert pipeline._http._client is None  # the last run to end closed it


def test_the_auth_scheme_word_is_not_masked_the_token_is(root: Path) -> None:
    with (
        FlakyServer() as server,
        stalwart.HttpClient(headers={"Authorization": "Bearer tok-123456789"}) as client,
    ):
        server.route("GET", "/x", Reply(status=404, body="send a Bearer token; tok-123456789?"))
        with pytest.raises(stalwart.HttpStatusError) as caught:
            client.get(server.url("/x"))
    message = str(caught.value)
    assert "tok-123456789" not in message
    assert "send a Bearer token; ***?" in message
