"""The append-only journal: fixed line prefix, group commit, torn tails, compaction."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stalwart._journal import Entry, Journal, Replay, parse_journal, worth_compacting


class SyncSpy:
    """Counts real ``fdatasync`` and ``fsync`` calls (they still happen)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.datasyncs = 0
        self.fsyncs = 0
        real_datasync, real_fsync = os.fdatasync, os.fsync

        def datasync(fd: int) -> None:
            self.datasyncs += 1
            real_datasync(fd)

        def fsync(fd: int) -> None:
            self.fsyncs += 1
            real_fsync(fd)

        monkeypatch.setattr(os, "fdatasync", datasync)
        monkeypatch.setattr(os, "fsync", fsync)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SyncSpy:
    return SyncSpy(monkeypatch)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(str(tmp_path / "journal"))
    yield journal
    journal.close()


def test_lines_read_back_with_their_prefix_and_the_latest_per_id_wins(journal: Journal) -> None:
    journal.append("fetch", "running", '{"runs":1}')
    journal.append("item-0017", "done")
    journal.append("fetch", "done", '{"runs":1,"note":"a b  c"}')
    journal.close()
    assert Path(journal.path).read_bytes() == (
        b'fetch running {"runs":1}\nitem-0017 done\nfetch done {"runs":1,"note":"a b  c"}\n'
    )
    replay = journal.replay()
    assert replay.bad == 0
    assert replay.latest() == {
        "fetch": Entry("fetch", "done", '{"runs":1,"note":"a b  c"}'),
        "item-0017": Entry("item-0017", "done"),
    }


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (Entry("two words", "done"), "journal id"),
        (Entry("", "done"), "journal id"),
        (Entry("x" * 257, "done"), "journal id"),
        (Entry("fetch", "Done"), "journal state"),
        (Entry("fetch", "done now"), "journal state"),
        (Entry("fetch", "done", "two\nlines"), "one line"),
        (Entry("fetch", "done", "cr\r"), "one line"),
    ],
)
def test_a_line_that_would_not_read_back_is_refused(
    journal: Journal, entry: Entry, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        journal.append(*entry)
    assert not os.path.exists(journal.path)


def test_torn_and_garbage_lines_are_counted_never_guessed() -> None:
    data = (
        b"a done\n"
        b"\xff\xfe done\n"  # not UTF-8
        b"b\n"  # no state
        b"c Done\n"  # not a state
        b"\n"  # the newline a writer adds after a torn tail: not a line
        b"d done {}\n"
        b"\x00\x00\x00\x00\n"  # a power cut's zeros
        b"e done"  # torn: no newline
    )
    replay = parse_journal(data)
    assert [entry.id for entry in replay.entries] == ["a", "d"]
    assert replay.bad == 5
    assert parse_journal(b"a done\n\x00\x00\x00").bad == 0  # zeros alone past the end: padding


@pytest.mark.parametrize("tail", [b"b do", b"b done", b"\x00" * 10, b"x" * 70_000])
def test_an_append_cuts_a_torn_tail_first(journal: Journal, tail: bytes) -> None:
    Path(journal.path).write_bytes(b"a done\n" + tail)
    assert journal.replay().bad == (0 if tail.startswith(b"\x00") else 1)
    journal.append("c", "done", durable=True)
    journal.close()
    assert Path(journal.path).read_bytes() == b"a done\nc done\n"  # never "b do" + newline


def test_a_journal_that_is_all_torn_line_starts_empty(journal: Journal) -> None:
    Path(journal.path).write_bytes(b"no newline at all")
    journal.append("c", "done")
    journal.close()
    assert Path(journal.path).read_bytes() == b"c done\n"


def test_group_commit_syncs_once_per_batch_of_durable_lines(tmp_path: Path, spy: SyncSpy) -> None:
    journal = Journal(str(tmp_path / "journal"), max_batch=3, max_delay=3600)
    for index in range(7):
        journal.append(f"item-{index}", "done", durable=True)
        journal.append(f"item-{index}", "note")  # not durable: rides along
    assert (journal.commits, spy.datasyncs, journal.waiting) == (2, 2, 1)
    journal.close()  # the last, partial batch
    assert (journal.commits, spy.datasyncs, journal.waiting) == (3, 3, 0)
    assert spy.fsyncs == 1  # the directory, once: the journal created the file


def test_group_commit_is_bounded_in_time(tmp_path: Path, spy: SyncSpy) -> None:
    now = [100.0]
    journal = Journal(
        str(tmp_path / "journal"), max_batch=1000, max_delay=0.5, clock=lambda: now[0]
    )
    journal.append("a", "done", durable=True)
    now[0] += 0.3
    journal.append("b", "done", durable=True)
    assert journal.commits == 0
    now[0] += 0.2  # the oldest waiting line is now 0.5 s old
    journal.append("c", "done", durable=True)
    assert (journal.commits, spy.datasyncs) == (1, 1)
    now[0] += 10
    journal.append("d", "done")  # not durable: starts no clock
    journal.commit()
    assert journal.commits == 1  # nothing durable waited
    journal.close()


def test_lines_appended_together_commit_as_lines_appended_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(str(tmp_path / "journal"), max_batch=3, max_delay=3600)
    writes: list[bytes] = []
    synced_at: list[int] = []  # the journal's size at each fdatasync
    real_write, real_datasync = os.write, os.fdatasync

    def write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    def datasync(fd: int) -> None:
        synced_at.append(os.fstat(fd).st_size)
        real_datasync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fdatasync", datasync)
    journal.append("item-0", "done", durable=True)
    journal.append_many([Entry(f"item-{n}", "done", "{}") for n in range(1, 8)], durable=True)
    assert [data.count(b"\n") for data in writes] == [1, 2, 3, 2]  # up to the batch bound
    line = len(b"item-1 done {}\n")
    assert synced_at == [len(b"item-0 done\n") + 2 * line, len(b"item-0 done\n") + 5 * line]
    assert (journal.commits, journal.waiting) == (2, 2)  # never more than 3 lines per sync
    journal.append_many([Entry("note", "seen")])  # not durable: one write, no sync
    assert (len(writes), journal.commits, journal.waiting) == (5, 2, 2)
    journal.close()
    replay = journal.replay()
    assert [entry.id for entry in replay.entries] == [f"item-{n}" for n in range(8)] + ["note"]
    assert replay.bad == 0


def test_lines_appended_together_are_bounded_in_time(tmp_path: Path, spy: SyncSpy) -> None:
    now = [100.0]
    journal = Journal(
        str(tmp_path / "journal"), max_batch=1000, max_delay=0.5, clock=lambda: now[0]
    )
    journal.append_many([Entry("a", "done")], durable=True)
    now[0] += 0.5
    journal.append_many([], durable=True)  # nothing to write: no commit either
    assert journal.commits == 0
    journal.append_many([Entry("b", "done"), Entry("c", "done")], durable=True)
    assert (journal.commits, spy.datasyncs, journal.waiting) == (1, 1, 0)
    journal.close()


def test_a_bad_line_among_many_writes_none_of_them(journal: Journal) -> None:
    with pytest.raises(ValueError, match="journal state"):
        journal.append_many([Entry("a", "done"), Entry("b", "Done")], durable=True)
    assert not os.path.exists(journal.path)


def test_a_short_write_of_many_lines_fails_and_the_next_append_cuts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(str(tmp_path / "journal"), max_batch=64)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:12]))  # a full disk
    with pytest.raises(OSError, match="short write"):
        journal.append_many([Entry("a", "done"), Entry("b", "done")], durable=True)
    monkeypatch.setattr(os, "write", real_write)
    journal.append("c", "done", durable=True)
    journal.close()
    assert Path(journal.path).read_bytes() == b"a done\nc done\n"  # b's torn line cut off


