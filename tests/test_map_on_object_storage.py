"""Map steps on an ``s3://`` root (moto's S3 on loopback), with every guarantee of the local
root: each item's output is one object, the driver's item journal is immutable segment
objects (a snapshot replaces them once they pile up), a resume redoes only what is left, a
torn or garbage segment re-runs its items and never skips them, failed items are dead
letters of kind item on the store (replayed, discarded), status counts them, and
``--force`` and ``reset`` clear the journal's objects."""

from __future__ import annotations

import gc
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

import stalwart
from s3support import S3Server, objects
from stalwart._journal import Entry, _parse_lines, parse_journal
from stalwart._map import ItemsFailed
from stalwart._map_state import envelope_state, worker_store
from stalwart._remote_context import _item_copies
from stalwart._remote_state import COMPACT_AFTER, RemoteItemJournal, open_store
from stalwart._store import LocalStore, StateStore
from stalwart.cli._main import run_cli
from stalwart.cli._status import collect
from stalwart.testing import MemoryMetrics, RecordingAlerter

RUN = "sq/runs/r1"
ITEMS = f"{RUN}/.checkpoints/square.items/"


class Squares:
    """A pipeline on ``root``: a step listing the items, a map step squaring them (each
    execution counted)."""

    def __init__(self, root: str, count: int, **options: Any) -> None:
        self.count = count
        self.calls: Counter[str] = Counter()
        self.failing: set[str] = set()
        self.alerts = RecordingAlerter()
        self.metrics = MemoryMetrics()
        self.pipeline = stalwart.Pipeline(
            "sq", root=root, alerters=[self.alerts], metrics=[self.metrics]
        )

        @self.pipeline.step()
        def numbers(ctx: stalwart.Context) -> None:
            ctx.write_json("numbers.json", list(range(self.count)))

        @self.pipeline.map(items=lambda ctx: ctx.read_json("numbers.json"), **options)
        def square(ctx: stalwart.ItemContext, n: int) -> None:
            self.calls[ctx.key] += 1
            if ctx.key in self.failing:
                raise ValueError(f"item {ctx.key} is bad")
            ctx.write_json(f"out/{n}.json", {"square": n * n})

    def run(self, **kwargs: Any) -> stalwart.RunResult:
        return self.pipeline.run(run_id="r1", **kwargs)


def journal_parts(server: S3Server, root: str) -> dict[str, bytes]:
    """Every object of the map step's item journal: name (``seg-<n>``...) -> bytes."""
    return {
        key[len(ITEMS) :]: data
        for key, data in objects(server, root).items()
        if key.startswith(ITEMS)
    }


def done_records(server: S3Server, root: str) -> Counter[str]:
    """How many well-formed ``done`` lines each item has, over every object of the journal."""
    found: Counter[str] = Counter()
    for data in journal_parts(server, root).values():
        found.update(e.id for e in parse_journal(data).entries if e.state == "done")
    return found


def test_items_are_objects_and_a_resume_runs_only_what_is_left(
    s3_server: S3Server, s3_root: str, tmp_path: Path
) -> None:
    squares = Squares(s3_root, 30, workers=4)
    squares.failing = {"7"}
    with pytest.raises(ItemsFailed, match="1 of 30 items failed"):
        squares.run()
    stored = objects(s3_server, s3_root)
    assert json.loads(stored[f"{RUN}/out/4.json"]) == {"square": 16}
    assert f"{RUN}/out/7.json" not in stored
    assert f"{RUN}/.checkpoints/square.done" not in stored  # not all items done: no marker
    assert all(name.startswith("seg-") for name in journal_parts(s3_server, s3_root))
    assert done_records(s3_server, s3_root) == Counter({str(n): 1 for n in range(30) if n != 7})
    [row] = [r for r in collect(squares.pipeline, "r1") if r.step == "square"]
    assert row.items == {"total": 30, "done": 29, "failed": 1, "skipped": 0, "pending": 0}
    assert len(squares.alerts) == 1
    page = tmp_path / "report.html"
    assert run_cli(["report", "--run-id", "r1", "-o", str(page)], pipeline=squares.pipeline) == 0
    assert "items: 29 done / 1 failed / 0 pending of 30" in page.read_text()

    squares.failing = set()
    squares.calls.clear()
    result = squares.run()
    assert squares.calls == Counter({"7": 1})
    assert result.skipped == ("numbers",)
    assert f"{RUN}/.checkpoints/square.done" in objects(s3_server, s3_root)
    assert done_records(s3_server, s3_root) == Counter({str(n): 1 for n in range(30)})
    states = {r.state for r in squares.pipeline.deadletters.list(run_id="r1")}
    assert states == {"superseded"}

    squares.calls.clear()
    again = squares.run()  # a finished map step skips on its marker
    assert again.skipped == ("numbers", "square")
    assert not squares.calls


