"""Dead letters: a permanent upload failure keeps the exact request; replay re-sends it once."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stalwart
from stalwart._deadletter import DeadLetterStore, decode_body
from stalwart.cli._main import run_cli
from stalwart.instrumentation._events import DeadLettered
from stalwart.testing import FlakyServer, RecordingAlerter, Reply, no_wait

TOKEN = "s3cr3t-bearer-token-value"
BODY = b"id,customer,amount\n1,acme,12.50\n\xe2\x82\xac,euro,1.00\n"


class Events:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def handle(self, event: Any) -> None:
        self.seen.append(event)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


_CLIENTS: list[stalwart.HttpClient] = []


def make_pipeline(
    root: Path, server: FlakyServer, alerter: RecordingAlerter, *, sink: Any = None
) -> stalwart.Pipeline:
    client = stalwart.HttpClient(
        headers={"Authorization": f"Bearer {TOKEN}"},
        retry=stalwart.RetryPolicy(attempts=3, initial=0.01, maximum=0.02),
    )
    _CLIENTS.append(client)
    pipeline = stalwart.Pipeline(
        "dl",
        root=root,
        http=client,
        alerters=[alerter],
        metrics=[sink] if sink else [],
    )

    @pipeline.step()
    def upload(ctx: stalwart.Context) -> None:
        ctx.http.post(
            server.url("/reports"),
            content=BODY,
            headers={"Content-Type": "text/csv", "X-Trace": "abc"},
            dead_letter=True,
        )

    return pipeline


def envelopes(root: Path) -> list[Path]:
    return sorted((root / "dl" / "deadletter").glob("*.json"))


def test_permanent_400_keeps_one_exact_envelope_and_alert_names_it(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerter = RecordingAlerter()
    events = Events()
    with FlakyServer() as server:
        server.route("POST", "/reports", Reply(status=400, body="schema mismatch"))
        pipeline = make_pipeline(root, server, alerter, sink=events)
        code = run_cli(["run", "--run-id", "r1", "--log-format", "json"], pipeline=pipeline)
        assert code == 1
        assert server.count("POST", "/reports") == 1  # a 400 is permanent: never retried
    [path] = envelopes(root)
    envelope = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert envelope["state"] == "pending"
    assert envelope["kind"] == "http"
    assert (envelope["pipeline"], envelope["run_id"], envelope["step"]) == ("dl", "r1", "upload")
    assert envelope["response"] == {"status": 400, "excerpt": "schema mismatch"}
    assert envelope["reason"] == "HTTP 400"
    assert envelope["attempts"] == 1
    request = envelope["request"]
    assert request["method"] == "POST"
    assert request["url"] == server.url("/reports")
    assert request["idempotency_key"].startswith("stw1-")
    assert request["headers"]["x-trace"] == "abc"
    stored = request["body"]
    assert stored["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert stored["size"] == len(BODY)
    assert stored["data"].encode("utf-8") == BODY
    # No secret anywhere in the file, in any form.
    raw = path.read_bytes()
    assert TOKEN.encode() not in raw
    assert b"authorization" not in raw.lower()
    # The alert names the envelope and how to replay it.
    alert = alerter.last
    assert alert.dead_letter_id == envelope["id"] == path.stem
    assert f"deadletter replay {path.stem}" in alert.replay_command
    assert [e.envelope_id for e in events.seen if isinstance(e, DeadLettered)] == [path.stem]
    assert TOKEN not in capsys.readouterr().err


def test_binary_body_is_kept_as_base64_byte_for_byte(root: Path) -> None:
    payload = bytes(range(256)) * 4
    with FlakyServer() as server:
        server.route("POST", "/bin", Reply(status=422, body="nope"))
        pipeline = stalwart.Pipeline("dl", root=root, alerters=[])

        @pipeline.step()
        def send(ctx: stalwart.Context) -> None:
            ctx.http.post(server.url("/bin"), content=payload, dead_letter=True)

        with pytest.raises(stalwart.HttpStatusError):
            pipeline.run(run_id="r1")
    [path] = envelopes(root)
    body = json.loads(path.read_text())["request"]["body"]
    assert body["encoding"] == "base64"
    assert decode_body(body) == payload


def test_replay_resends_identical_bytes_with_the_same_key_then_refuses(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerter = RecordingAlerter()
    with FlakyServer() as server:
        server.route("POST", "/reports", Reply(status=400, body="schema mismatch"))
        pipeline = make_pipeline(root, server, alerter)
        assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == 1
        [original] = server.requests_for("POST", "/reports")
        envelope_id = alerter.last.dead_letter_id
        assert envelope_id is not None

        server.route("POST", "/reports", Reply(status=201, body="stored"))  # the sink is fixed
        assert run_cli(["deadletter", "replay", envelope_id], pipeline=pipeline) == 0
        replayed = server.requests_for("POST", "/reports")[-1]
        assert replayed.body == original.body == BODY
        assert replayed.headers["idempotency-key"] == original.headers["idempotency-key"]
        # Credentials come from the client's configuration, not from the envelope.
        assert replayed.headers["authorization"] == f"Bearer {TOKEN}"
        assert replayed.headers["content-type"] == "text/csv"

        envelope = pipeline.deadletters.show(envelope_id)
        assert envelope["state"] == "replayed"
        assert envelope["replay_status"] == 201
        assert [h["action"] for h in envelope["history"]] == ["replayed"]

        capsys.readouterr()
        assert run_cli(["deadletter", "replay", envelope_id], pipeline=pipeline) == 1
        assert "already replayed" in capsys.readouterr().err
        assert server.count("POST", "/reports") == 2  # the refused replay sent nothing


def test_failed_replay_keeps_the_envelope_pending_and_records_the_attempt(root: Path) -> None:
    alerter = RecordingAlerter()
    with FlakyServer() as server:
        server.route("POST", "/reports", Reply(status=400, body="schema mismatch"))
        pipeline = make_pipeline(root, server, alerter)
        assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == 1
        envelope_id = alerter.last.dead_letter_id
        assert envelope_id
        assert run_cli(["deadletter", "replay", envelope_id], pipeline=pipeline) == 1
        envelope = pipeline.deadletters.show(envelope_id)
        assert envelope["state"] == "pending"
        assert envelope["history"][-1]["action"] == "replay_failed"
        assert "400" in envelope["history"][-1]["detail"]


def test_step_rerun_and_replay_reuse_the_key_and_runs_never_share_one(root: Path) -> None:
    alerter = RecordingAlerter()
    with FlakyServer() as server:
        server.route("POST", "/reports", Reply(status=400, body="bad"))
        pipeline = make_pipeline(root, server, alerter)
        assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == 1
        assert run_cli(["run", "--run-id", "r1", "--step", "upload"], pipeline=pipeline) == 1
        assert run_cli(["run", "--run-id", "r2"], pipeline=pipeline) == 1
        server.route("POST", "/reports", Reply(status=200, body="ok"))
        first_id = alerter.alerts[0].dead_letter_id
        assert first_id
        assert run_cli(["deadletter", "replay", first_id], pipeline=pipeline) == 0
        keys = [r.headers["idempotency-key"] for r in server.requests_for("POST", "/reports")]
    r1_first, r1_rerun, r2, replay = keys
    assert r1_first == r1_rerun == replay
    assert r2 != r1_first


def test_retries_exhausted_are_dead_lettered_with_their_attempts(root: Path) -> None:
    alerter = RecordingAlerter()
    with FlakyServer() as server, no_wait():
        server.route("POST", "/reports", Reply(status=503, body="down"))
        pipeline = make_pipeline(root, server, alerter)
        assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == 1
        assert server.count("POST", "/reports") == 3  # the keyed POST is safe to retry
    [path] = envelopes(root)
    envelope = json.loads(path.read_text())
    assert envelope["attempts"] == 3
    assert envelope["reason"] == "HTTP 503 after 3 attempts"
    assert envelope["first_failure_at"] <= envelope["last_failure_at"]


def test_replay_all_sends_every_pending_envelope(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerter = RecordingAlerter()
    with FlakyServer() as server:
        server.route("POST", "/reports", Reply(status=400))
        pipeline = make_pipeline(root, server, alerter)
        for run_id in ("a", "b", "c"):
            assert run_cli(["run", "--run-id", run_id], pipeline=pipeline) == 1
        discarded = pipeline.deadletters.list()[1].id  # (one alert: the same failure thrice)
        assert discarded
        assert run_cli(["deadletter", "discard", discarded], pipeline=pipeline) == 0
        server.route("POST", "/reports", Reply(status=200))
        capsys.readouterr()
        assert run_cli(["deadletter", "replay", "--all"], pipeline=pipeline) == 0
        assert "replayed 2 of 2" in capsys.readouterr().out
        assert server.count("POST", "/reports") == 5
    states = {row.id: row.state for row in pipeline.deadletters.list()}
    assert sorted(states.values()) == ["discarded", "replayed", "replayed"]
    assert states[discarded] == "discarded"
    envelope = pipeline.deadletters.show(discarded)
    assert envelope["discarded_by"]
    assert envelope["discarded_at"]


def test_discard_twice_is_refused(root: Path) -> None:
    alerter = RecordingAlerter()
    with FlakyServer() as server:
        server.route("POST", "/reports", Reply(status=400))
        pipeline = make_pipeline(root, server, alerter)
        assert run_cli(["run", "--run-id", "a"], pipeline=pipeline) == 1
    envelope_id = alerter.last.dead_letter_id
    assert envelope_id
    assert run_cli(["deadletter", "discard", envelope_id], pipeline=pipeline) == 0
    assert run_cli(["deadletter", "discard", envelope_id], pipeline=pipeline) == 1
    assert run_cli(["deadletter", "replay", envelope_id], pipeline=pipeline) == 1


@pytest.mark.parametrize(
    "bad_id", ["../../etc/passwd", "", "x", "20261128T031500123456Z-1a2b3c4", "a/b", "..", "-rf"]
)
def test_malformed_ids_are_usage_errors(
    root: Path, bad_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = stalwart.Pipeline("dl", root=root, alerters=[])

    @pipeline.step()
    def noop(ctx: stalwart.Context) -> None:
        del ctx

    for action in ("show", "replay", "discard"):
        assert run_cli(["deadletter", action, bad_id], pipeline=pipeline) == 2
    expected = "error" if bad_id.startswith("-") else "invalid dead-letter id"  # argparse: option
    assert expected in capsys.readouterr().err
    assert not (root / "dl" / "deadletter").exists() or not list(
        (root / "dl" / "deadletter").iterdir()
    )


def test_unknown_id_is_a_usage_error(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = stalwart.Pipeline("dl", root=root, alerters=[])
    assert (
        run_cli(["deadletter", "show", "20261128T031500123456Z-1a2b3c4d"], pipeline=pipeline) == 2
    )
    assert "no dead letter 20261128T031500123456Z-1a2b3c4d" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe\x00garbage", b"[]", b'{"id": "someone-else"}', b""],
)
def test_corrupt_envelope_is_reported_not_a_crash(
    root: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    store = DeadLetterStore(root / "dl" / "deadletter", pipeline="dl")
    good = store.write(
        {"kind": "payload", "reason": "kept", "created_at": "2026-11-28T00:00:00.000000Z"}
    )
    bad_id = "20261128T000000000000Z-deadbeef"
    (root / "dl" / "deadletter" / f"{bad_id}.json").write_bytes(content)
    pipeline = stalwart.Pipeline("dl", root=root, alerters=[])
    rows = {row.id: row.state for row in store.list()}
    assert rows == {bad_id: "corrupt", good: "pending"}
    assert run_cli(["deadletter", "list"], pipeline=pipeline) == 0
    out = capsys.readouterr().out
    assert bad_id in out
    assert "corrupt" in out
    assert run_cli(["deadletter", "show", bad_id], pipeline=pipeline) == 1
    assert "corrupt" in capsys.readouterr().err
    assert run_cli(["deadletter", "replay", bad_id], pipeline=pipeline) == 1


def test_tampered_body_is_refused_at_replay(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alerter = RecordingAlerter()
    with FlakyServer() as server:
        server.route("POST", "/reports", Reply(status=400))
        pipeline = make_pipeline(root, server, alerter)
        assert run_cli(["run", "--run-id", "a"], pipeline=pipeline) == 1
        [path] = envelopes(root)
        envelope = json.loads(path.read_text())
        envelope["request"]["body"]["data"] = "tampered"
        path.write_text(json.dumps(envelope))
        server.route("POST", "/reports", Reply(status=200))
        capsys.readouterr()
        assert run_cli(["deadletter", "replay", path.stem], pipeline=pipeline) == 1
        assert "altered" in capsys.readouterr().err
        assert server.count("POST", "/reports") == 1


def test_payload_dead_letters_are_kept_listed_and_not_replayable(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept: list[str] = []
    pipeline = stalwart.Pipeline("dl", root=root, alerters=[])

    @pipeline.step()
    def transform(ctx: stalwart.Context) -> None:
        kept.append(ctx.dead_letter({"row": 7, "why": "bad amount"}, reason="row 7 rejected"))
        kept.append(ctx.dead_letter("plain text", reason="text"))
        kept.append(ctx.dead_letter(b"\x00\x01", reason="bytes"))

    pipeline.run(run_id="r1")
    store = pipeline.deadletters
    assert [row.reason for row in store.list()] == ["row 7 rejected", "text", "bytes"]
    first = store.show(kept[0])
    assert first["kind"] == "payload"
    assert json.loads(first["payload"]["body"]["data"]) == {"row": 7, "why": "bad amount"}
    assert any("test_deadletter.py" in frame for frame in first["where"])
    assert run_cli(["deadletter", "list"], pipeline=pipeline) == 0
    listing = capsys.readouterr().out
    assert all(envelope_id in listing for envelope_id in kept)
    assert run_cli(["deadletter", "replay", kept[0]], pipeline=pipeline) == 1
    assert "nothing to re-send" in capsys.readouterr().err
    assert run_cli(["deadletter", "list", "--json"], pipeline=pipeline) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == 1
    assert [d["id"] for d in data["dead_letters"]] == kept


def test_secret_in_url_is_redacted_and_replay_refused(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerter = RecordingAlerter()
    pipeline = stalwart.Pipeline("dl", root=root, alerters=[alerter])
    with FlakyServer() as server:
        server.route("POST", "/hook", Reply(status=404))

        @pipeline.step()
        def upload(ctx: stalwart.Context) -> None:
            ctx.http.post(server.url("/hook") + f"?token={TOKEN}", content=b"x", dead_letter=True)

        assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == 1
        [path] = envelopes(root)
        assert TOKEN not in path.read_text()
        assert json.loads(path.read_text())["request"]["url_redacted"] is True
        assert run_cli(["deadletter", "replay", path.stem], pipeline=pipeline) == 1
        assert "carried a secret" in capsys.readouterr().err
        assert server.count("POST", "/hook") == 1


def test_show_prints_the_whole_envelope(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alerter = RecordingAlerter()
    with FlakyServer() as server:
        server.route("POST", "/reports", Reply(status=400, body="schema mismatch"))
        pipeline = make_pipeline(root, server, alerter)
        assert run_cli(["run", "--run-id", "r1"], pipeline=pipeline) == 1
    envelope_id = alerter.last.dead_letter_id
    assert envelope_id
    capsys.readouterr()
    assert run_cli(["deadletter", "show", envelope_id], pipeline=pipeline) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == pipeline.deadletters.show(envelope_id)


def test_client_outside_a_pipeline_dead_letters_into_a_store(root: Path) -> None:
    store = DeadLetterStore(root / "outside", pipeline="adhoc")
    with FlakyServer() as server, stalwart.HttpClient() as client:
        server.route("PUT", "/x", Reply(status=409, body="conflict"))
        with pytest.raises(stalwart.HttpStatusError) as caught:
            client.put(server.url("/x"), content=b"payload", dead_letter=store)
    envelope_id = caught.value.dead_letter_id
    assert envelope_id is not None
    assert store.show(envelope_id)["request"]["method"] == "PUT"
    assert os.stat(root / "outside").st_mode & 0o777 == 0o700


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