def test_lines_not_asked_to_be_durable_are_never_synced(journal: Journal, spy: SyncSpy) -> None:
    journal.append("a", "running")
    journal.commit()
    journal.close()
    journal.close()  # idempotent
    assert (journal.commits, spy.datasyncs) == (0, 0)


def test_bad_batch_bounds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Journal(str(tmp_path / "j"), max_batch=0)
    with pytest.raises(ValueError, match="max_delay"):
        Journal(str(tmp_path / "j"), max_delay=-1)


def test_compaction_keeps_the_latest_line_per_id_and_drops_garbage(journal: Journal) -> None:
    for round_ in range(500):
        for index in range(10):
            journal.append(f"item-{index}", "running" if round_ < 499 else "done", str(round_))
    journal.close()
    with open(journal.path, "ab") as handle:
        handle.write(b"torn li")
    replay = journal.replay()
    assert (len(replay.entries), replay.bad) == (5000, 1)
    assert worth_compacting(replay)
    journal.compact(replay.latest().values())
    compacted = journal.replay()
    assert compacted == Replay([Entry(f"item-{i}", "done", "499") for i in range(10)], 0)
    assert sorted(os.listdir(os.path.dirname(journal.path))) == ["journal"]  # no temp left
    assert not worth_compacting(compacted)
    journal.append("item-10", "done")  # appending goes on after a compaction
    journal.close()
    assert len(journal.replay().entries) == 11


