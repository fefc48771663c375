"""The state-store seam: the same operations and promises on a directory and on S3 (moto's
server on loopback): whole writes, create-only writes, listings, deletions, the store's clock;
the segmented journal; a store that ignores conditional writes is refused."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from s3support import S3Server
from stalwart._errors import DeadLetterError, RunLockedError, UsageError
from stalwart._lease import FencedStore, Lease, lease_holder
from stalwart._records import StepRecord
from stalwart._remote_history import StoreRunHistory, VersionedRecord
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


def test_the_directories_below_a_prefix_come_from_one_listing(store: StateStore) -> None:
    for key in ("p/runs/r1/out", "p/runs/r1/.checkpoints/a.done", "p/runs/r2/out", "p/runs/x"):
        store.write(key, b"x")
    assert store.list_dirs("p/runs/") == ["r1", "r2"]  # not the object p/runs/x
    assert store.list_dirs("p/runs") == ["r1", "r2"]
    assert store.list_dirs("p/runs/r1/") == [".checkpoints"]
    assert store.list_dirs("") == ["p"]
    assert store.list_dirs("nothing/") == []
    assert store.list_dirs("p/runs/x/") == []  # an object, not a directory
    assert FencedStore(store, Lease(store, "p/.lease")).list_dirs("p/") == ["runs"]


def test_the_newest_write_below_a_prefix_dates_it(store: StateStore) -> None:
    assert store.newest_write("p/runs/r1/") is None
    for key in ("p/runs/r1/out", "p/runs/r1/.checkpoints/a.done", "p/runs/r2/out"):
        store.write(key, b"x")
    infos = [store.head(k) for k in ("p/runs/r1/out", "p/runs/r1/.checkpoints/a.done")]
    newest = max(info.modified for info in infos if info is not None)
    assert store.newest_write("p/runs/r1/") == newest
    assert FencedStore(store, Lease(store, "p/.lease")).newest_write("p/runs/r1/") == newest
    assert store.newest_write("p/runs/r3/") is None


def test_a_versioned_record_loses_no_update_among_concurrent_writers(store: StateStore) -> None:
    """Four writers add one ten times each, at once: every increment is kept (a plain
    read-then-write would lose some), and only the newest version is left."""
    start = threading.Barrier(4)

    def add_ten() -> None:
        record = VersionedRecord(store, "p/.counter", tries=200)
        start.wait()
        for _ in range(10):
            record.swap(lambda value: {"n": (value or {"n": 0})["n"] + 1})

    writers = [threading.Thread(target=add_ten) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    record = VersionedRecord(store, "p/.counter")
    assert record.read() == {"n": 40}
    assert len(store.list_keys("p/.counter/")) == 40  # fewer than 2 x keep: none deleted
    assert record.swap(lambda value: None) == ({"n": 40}, None)  # closed: an empty version
    assert record.read() is None
    assert record.swap(lambda value: None) == (None, None)  # nothing to write
    newest = store.list_keys("p/.counter/")[-1]
    assert store.read(newest) == b""


def test_old_versions_are_deleted_once_they_pile_up(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    record = VersionedRecord(store, "p/.counter", keep=4)
    for _ in range(8):
        record.swap(lambda value: {"n": (value or {"n": 0})["n"] + 1})
    assert len(store.list_keys("p/.counter/")) == 8
    record.swap(lambda value: {"n": (value or {"n": 0})["n"] + 1})  # 8 listed: tidy to 4 + 1
    assert [k[-2:] for k in store.list_keys("p/.counter/")] == ["05", "06", "07", "08", "09"]
    assert record.read() == {"n": 9}


def test_a_versioned_record_gives_up_when_others_always_win(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    record = VersionedRecord(store, "p/.counter", tries=3)
    writes: list[int] = []

    def meddle(value: dict[str, object] | None) -> dict[str, object]:
        number = len(writes) + 1  # another process creates the version this one wanted
        store.write(f"p/.counter/{number:012d}", b'{"n": 0}')
        writes.append(number)
        return {"n": 1}

    with pytest.raises(OSError, match="kept changing under this process"):
        record.swap(meddle)
    assert writes == [1, 2, 3]
    store.write("p/.counter/000000000009", b"\xff torn")
    assert record.read() is None  # unreadable: no value (a warning)


class DeletesFail(LocalStore):
    """A directory store whose deletions fail the way a network or a disk can (EIO)."""

    def delete(self, keys: Iterable[str]) -> list[str]:
        raise OSError(errno.EIO, "Input/output error")


def test_a_failed_tidying_does_not_undo_an_update(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = VersionedRecord(DeletesFail(tmp_path), "p/.counter", keep=1)
    with caplog.at_level(logging.INFO, "stalwart.history"):
        for _ in range(3):
            record.swap(lambda value: {"n": (value or {"n": 0})["n"] + 1})
    assert record.read() == {"n": 3}
    assert "could not delete old versions" in caplog.text


def test_a_run_whose_deletion_fails_is_let_go_and_the_error_raised(tmp_path: Path) -> None:
    store = DeletesFail(tmp_path)
    store.write("p/runs/r1/out.txt", b"x")
    history = StoreRunHistory(store, "p")
    with pytest.raises(OSError, match="Input/output error"):
        history.remove("r1", dry_run=False)
    assert history.holder("r1") is None  # its lease was released, not left to expire
    assert store.read("p/runs/r1/out.txt") == b"x"


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
