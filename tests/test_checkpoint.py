"""CheckpointStore and RunLock: markers that parse or are corrupt (never a crash), what a
run's marker records, records, clearing, and the lock's own rules."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stalwart
from stalwart import _checkpoint
from stalwart._checkpoint import (
    CheckpointStore,
    Marker,
    OutputRecord,
    RunLock,
    StepRecord,
    validate_name,
)
from stalwart._errors import RunLockedError, UsageError
from stalwart._records import InputRecord

SHA = "a" * 64


def marker(step: str = "fetch", run_id: str = "r1", **changes: Any) -> Marker:
    fields: dict[str, Any] = {
        "pipeline": "orders",
        "step": step,
        "run_id": run_id,
        "started": "2026-11-28T03:00:00.000000Z",
        "finished": "2026-11-28T03:00:01.000000Z",
        "duration_s": 1.0,
        "attempts": 2,
        "retries": 1,
        "runs": 1,
        "outputs": (OutputRecord("orders.json", 3, SHA),),
    }
    fields.update(changes)
    return Marker(**fields)


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "orders.json").write_text("[1]")
    return CheckpointStore(run_dir)


def marker_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(marker().to_json())
    data.update(changes)
    return data


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["2026-11-28", "a", "A.b_c-9", "9" * 128, "x..y"])
def test_valid_names(good: str) -> None:
    assert validate_name(good, "run ID") == good


@pytest.mark.parametrize(
    "bad",
    ["", ".", "..", "../x", "a/b", "/", ".hidden", "-x", "_x", "a" * 129, "a b", "é", "a\n", 7],
)
def test_invalid_names(bad: object) -> None:
    with pytest.raises(UsageError, match="invalid run ID") as info:
        validate_name(bad, "run ID")
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) < 300  # a long bad value is cut in the message


# -- markers ----------------------------------------------------------------------------------


def test_marker_round_trip_and_check(store: CheckpointStore) -> None:
    written = marker()
    store.write_marker(written)
    assert store.read_marker("fetch") == written
    decision = store.check("fetch", run_id="r1")
    assert decision.done
    assert decision.marker == written
    assert store.is_done("fetch")
    assert stat.S_IMODE(store.marker_path("fetch").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700


def test_no_marker_means_not_done(store: CheckpointStore) -> None:
    decision = store.check("fetch", run_id="r1")
    assert (decision.done, decision.corrupt, decision.reason) == (False, False, "not done yet")
    assert store.read_marker("fetch") is None


def test_missing_or_resized_output_means_not_done(store: CheckpointStore) -> None:
    store.write_marker(marker())
    (store.run_dir / "orders.json").write_text("[1, 2]")
    decision = store.check("fetch", run_id="r1")
    assert not decision.done
    assert not decision.corrupt
    assert decision.reason == "its output orders.json changed size (3 -> 6 bytes)"
    (store.run_dir / "orders.json").unlink()
    assert store.check("fetch", run_id="r1").reason == "its output orders.json is missing"


def _truncated() -> bytes:
    raw = marker().to_json()
    return raw[: len(raw) // 2]


CORRUPT: dict[str, bytes] = {
    "truncated JSON": _truncated(),
    "random bytes": random.Random(2).randbytes(300),
    "empty file": b"",
    "a JSON list": b"[1, 2]",
    "not UTF-8": b'{"step": "\xff"}',
    "deep nesting": b"[" * 100_000,
    "attempts as text": json.dumps(marker_dict(attempts="2")).encode(),
    "runs as a boolean": json.dumps(marker_dict(runs=True)).encode(),
    "negative retries": json.dumps(marker_dict(retries=-1)).encode(),
    "duration as text": json.dumps(marker_dict(duration="1s")).encode(),
    "step as a number": json.dumps(marker_dict(step=5)).encode(),
    "missing step": json.dumps({k: v for k, v in marker_dict().items() if k != "step"}).encode(),
    "outputs as an object": json.dumps(marker_dict(outputs={"a": 1})).encode(),
    "output as a list": json.dumps(marker_dict(outputs=[["orders.json", 3, SHA]])).encode(),
    "output size as text": json.dumps(
        marker_dict(outputs=[{"name": "orders.json", "size": "3", "sha256": SHA}])
    ).encode(),
    "negative output size": json.dumps(
        marker_dict(outputs=[{"name": "orders.json", "size": -3, "sha256": SHA}])
    ).encode(),
    "output outside the run": json.dumps(
        marker_dict(outputs=[{"name": "../../etc/passwd", "size": 3, "sha256": SHA}])
    ).encode(),
    "absolute output": json.dumps(
        marker_dict(outputs=[{"name": "/etc/passwd", "size": 3, "sha256": SHA}])
    ).encode(),
    "empty output name": json.dumps(
        marker_dict(outputs=[{"name": "", "size": 3, "sha256": SHA}])
    ).encode(),
    "backslash output name": json.dumps(
        marker_dict(outputs=[{"name": "..\\x", "size": 3, "sha256": SHA}])
    ).encode(),
    "malformed sha256": json.dumps(
        marker_dict(outputs=[{"name": "orders.json", "size": 3, "sha256": "xyz"}])
    ).encode(),
    "newer format": json.dumps(marker_dict(format=2)).encode(),
    "missing format": json.dumps(
        {k: v for k, v in marker_dict().items() if k != "format"}
    ).encode(),
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_marker_is_reported_not_raised(store: CheckpointStore, content: bytes) -> None:
    store._ensure_directory()
    store.marker_path("fetch").write_bytes(content)
    decision = store.check("fetch", run_id="r1")
    assert not decision.done
    assert decision.corrupt
    assert decision.reason.startswith(f"its marker {store.marker_path('fetch')} is corrupt (")
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError: the message varies
        store.read_marker("fetch")


def test_marker_of_another_step_or_run_is_corrupt(store: CheckpointStore) -> None:
    store.write_marker(marker("fetch"))
    store.marker_path("transform").write_bytes(store.marker_path("fetch").read_bytes())
    decision = store.check("transform", run_id="r1")
    assert (decision.done, decision.corrupt) == (False, True)
    assert decision.reason == "its marker belongs to step 'fetch' of run 'r1'"
    other_run = store.check("fetch", run_id="r2")
    assert (other_run.done, other_run.corrupt) == (False, True)
    assert "of run 'r1'" in other_run.reason


def test_unreadable_marker_is_corrupt(store: CheckpointStore) -> None:
    store._ensure_directory()
    store.marker_path("fetch").mkdir()  # a directory where the marker should be
    decision = store.check("fetch", run_id="r1")
    assert (decision.done, decision.corrupt) == (False, True)
    assert "cannot be read" in decision.reason


def test_oversized_marker_is_corrupt(store: CheckpointStore) -> None:
    store._ensure_directory()
    with open(store.marker_path("fetch"), "wb") as handle:
        handle.truncate(16 * 1024 * 1024 + 10)
    decision = store.check("fetch", run_id="r1")
    assert decision.corrupt
    assert "larger than" in decision.reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_parser(raw: bytes) -> None:
    try:
        parsed = Marker.from_json(raw)
    except ValueError:
        return
    assert isinstance(parsed, Marker)  # pragma: no cover - random bytes are never a marker


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(marker_dict())), json_values))
def test_any_json_object_parses_or_is_a_value_error(changes: dict[str, Any]) -> None:
    raw = json.dumps(marker_dict(**changes)).encode()
    try:
        parsed = Marker.from_json(raw)
    except ValueError:
        return
    assert parsed.step == marker_dict(**changes)["step"]


def test_clear_removes_exactly_the_named_markers(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in ("fetch", "transform", "upload"):
        store.write_marker(marker(step))
        store.write_record(step, StepRecord(runs=1, outcome="done"))
    synced: list[Path] = []
    monkeypatch.setattr(_checkpoint, "fsync_directory", lambda p: synced.append(Path(p)))
    assert store.clear(["transform", "upload", "never-ran"]) == ["transform", "upload"]
    assert synced == [store.directory]  # a cleared marker does not come back after a crash
    assert store.marker_path("fetch").exists()
    assert store.read_record("upload").runs == 1  # records (the runs count) are kept
    assert store.clear(["transform"]) == []
    assert synced == [store.directory]  # nothing deleted: nothing to sync
    store.write_marker(marker("upload"))
    assert sorted(store.clear_all()) == ["fetch", "upload"]
    store.close()
    assert sorted(p.name for p in store.directory.iterdir()) == []  # markers only
    assert (store.run_dir / ".journal.jsonl").is_file()
    assert CheckpointStore(store.run_dir / "nowhere").clear_all() == []


def test_bad_step_names_are_refused(store: CheckpointStore) -> None:
    with pytest.raises(UsageError):
        store.check("../x", run_id="r1")
    with pytest.raises(UsageError):
        store.clear(["a/b"])
    with pytest.raises(UsageError):
        store.write_marker(marker(step="../../evil"))
    with pytest.raises(UsageError):
        store.read_record(".hidden")
    assert not store.directory.exists()


def test_creating_the_checkpoint_directory_syncs_the_run_directory(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(_checkpoint, "fsync_directory", lambda p: synced.append(Path(p)))
    store._ensure_directory()
    store._ensure_directory()
    assert synced == [store.run_dir]


def test_markers_are_synced_records_are_not(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store._ensure_directory()
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.write_record("fetch", StepRecord(runs=1, outcome="running"))
    assert synced == []
    store.write_marker(marker())
    assert len(synced) == 2  # the marker file, then its directory


# -- step records ---------------------------------------------------------------------------


def test_record_round_trip(store: CheckpointStore) -> None:
    record = StepRecord(
        runs=3,
        started="s",
        outcome="failed",
        finished="f",
        error_type="ValueError",
        error="boom",
        attempts=4,
        retries=3,
        dead_letter_id="dl1",
        extra={"k": "v"},
    )
    store.write_record("fetch", record)
    assert store.read_record("fetch") == record
    assert store.read_record("transform") == StepRecord()


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"\xff\xfe",
        b"[]",
        json.dumps({"step": "fetch", "runs": "3"}).encode(),
        json.dumps({"step": "fetch", "runs": True}).encode(),
        json.dumps({"step": "fetch", "runs": -1}).encode(),
        json.dumps({"step": "fetch", "error": 5}).encode(),
        json.dumps({"step": "fetch", "extra": []}).encode(),
        json.dumps({"step": "../evil", "runs": 1}).encode(),
        json.dumps({"runs": 1}).encode(),
    ],
)
def test_unreadable_journal_line_is_a_warning_and_skipped(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    store._ensure_directory()
    good = json.dumps({"step": "fetch", "runs": 2, "outcome": "done"}).encode()
    (store.run_dir / ".journal.jsonl").write_bytes(good + b"\n" + content + b"\n")
    with caplog.at_level(logging.WARNING, logger="stalwart.checkpoint"):
        assert store.read_record("fetch") == StepRecord(runs=2, outcome="done")
    assert "ignored 1 unreadable line(s)" in caplog.text


def test_journal_ignores_unknown_fields(store: CheckpointStore) -> None:
    store._ensure_directory()
    line = json.dumps({"step": "fetch", "runs": 2, "future": 1})
    (store.run_dir / ".journal.jsonl").write_text(line + "\n")
    assert store.read_record("fetch") == StepRecord(runs=2)


def test_a_torn_last_line_does_not_swallow_the_next_record(store: CheckpointStore) -> None:
    store._ensure_directory()
    (store.run_dir / ".journal.jsonl").write_bytes(b'{"step": "fetch", "runs": 1}\n{"step": "fe')
    store.write_record("fetch", StepRecord(runs=2, outcome="running"))
    store.close()
    fresh = CheckpointStore(store.run_dir)
    assert fresh.read_record("fetch") == StepRecord(runs=2, outcome="running")


def test_journal_that_is_a_directory_is_a_warning(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    store._ensure_directory()
    (store.run_dir / ".journal.jsonl").mkdir()
    assert store.read_record("fetch") == StepRecord()
    assert "ignoring the unreadable journal" in caplog.text


def test_records_survive_a_new_store_and_keep_the_latest(store: CheckpointStore) -> None:
    store.write_record("fetch", StepRecord(runs=1, outcome="running"))
    store.write_record("fetch", StepRecord(runs=1, outcome="done"))
    store.write_record("upload", StepRecord(runs=4, outcome="failed", error="x"))
    store.close()
    store.close()  # idempotent
    fresh = CheckpointStore(store.run_dir)
    assert fresh.read_record("fetch") == StepRecord(runs=1, outcome="done")
    assert fresh.read_record("upload").error == "x"
    mode = os.stat(store.run_dir / ".journal.jsonl").st_mode & 0o777
    assert mode == 0o600


def test_records_are_immutable_values_that_print_their_fields() -> None:
    """``Marker``, ``OutputRecord`` and ``InputRecord``: built with keywords, equal when
    their fields are, never changed in place, shown field by field."""
    first = marker()
    assert first == marker()
    assert first != marker(runs=2)
    assert first.outputs == (OutputRecord(name="orders.json", size=3, sha256=SHA),)
    assert (first.params, first.inputs, first.format) == ({}, (), 1)  # the defaults
    assert repr(first.outputs[0]) == f"OutputRecord(name='orders.json', size=3, sha256='{SHA}')"
    assert repr(first).startswith("Marker(pipeline='orders', step='fetch', run_id='r1', ")
    read = InputRecord(name="orders.json", step="fetch", sha256=SHA)
    assert read == InputRecord(name="orders.json", step="fetch", sha256=SHA)
    assert hash(read) == hash(InputRecord(name="orders.json", step="fetch", sha256=SHA))
    for record, field in ((first, "step"), (first.outputs[0], "size"), (read, "step")):
        with pytest.raises(AttributeError):
            setattr(record, field, "other")
    assert Marker.from_json(first.to_json()) == first


# -- the run lock -----------------------------------------------------------------------------


def test_lock_excludes_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    with RunLock(path) as first:
        assert first.held
        note = path.read_text()
        assert note.startswith(f"pid {os.getpid()} on host ")
        assert " since " in note
        with pytest.raises(RunLockedError) as info:
            RunLock(path).acquire()
        assert f"pid {os.getpid()}" in str(info.value)
        assert info.value.holder == note.strip()
        assert info.value.lock_path == str(path)
        assert "Nothing was touched" in str(info.value)
    assert not first.held
    assert path.read_text() == ""  # the note goes with the holder; the file stays
    with RunLock(path):  # free again
        pass


def test_lock_cannot_be_taken_twice_by_one_object(tmp_path: Path) -> None:
    lock = RunLock(tmp_path / ".lock")
    lock.acquire()
    try:
        with pytest.raises(RuntimeError, match="already locked"):
            lock.acquire()
    finally:
        lock.release()
    lock.release()  # releasing twice is harmless


def test_lock_without_a_holder_note(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    with RunLock(path):
        path.write_text("")  # the holder's note is gone (or not written yet)
        with pytest.raises(RunLockedError, match="holder unknown"):
            RunLock(path).acquire()


def test_lock_holds_even_if_the_note_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)
    with RunLock(tmp_path / ".lock") as lock:
        assert lock.held
        with pytest.raises(RunLockedError):
            RunLock(tmp_path / ".lock").acquire()


@pytest.mark.parametrize("where", ["flock", "note"])
def test_lock_releases_its_descriptor_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    if where == "flock":
        monkeypatch.setattr(fcntl, "flock", interrupted)
    else:
        monkeypatch.setattr(os, "ftruncate", interrupted)
    lock = RunLock(tmp_path / ".lock")
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    monkeypatch.undo()
    assert not lock.held
    with RunLock(tmp_path / ".lock"):  # no descriptor kept the lock
        pass


def test_lock_error_that_is_not_contention_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError, match="No locks available") as info:
        RunLock(tmp_path / ".lock").acquire()
    assert not isinstance(info.value, RunLockedError)


def test_lock_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("do not truncate me")
    (tmp_path / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="link") as info:
        RunLock(tmp_path / ".lock").acquire()
    assert info.value.errno == errno.ELOOP
    assert (tmp_path / "elsewhere").read_text() == "do not truncate me"


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