def test_small_or_mostly_current_journals_are_not_worth_compacting() -> None:
    few = Replay([Entry("a", "done")] * 100, 0)
    current = Replay([Entry(f"i{n}", "done") for n in range(5000)], 0)
    assert not worth_compacting(few)
    assert not worth_compacting(current)
    assert worth_compacting(few, minimum=100)


def test_a_missing_journal_replays_empty(tmp_path: Path) -> None:
    assert Journal(str(tmp_path / "none")).replay() == Replay([], 0)


def test_a_raw_line_is_appended_with_the_same_torn_tail_cut(journal: Journal) -> None:
    """Another line format (the run's step journal: JSON lines) through the same appender."""
    journal.append_line(b'{"step":"fetch","outcome":"done"}\n')
    journal.close()
    with open(journal.path, "ab") as handle:
        handle.write(b'{"step":"fe')  # killed mid-append
    journal.append_line(b'{"step":"load"}\n', durable=True)
    journal.close()
    with open(journal.path, "rb") as handle:
        assert handle.read() == b'{"step":"fetch","outcome":"done"}\n{"step":"load"}\n'


@pytest.mark.parametrize("line", [b"no newline", b"two\nlines\n", b""])
def test_a_raw_line_must_be_one_line(journal: Journal, line: bytes) -> None:
    with pytest.raises(ValueError, match="one line"):
        journal.append_line(line)
    assert not os.path.exists(journal.path)


@pytest.mark.parametrize("planted", ["fifo", "directory", "symlink"])
def test_a_journal_that_is_not_a_regular_file_is_refused(tmp_path: Path, planted: str) -> None:
    path = tmp_path / "journal"
    if planted == "fifo":
        os.mkfifo(path)  # opened for writing, it would swallow every line
    elif planted == "directory":
        path.mkdir()
    else:
        (tmp_path / "elsewhere").write_bytes(b"")
        path.symlink_to(tmp_path / "elsewhere")
    journal = Journal(str(path))
    with pytest.raises(OSError, match="not a file"):
        journal.append("a", "done")
    if planted == "symlink":
        assert (tmp_path / "elsewhere").read_bytes() == b""  # nothing written through it


def test_a_failed_write_abandons_the_journal_and_the_next_append_starts_clean(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal.append("a", "done")
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        real_write(fd, data[:3])  # part of the line reached the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        journal.append("b", "done", durable=True)
    assert journal.waiting == 0
    monkeypatch.undo()
    journal.append("c", "done")
    journal.close()
    replay = Journal(journal.path).replay()
    assert [e.id for e in replay.entries] == ["a", "c"]
    assert replay.bad == 0


def test_a_short_write_abandons_the_journal(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:2]))
    with pytest.raises(OSError, match=r"short write to .*journal \(2 of 7 bytes\)"):
        journal.append("a", "done")
    monkeypatch.undo()
    journal.append("b", "done")
    journal.close()
    assert [e.id for e in Journal(journal.path).replay().entries] == ["b"]
