"""The state-store seam: the same operations and promises on a directory and on S3 (moto's
server on loopback): whole writes, create-only writes, listings, deletions, the store's clock;
the segmented journal; a store that ignores conditional writes is refused."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3support import S3Server
from stalwart._errors import DeadLetterError, RunLockedError, UsageError
from stalwart._lease import FencedStore, Lease, lease_holder
from stalwart._records import StepRecord
from stalwart._remote_state import (
    COMPACT_AFTER,
    RemoteCheckpointStore,
    RemoteDeadLetterStore,
    RunLease,
    open_store,
)
from stalwart._s3 import S3Store, check_conditional_writes
from stalwart._store import LocalStore, SegmentedLog, StateStore, is_remote
from stalwart.testing import no_wait


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "directory":
        return LocalStore(tmp_path / "store")
    return open_store(request.getfixturevalue("s3_root"))


def test_a_written_object_reads_back_whole_and_replaces_the_old_one(store: StateStore) -> None:
    assert store.read("p/runs/r1/out.csv") is None
    store.write("p/runs/r1/out.csv", b"old")
    store.write("p/runs/r1/out.csv", b"new content")
    assert store.read("p/runs/r1/out.csv") == b"new content"
    info = store.head("p/runs/r1/out.csv")
    assert info is not None
    assert info.size == 11
    assert abs(info.now - info.modified) < 60  # the store's clock, around the write
    assert store.head("p/runs/r1/missing") is None
    assert store.fetch("p/runs/r1/missing") is None
    found = store.fetch("p/runs/r1/out.csv")
    assert found is not None
    assert found[0] == b"new content"
    assert found[1].size == 11


def test_an_uploaded_file_becomes_one_object(store: StateStore, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(300_000))
    store.upload("p/big.bin", str(local))
    assert store.read("p/big.bin") == local.read_bytes()


def test_create_only_writes_win_once(store: StateStore) -> None:
    first = store.create("p/.lease/000000000001", b"mine")
    assert first is not None
    assert first.size == 4
    assert store.create("p/.lease/000000000001", b"yours") is None
    assert store.read("p/.lease/000000000001") == b"mine"


def test_listing_a_prefix_and_deleting(store: StateStore) -> None:
    for key in ("p/a/1", "p/a/2", "p/b/1", "q/1"):
        store.write(key, b"x")
    assert store.list_keys("p/a/") == ["p/a/1", "p/a/2"]
    assert store.list_keys("p/") == ["p/a/1", "p/a/2", "p/b/1"]
    assert store.list_keys("nothing/") == []
    assert store.delete(["p/a/1"]) == ["p/a/1"]
    assert store.list_keys("p/a/") == ["p/a/2"]
    assert store.url("p/a/2").endswith("/p/a/2")


def test_keys_are_never_paths_out_of_the_store(tmp_path: Path) -> None:
    local = LocalStore(tmp_path)
    for key in ("../x", "/etc/passwd", "a//b", "a/./b", ""):
        with pytest.raises(ValueError, match="invalid state key"):
            local.url(key)


def test_the_journal_log_reads_its_snapshot_and_later_segments(store: StateStore) -> None:
    log = SegmentedLog(store, "p/runs/r1/.journal")
    assert log.read() == b""
    for n in range(5):
        log.append(f"line {n}\n".encode())
    assert log.read() == b"".join(f"line {n}\n".encode() for n in range(5))
    assert log.segments == 5
    log.compact(b"summary of 0-4\n")
    log.append(b"line 5")  # a segment without its newline still ends a line
    again = SegmentedLog(store, "p/runs/r1/.journal")
    assert again.read() == b"summary of 0-4\nline 5\n"
    assert again.segments == 1
    assert len(store.list_keys("p/runs/r1/.journal/")) == 2  # the snapshot and one segment


def test_a_second_writer_of_the_same_segment_is_refused(store: StateStore) -> None:
    one = SegmentedLog(store, "p/j")
    two = SegmentedLog(store, "p/j")
    one.read()
    two.read()
    one.append(b"a\n")
    with pytest.raises(RuntimeError, match="another process writes this log"):
        two.append(b"b\n")
    assert SegmentedLog(store, "p/j").read() == b"a\n"


def test_roots_are_told_apart() -> None:
    assert is_remote("s3://bucket/prefix")
    assert not is_remote("/var/lib/stalwart")
    with pytest.raises(UsageError, match="gs://, which stalwart cannot store state on"):
        open_store("gs://bucket/x")
    with pytest.raises(UsageError, match="names no bucket"):
        S3Store("s3:///prefix")
    assert isinstance(open_store("relative/dir"), LocalStore)


@pytest.fixture
def careless_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    server = S3Server(ignoring_conditions=True)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def test_a_store_that_ignores_conditional_writes_is_refused(careless_server: S3Server) -> None:
    store = S3Store(f"s3://{careless_server.new_bucket()}/state")
    with pytest.raises(UsageError, match="ignores conditional writes") as caught:
        check_conditional_writes(store)
    assert "If-None-Match" in str(caught.value)
    assert store.list_keys(".stalwart-probe/") == []  # the probe cleaned up


def test_a_store_that_honours_them_is_probed_once(s3_root: str) -> None:
    store = S3Store(s3_root)
    check_conditional_writes(store)
    check_conditional_writes(store)  # cached for this bucket: no second probe
    assert store.list_keys(".stalwart-probe/") == []


def test_the_run_state_classes_work_on_a_directory_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(tmp_path / "store")
    assert store.list_sizes("p/") == {}
    with RunLease(store, "p/runs/r1") as lease:  # no probe, no uploads to abort there
        assert lease.held
        assert lease.path.endswith("p/runs/r1/.lease")
        checkpoints = RemoteCheckpointStore(lease.store, "p/runs/r1")
        lease.store.write("p/runs/r1/out.txt", b"12345")
        assert store.list_sizes("p/runs/r1/") == {
            "p/runs/r1/out.txt": 5,
            **store.list_sizes("p/runs/r1/.lease/"),
        }
        assert checkpoints._size("out.txt") == 5  # from the run's listing
        assert checkpoints._size("out.txt") == 5  # asked again: from the store
        with pytest.raises(FileNotFoundError):
            checkpoints._size("missing.txt")
        checkpoints.write_record("s1", StepRecord(runs=1, outcome="running"))
        rival = RemoteCheckpointStore(store, "p/runs/r1")
        rival.read_record("s1")
        checkpoints.close()  # the first segment is written
        with caplog.at_level(logging.WARNING, "stalwart.checkpoint"):
            rival.write_record("s1", StepRecord(runs=2, outcome="running"))
            rival.close()  # its segment number is taken: a warning, not a failure
        assert "could not append to the journal" in caplog.text
        assert checkpoints.exists()
    assert not RemoteCheckpointStore(store, "p/runs/r2").exists()
    assert not lease.held
    lease.release()  # twice is harmless


def test_many_journal_records_fold_into_a_snapshot(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    checkpoints = RemoteCheckpointStore(store, "p/runs/r1")
    for n in range(COMPACT_AFTER + 3):
        checkpoints.write_record(f"s{n % 4}", StepRecord(runs=n + 1, outcome="done"))
        checkpoints.close()  # one segment per record here
    names = [k.rpartition("/")[2] for k in store.list_keys("p/runs/r1/.journal/")]
    assert [n[:5] for n in names] == ["seg-0"] * 3 + ["snap-"]
    again = RemoteCheckpointStore(store, "p/runs/r1")
    assert again.read_record("s2").runs == COMPACT_AFTER + 3  # the last record, n = 34
    log = SegmentedLog(store, "p/other")
    log.compact(b"nothing to fold\n")  # no segment: no snapshot
    log.append(b"first\n")  # reads the log first
    assert store.list_keys("p/other/") == ["p/other/seg-000000000001"]


def test_dead_letters_on_a_store_report_unreadable_and_busy_states(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    letters = RemoteDeadLetterStore(store, "p/deadletter", pipeline="p")
    envelope_id = letters.keep_payload({"row": 1}, reason="bad row")
    (tmp_path / "p" / "deadletter" / "20260101T000000000000Z-00000000.json").mkdir()
    with pytest.raises(DeadLetterError, match="cannot read dead letter"):
        letters.load("20260101T000000000000Z-00000000")
    busy = pytest.raises(DeadLetterError, match="being replayed or discarded")
    lock = f"p/deadletter/.{envelope_id}.lock"
    with Lease(store, lock, ttl=30), no_wait(), busy:  # another process replays it
        letters.discard(envelope_id)
    assert letters.discard(envelope_id).state == "discarded"


def test_an_unreachable_store_has_no_holder(s3_root: str) -> None:
    gone = S3Store(s3_root.replace("s3://", "s3://no-such-bucket-") + "x")
    assert lease_holder(gone, "p/runs/r1/.lease/") is None


def test_a_lease_note_that_is_not_json_still_holds_the_run(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write("p/.lease/000000000007", b"\xff not json")
    with pytest.raises(RunLockedError, match="holder unknown"):
        Lease(store, "p/.lease", ttl=30).acquire()
    fenced = FencedStore(store, Lease(store, "p/.lease", ttl=30))
    assert fenced.fetch("p/.lease/000000000007") is not None
    assert fenced.head("p/.lease/000000000007") is not None
    assert fenced.list_sizes("p/.lease/") == {"p/.lease/000000000007": 10}