def test_item_dead_letters_on_s3_are_replayed_and_discarded(
    s3_server: S3Server, s3_root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    squares = Squares(s3_root, 6)
    squares.failing = {"2", "3"}
    with pytest.raises(ItemsFailed, match="2 of 6 items failed"):
        squares.run()
    rows = {
        squares.pipeline.deadletters.show(r.id)["key"]: r
        for r in squares.pipeline.deadletters.list(run_id="r1")
    }
    assert set(rows) == {"2", "3"}
    envelope = json.loads(objects(s3_server, s3_root)[f"sq/deadletter/{rows['2'].id}.json"])
    assert (envelope["kind"], envelope["item"], envelope["step"]) == ("item", 2, "square")

    assert run_cli(["deadletter", "replay", rows["2"].id], pipeline=squares.pipeline) == 1
    assert "item '2' failed again: ValueError" in capsys.readouterr().err
    squares.failing = {"3"}
    assert run_cli(["deadletter", "replay", rows["2"].id], pipeline=squares.pipeline) == 0
    assert "item 2 ran again and succeeded" in capsys.readouterr().out
    assert json.loads(objects(s3_server, s3_root)[f"{RUN}/out/2.json"]) == {"square": 4}
    assert done_records(s3_server, s3_root)["2"] == 1
    assert run_cli(["deadletter", "discard", rows["3"].id], pipeline=squares.pipeline) == 0
    assert "discarded" in capsys.readouterr().out

    squares.calls.clear()
    squares.run()  # 2 is done (replayed), 3 is skipped (discarded): nothing runs
    assert not squares.calls
    assert squares.metrics.items(outcome="skipped") == 1
    assert run_cli(["status", "--run-id", "r1", "--json"], pipeline=squares.pipeline) == 0
    [_, mapped] = json.loads(capsys.readouterr().out)["steps"]
    assert (mapped["state"], mapped["items"]["done"], mapped["items"]["skipped"]) == (
        "done",
        5,
        1,
    )


def test_a_torn_or_garbage_segment_reruns_its_items_and_never_skips_them(
    s3_server: S3Server, s3_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    squares = Squares(s3_root, 5)
    squares.run()
    store = open_store(s3_root)
    lines = b"".join(journal_parts(s3_server, s3_root).values()).splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith((b"3 ", b"4 "))]
    store.delete([ITEMS + name for name in journal_parts(s3_server, s3_root)])
    store.delete([f"{RUN}/.checkpoints/square.done"])
    store.write(ITEMS + "seg-000000000001", b"".join(kept))
    # Garbage (a power cut's zeros), then item 3's line cut short; the next object starts
    # with what would complete it: each object is read on its own, so it never does.
    store.write(ITEMS + "seg-000000000002", b"\x00" * 16 + b'\n3 done {"a":1')
    store.write(ITEMS + "seg-000000000003", b',"t":0.1}\n4 done')
    squares.calls.clear()
    squares.run()
    assert squares.calls == Counter({"3": 1, "4": 1})
    assert "4 unreadable line(s)" in caplog.text
    assert done_records(s3_server, s3_root) == Counter({str(n): 1 for n in range(5)})


def test_force_and_reset_clear_the_item_journal_objects(s3_server: S3Server, s3_root: str) -> None:
    squares = Squares(s3_root, 4)
    squares.run()
    assert journal_parts(s3_server, s3_root)
    squares.calls.clear()
    squares.run(force=True)
    assert squares.calls == Counter({str(n): 1 for n in range(4)})
    assert done_records(s3_server, s3_root) == Counter({str(n): 1 for n in range(4)})
    assert squares.pipeline.reset(run_id="r1", step="square") == ["square"]
    assert journal_parts(s3_server, s3_root) == {}
    assert squares.pipeline.reset(run_id="r1", step="square") == []  # nothing left to clear
    assert f"{RUN}/.checkpoints/numbers.done" in objects(s3_server, s3_root)
    squares.calls.clear()
    squares.run()
    assert squares.calls == Counter({str(n): 1 for n in range(4)})


def test_changed_parameters_start_the_journal_afresh_in_one_snapshot(
    s3_server: S3Server, s3_root: str
) -> None:
    squares = Squares(s3_root, 3)
    squares.failing = {"2"}
    with pytest.raises(ItemsFailed):
        squares.run(params={"region": "eu"})
    squares.failing = set()
    squares.calls.clear()
    squares.run(params={"region": "us"})
    assert squares.calls == Counter({"0": 1, "1": 1, "2": 1})
    parts = journal_parts(s3_server, s3_root)
    [snapshot] = [name for name in parts if name.startswith("snap-")]
    assert all(name > snapshot for name in parts if name != snapshot)  # nothing older left
    assert b'"region":"us"' in parts[snapshot]
    assert b'"region":"eu"' not in b"".join(parts.values())


class Recording:
    """A real store that records the prefixes it is asked to list."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.listed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def list_keys(self, prefix: str) -> list[str]:
        self.listed.append(prefix)
        return self._store.list_keys(prefix)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        self.listed.append(prefix)
        return self._store.list_sizes(prefix)

    def list_directory(self, prefix: str) -> tuple[dict[str, int], bool]:
        self.listed.append(prefix + " (one page)")
        return self._store.list_directory(prefix)


def test_a_resume_never_lists_the_items_outputs(s3_server: S3Server, s3_root: str) -> None:
    squares = Squares(s3_root, 10)
    squares.run()
    recording = Recording(open_store(s3_root))
    squares.pipeline._store = recording
    squares.calls.clear()
    recording.delete([f"{RUN}/.checkpoints/square.done"])  # killed before the marker
    journal = journal_parts(s3_server, s3_root)
    squares.run()
    assert not squares.calls  # every item was done: decided from the journal alone
    assert journal_parts(s3_server, s3_root) == journal  # and nothing to add to it
    everything = [p for p in recording.listed if p in (f"{RUN}/", f"{RUN}/out/")]
    assert everything == []  # 100,000 outputs would be 100 listing requests
    assert f"{RUN}/ (one page)" in recording.listed  # numbers.json's size: one request


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> StateStore:
    if request.param == "directory":
        return LocalStore(tmp_path / "store")
    return open_store(request.getfixturevalue("s3_root"))


def test_the_item_journal_group_commits_and_folds_into_a_snapshot(store: StateStore) -> None:
    journal = RemoteItemJournal(store, "p/j.items", max_batch=3, max_delay=60)
    journal.append(".step", "started", "{}", durable=True)
    journal.append("a", "failed", '{"a":1}', durable=True)
    assert (journal.waiting, journal.commits, store.list_keys("p/j.items/")) == (2, 0, [])
    journal.append("b", "done", durable=True)  # the third durable line: one object
    assert (journal.waiting, journal.commits) == (0, 1)
    assert store.list_keys("p/j.items/") == ["p/j.items/seg-000000000001"]
    for n in range(COMPACT_AFTER * 3):
        journal.append("a", "done", f'{{"n":{n}}}', durable=True)
    journal.append("c", "done")  # not durable: written by close
    journal.close()
    names = [key.rpartition("/")[2] for key in store.list_keys("p/j.items/")]
    assert names[-1].startswith("snap-") or any(n.startswith("snap-") for n in names)
    assert len(names) <= COMPACT_AFTER
    again = RemoteItemJournal(store, "p/j.items").replay()
    assert again.bad == 0
    assert again.latest() == {
        ".step": Entry(".step", "started", "{}"),
        "a": Entry("a", "done", f'{{"n":{COMPACT_AFTER * 3 - 1}}}'),
        "b": Entry("b", "done"),
        "c": Entry("c", "done"),
    }


def test_a_compaction_lands_with_the_next_commit_so_a_crash_before_keeps_the_journal(
    store: StateStore,
) -> None:
    first = RemoteItemJournal(store, "p/j.items")
    first.append("a", "done", durable=True)
    first.append("b", "failed", durable=True)
    second = RemoteItemJournal(store, "p/j.items")
    assert len(second.replay().entries) == 2
    second.compact([])  # start afresh ...
    second.append(".step", "started", '{"params":{"x":"2"}}')  # ... and killed before a commit
    assert RemoteItemJournal(store, "p/j.items").replay().latest().keys() == {"a", "b"}
    second.close()
    assert RemoteItemJournal(store, "p/j.items").replay().latest() == {
        ".step": Entry(".step", "started", '{"params":{"x":"2"}}')
    }
    assert [k.rpartition("/")[2][:5] for k in store.list_keys("p/j.items/")] == ["snap-"]
    third = RemoteItemJournal(store, "p/j.items")
    third.append("c", "done")  # reads the journal first: the snapshot keeps what was there
    third.compact([*third.replay().entries, Entry("d", "skipped")])
    third.close()
    assert RemoteItemJournal(store, "p/j.items").replay().latest() == {
        ".step": Entry(".step", "started", '{"params":{"x":"2"}}'),
        "c": Entry("c", "done"),
        "d": Entry("d", "skipped"),
    }
    with pytest.raises(ValueError, match="max_batch"):
        RemoteItemJournal(store, "p/j.items", max_batch=0)


def test_a_second_writer_of_the_item_journal_is_refused(store: StateStore) -> None:
    one = RemoteItemJournal(store, "p/j.items")
    two = RemoteItemJournal(store, "p/j.items")
    one.replay()
    two.replay()
    one.append("a", "done", durable=True)
    with pytest.raises(RuntimeError, match="another process writes this log"):
        two.append("b", "done", durable=True)
    two.abandon()
    assert RemoteItemJournal(store, "p/j.items").replay().latest().keys() == {"a"}


def test_listing_one_directory_stops_at_its_level(store: StateStore) -> None:
    for key in ("r/top.txt", "r/out/1.json", "r/out/2.json", "r/out/deep/3.json"):
        store.write(key, b"12")
    assert store.list_directory("r/") == ({"r/top.txt": 2}, True)
    assert store.list_directory("r/out/") == ({"r/out/1.json": 2, "r/out/2.json": 2}, True)
    assert store.list_directory("r/none/") == ({}, True)


def test_an_item_reads_writes_and_opens_its_outputs_through_ctx(
    s3_server: S3Server, s3_root: str
) -> None:
    pipeline = stalwart.Pipeline("files", root=s3_root, alerters=[])
    seen: dict[str, str] = {}

    @pipeline.map(items=["a", "b"], workers=2)
    def page(ctx: stalwart.ItemContext, item: str) -> None:
        written = ctx.write_text(f"pages/{item}.txt", f"page {item}\n")
        with ctx.atomic_write(f"pages/{item}.csv") as handle:
            handle.write(f"{item},1\n")
        with open(written, encoding="utf-8") as copy:  # the local copy of what was PUT
            assert copy.read() == f"page {item}\n"
        seen[item] = ctx.path(f"pages/{item}.csv").read_text()
        assert ctx.read_text(f"pages/{item}.txt") == f"page {item}\n"
        assert (
            cast(Any, ctx).url(f"pages/{item}.txt") == f"{s3_root}/files/runs/r1/pages/{item}.txt"
        )

    pipeline.run(run_id="r1")
    assert seen == {"a": "a,1\n", "b": "b,1\n"}
    stored = objects(s3_server, s3_root)
    assert stored["files/runs/r1/pages/b.csv"] == b"b,1\n"
    gc.collect()  # the items' contexts are gone: so are their local copies
    assert os.listdir(_item_copies()) == []


def doubled(ctx: stalwart.ItemContext, n: int) -> None:
    """An item for worker processes (module level: cloudpickle sends it by value)."""
    ctx.write_json(f"doubled/{n}.json", {"n": n * 2, "pid": os.getpid()})


def test_worker_processes_open_the_store_themselves(s3_server: S3Server, s3_root: str) -> None:
    pipeline = stalwart.Pipeline("procs", root=s3_root, alerters=[])
    pipeline.map(items=list(range(6)), executor="processes", workers=2)(doubled)
    pipeline.run(run_id="r1")
    stored = objects(s3_server, s3_root)
    written = [json.loads(stored[f"procs/runs/r1/doubled/{n}.json"]) for n in range(6)]
    assert [w["n"] for w in written] == [n * 2 for n in range(6)]
    assert os.getpid() not in {w["pid"] for w in written}  # PUT by the workers themselves
    assert "procs/runs/r1/.checkpoints/doubled.done" in stored


def test_where_a_map_steps_state_lives_follows_the_root(tmp_path: Any, s3_root: str) -> None:
    assert worker_store(str(tmp_path)) is None  # a local root: the run directory
    assert worker_store(s3_root) is not None  # opened by the worker, with its credentials
    local = stalwart.Pipeline("p", root=tmp_path, alerters=[]).services()
    assert envelope_state(local, "20260101T000000000000Z-00000000") is None  # none kept


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b'.step started {}\na done {"a":1}\nb failed\nc done \n',
        b"a done",  # torn: no newline at the end
        b"a  done\n",
        b"a done\r\n",
        b"\n",
        b"a done\n\nb done\n",
        b"\x00\x00\x00\n",
        b"\xff done\n",
        "é done\n".encode(),
        b"a Done\n",
        b"a d" + b"x" * 40 + b"\n",
        b"x" * 256 + b" done\n",
        b"x" * 257 + b" done\n",
        b"a done x\tb\x00 \xc3\xa9\n",
        b"a\tb done\n",
        b"a done\nb\n",
    ],
)
def test_each_object_of_the_journal_reads_as_the_journal_would(data: bytes) -> None:
    assert parse_journal(data) == _parse_lines(data)
