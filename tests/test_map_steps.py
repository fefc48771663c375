"""Map steps in one process: per-item checkpoints, keys, failures as dead letters of kind
item, the circuit breaker, re-runs that redo only what is left, status and metrics."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import stalwart
import stalwart._map
from conftest import run_python
from stalwart._map import (
    BATCH,
    ItemsFailed,
    _fn_payload,
    default_key,
    item_counts,
    journal_id,
)
from stalwart._map_worker import ChunkTask, RemoteRootRefused, run_chunk
from stalwart.cli._main import run_cli
from stalwart.cli._status import collect
from stalwart.instrumentation import ItemsFinished
from stalwart.instrumentation._core import observations
from stalwart.instrumentation._statsd import StatsD
from stalwart.testing import MemoryMetrics, RecordingAlerter, no_wait


def journal_of(pipeline: stalwart.Pipeline, step: str, run_id: str = "r1") -> list[str]:
    path = pipeline.run_dir(run_id) / ".checkpoints" / f"{step}.items"
    return path.read_text().splitlines()


def done_lines(pipeline: stalwart.Pipeline, step: str, run_id: str = "r1") -> Counter[str]:
    return Counter(
        line.split(" ")[0] for line in journal_of(pipeline, step, run_id) if " done" in line
    )


class Squares:
    """A pipeline with one map step over ``items``; counts every item execution."""

    def __init__(self, root: Path, items: list[Any], **options: Any) -> None:
        self.items = items
        self.calls: Counter[str] = Counter()
        self.failing: set[str] = set()
        self.alerts = RecordingAlerter()
        self.metrics = MemoryMetrics()
        self.pipeline = stalwart.Pipeline(
            "sq", root=root, alerters=[self.alerts], metrics=[self.metrics]
        )

        @self.pipeline.map(items=lambda ctx: self.items, **options)
        def square(ctx: stalwart.ItemContext, item: Any) -> None:
            self.calls[ctx.key] += 1
            if ctx.key in self.failing:
                raise ValueError(f"item {ctx.key} is bad")
            n = item["n"] if isinstance(item, dict) else int(item)
            ctx.write_json(f"out/{n}.json", {"square": n * n})

    def run(self, **kwargs: Any) -> stalwart.RunResult:
        return self.pipeline.run(run_id="r1", **kwargs)


def test_every_item_runs_once_and_writes_its_output(root: Path) -> None:
    squares = Squares(root, list(range(40)), workers=4)
    result = squares.run()
    assert result.ran == ("square",)
    assert squares.calls == Counter({str(n): 1 for n in range(40)})
    run_dir = squares.pipeline.run_dir("r1")
    assert json.loads((run_dir / "out" / "7.json").read_text()) == {"square": 49}
    assert done_lines(squares.pipeline, "square") == Counter({str(n): 1 for n in range(40)})
    assert squares.pipeline.checkpoints("r1").is_done("square")
    # The marker stays small however many items: outputs are in the journal.
    marker = squares.pipeline.checkpoints("r1").read_marker("square")
    assert marker is not None
    assert marker.outputs == ()
    assert marker.attempts == 40
    assert squares.metrics.items(step="square", outcome="done") == 40

    squares.calls.clear()
    assert squares.run().skipped == ("square",)
    assert not squares.calls


def test_items_added_between_runs_are_the_only_ones_that_run(root: Path) -> None:
    squares = Squares(root, list(range(10)))
    squares.run()
    squares.pipeline.reset(run_id="r1")  # the marker goes, and so does the journal
    squares.run()
    assert squares.calls == Counter({str(n): 2 for n in range(10)})
    # Without a marker but with the journal (a crash after the last item): nothing reruns.
    os.unlink(squares.pipeline.checkpoints("r1").marker_path("square"))
    squares.items = list(range(15))
    squares.calls.clear()
    squares.run()
    assert squares.calls == Counter({str(n): 1 for n in range(10, 15)})


def test_duplicate_keys_are_refused_before_any_item_runs(root: Path) -> None:
    squares = Squares(root, [{"n": 1}, {"n": 2}, {"n": 1}], key=lambda item: item["n"])
    with pytest.raises(stalwart.UsageError, match="two items have the key '1'"):
        squares.run()
    assert not squares.calls
    assert len(squares.alerts) == 1


def test_a_key_must_be_text_or_an_int(root: Path) -> None:
    squares = Squares(root, [1, 2], key=lambda item: None)
    with pytest.raises(stalwart.UsageError, match="key= returned None"):
        squares.run()


def test_default_keys() -> None:
    assert default_key("page-1") == "page-1"
    assert default_key(17) == "17"
    assert default_key({"b": 1, "a": 2}) == default_key({"a": 2, "b": 1})
    assert len(default_key([1, 2])) == 32
    with pytest.raises(stalwart.UsageError, match="give the step key="):
        default_key(object())


def test_unusual_keys_become_journal_ids_that_read_back() -> None:
    assert journal_id("plain-key_1") == "plain-key_1"
    assert journal_id("with space") == "with%20space"
    assert journal_id("100%") == "100%25"
    assert journal_id(".hidden") == "%2Ehidden"
    assert journal_id("é") == "%C3%A9"
    long = journal_id("x " * 500)
    assert long.startswith("%h")
    assert len(long) < 60


def test_unusual_keys_run_and_resume(root: Path) -> None:
    items = [{"n": 1, "k": "a b"}, {"n": 2, "k": "ü"}, {"n": 3, "k": "z" * 300}]
    squares = Squares(root, items, key=lambda item: item["k"])
    squares.failing = {"ü"}
    with pytest.raises(ItemsFailed):
        squares.run()
    squares.failing = set()
    squares.calls.clear()
    squares.run()
    assert squares.calls == Counter({"ü": 1})


def test_a_failed_item_is_a_dead_letter_and_the_step_fails_once(root: Path) -> None:
    squares = Squares(root, list(range(20)), workers=2)
    squares.failing = {"3", "11"}
    with pytest.raises(ItemsFailed, match="2 of 20 items failed") as raised:
        squares.run()
    assert raised.value.failed == 2
    assert len(squares.alerts) == 1  # one alert for the step, counting the failures
    assert "2 of 20 items failed" in squares.alerts.alerts[0].error
    letters = [
        squares.pipeline.deadletters.show(row.id)
        for row in squares.pipeline.deadletters.list(run_id="r1")
    ]
    assert sorted(letter["key"] for letter in letters) == ["11", "3"]
    letter = letters[0]
    assert letter["kind"] == "item"
    assert letter["step"] == "square"
    assert letter["run_id"] == "r1"
    assert letter["item"] == int(letter["key"])
    assert letter["error"]["type"] == "ValueError"
    assert squares.metrics.items(outcome="failed") == 2
    assert squares.metrics.items(outcome="done") == 18
    assert squares.metrics.dead_letters(step="square") == 2

    # A re-run retries only the failed items; the step then succeeds.
    squares.failing = set()
    squares.calls.clear()
    squares.run()
    assert squares.calls == Counter({"3": 1, "11": 1})
    states = {row.state for row in squares.pipeline.deadletters.list(run_id="r1")}
    assert states == {"superseded"}  # delivered by the later run


def test_max_failures_stops_starting_items(root: Path) -> None:
    squares = Squares(root, list(range(100)), workers=1, chunk=1, max_failures=3)
    squares.failing = {str(n) for n in range(100)}  # a dead API: everything fails
    with pytest.raises(ItemsFailed, match="max_failures=3") as raised:
        squares.run()
    started = sum(squares.calls.values())
    assert 3 <= started <= 5  # the breaker trips at 3; the window (2 chunks) may end
    assert raised.value.not_started == 100 - started
    assert len(squares.pipeline.deadletters.list(run_id="r1")) == started


def test_per_item_retry_rides_out_a_transient_error(root: Path) -> None:
    pipeline = stalwart.Pipeline("retry", root=root, alerters=[])
    tries: Counter[str] = Counter()

    @pipeline.map(items=["a", "b"], retry=stalwart.RetryPolicy(attempts=3))
    def flaky(ctx: stalwart.ItemContext, item: str) -> None:
        tries[item] += 1
        if item == "a" and tries[item] < 3:
            raise stalwart.Transient("try again")
        ctx.write_text(f"{item}.txt", item)

    with no_wait() as waits:
        pipeline.run(run_id="r1")
    assert tries == Counter({"a": 3, "b": 1})
    assert len(waits) == 2
    marker = pipeline.checkpoints("r1").read_marker("flaky")
    assert marker is not None
    assert marker.attempts == 4
    assert '"a":3' in journal_of(pipeline, "flaky")[-1] + journal_of(pipeline, "flaky")[-2]


def test_a_torn_journal_reruns_the_torn_item_never_skips_it(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    squares = Squares(root, list(range(5)))
    squares.run()
    path = squares.pipeline.run_dir("r1") / ".checkpoints" / "square.items"
    lines = [line for line in path.read_text().splitlines() if not line.startswith(("3 ", "4 "))]
    # Item 3's line cut short by a crash; garbage (a power cut's zeros) in place of item 4's.
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\x00\x00\x00\n" + b"3 do")
    os.unlink(squares.pipeline.checkpoints("r1").marker_path("square"))
    squares.calls.clear()
    squares.run()
    assert squares.calls == Counter({"3": 1, "4": 1})
    assert "unreadable line(s)" in caplog.text
    assert done_lines(squares.pipeline, "square") == Counter({str(n): 1 for n in range(5)})


def test_changed_parameters_run_every_item_again(root: Path) -> None:
    squares = Squares(root, list(range(3)))
    squares.failing = {"2"}
    with pytest.raises(ItemsFailed):
        squares.pipeline.run(run_id="r1", params={"region": "eu"})
    squares.failing = set()
    squares.calls.clear()
    squares.pipeline.run(run_id="r1", params={"region": "us"})
    assert squares.calls == Counter({"0": 1, "1": 1, "2": 1})


def test_force_clears_the_items(root: Path) -> None:
    squares = Squares(root, list(range(3)))
    squares.run()
    squares.calls.clear()
    squares.run(force=True)
    assert squares.calls == Counter({"0": 1, "1": 1, "2": 1})


def test_item_context_has_the_key_in_logs_and_idempotency_keys(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = stalwart.Pipeline("ctx", root=root, alerters=[])
    keys: dict[str, str] = {}

    @pipeline.map(items=["a", "b"])
    def look(ctx: stalwart.ItemContext, item: str) -> None:
        ctx.log.info("working on %s", item)
        keys[ctx.key] = ctx._scope.idempotency_key("POST", "/x", "0" * 64)
        assert ctx.params == {"p": "1"}
        assert ctx.step == "look"

    caplog.set_level("INFO", logger="stalwart.step.look")
    pipeline.run(run_id="r1", params={"p": "1"})
    assert {getattr(r, "item", None) for r in caplog.records if r.name == "stalwart.step.look"} == {
        "a",
        "b",
    }
    assert keys["a"] != keys["b"]
    assert keys["a"].startswith("stw1-")


def test_discarding_an_item_dead_letter_lets_the_step_finish(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    squares = Squares(root, list(range(4)))
    squares.failing = {"2"}
    with pytest.raises(ItemsFailed):
        squares.run()
    [row] = squares.pipeline.deadletters.list(run_id="r1")
    assert run_cli(["deadletter", "discard", row.id], pipeline=squares.pipeline) == 0
    squares.calls.clear()
    squares.run()  # item 2 still fails if run, but it is skipped now
    assert not squares.calls
    counts = item_counts(str(squares.pipeline.run_dir("r1")), "square")
    assert counts is not None
    assert (counts.done, counts.skipped, counts.pending) == (3, 1, 0)
    assert squares.metrics.items(outcome="skipped") == 1


def test_replaying_an_item_dead_letter_runs_the_item(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    squares = Squares(root, list(range(4)))
    squares.failing = {"2"}
    with pytest.raises(ItemsFailed):
        squares.run()
    [row] = squares.pipeline.deadletters.list(run_id="r1")
    assert run_cli(["deadletter", "replay", row.id], pipeline=squares.pipeline) == 1
    assert "item '2' failed again: ValueError" in capsys.readouterr().err
    squares.failing = set()
    assert run_cli(["deadletter", "replay", row.id], pipeline=squares.pipeline) == 0
    assert "item 2 ran again and succeeded" in capsys.readouterr().out
    assert squares.pipeline.deadletters.show(row.id)["state"] == "replayed"
    assert (squares.pipeline.run_dir("r1") / "out" / "2.json").exists()
    squares.calls.clear()
    squares.run()
    assert not squares.calls  # the replay's done line counts
    assert run_cli(["deadletter", "replay", row.id], pipeline=squares.pipeline) == 1


def test_status_shows_done_failed_pending_of_n(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    squares = Squares(root, list(range(10)), workers=1, chunk=1, max_failures=2)
    squares.failing = {"0", "1"}
    with pytest.raises(ItemsFailed):
        squares.run()
    [row] = collect(squares.pipeline, "r1")
    assert row.items is not None
    assert row.items["failed"] == 2
    assert row.items["total"] == 10
    assert row.items["done"] + row.items["pending"] == 8
    assert run_cli(["status", "--run-id", "r1"], pipeline=squares.pipeline) == 0
    out = capsys.readouterr().out
    assert (
        f"items: {row.items['done']} done / 2 failed / {row.items['pending']} pending of 10" in out
    )
    assert run_cli(["status", "--run-id", "r1", "--json"], pipeline=squares.pipeline) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["steps"][0]["items"]["failed"] == 2


def test_a_caller_executor_is_used_and_left_running(root: Path) -> None:
    with cf.ThreadPoolExecutor(2) as pool:
        squares = Squares(root, list(range(6)), executor=pool)
        squares.run()
        assert pool.submit(lambda: 1).result() == 1
    assert len(squares.calls) == 6


class Reversing(cf.ThreadPoolExecutor):
    """A broken executor: the outcomes of a chunk come back in reverse order."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        return super().submit(lambda: list(reversed(fn(*args, **kwargs))))


def test_outcomes_that_do_not_match_their_items_are_never_journaled(root: Path) -> None:
    with Reversing(1) as pool:
        squares = Squares(root, list(range(4)), executor=pool, chunk=2)
        with pytest.raises(RuntimeError, match="out of order \\(item '1' where '0'"):
            squares.run()
    assert done_lines(squares.pipeline, "square") == Counter()


def test_fast_items_on_threads_share_chunks_of_up_to_one_batch(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []

    def counted(task: ChunkTask, services: Any = None) -> Any:
        sizes.append(len(task.items))
        return run_chunk(task, services)

    monkeypatch.setattr(stalwart._map, "run_chunk", counted)
    pipeline = stalwart.Pipeline("fast", root=root, alerters=[], metrics=[])
    seen: Counter[int] = Counter()
    pipeline.map(items=range(2000), workers=2, name="fast")(lambda ctx, n: seen.update([n]))
    pipeline.map(items=range(200), workers=2, chunk=8, name="given")(lambda ctx, n: None)
    pipeline.run(run_id="r1")
    fast, given = sizes[: len(sizes) - 25], sizes[len(sizes) - 25 :]
    assert sum(fast) == 2000
    assert fast[0] == 16  # nothing measured yet
    assert max(fast) == BATCH  # then merged: fewer chunks, one journal batch each
    assert seen == Counter(range(2000))
    assert set(given) == {8}  # a chunk= given is kept


def test_bad_options_are_refused_when_declared(root: Path) -> None:
    pipeline = stalwart.Pipeline("bad", root=root)

    def fn(ctx: stalwart.ItemContext, item: int) -> None: ...

    for options, message in (
        ({"executor": "gpu"}, "use 'threads'"),
        ({"executor": 3}, "not int"),
        ({"workers": 0}, "workers"),
        ({"max_failures": 0}, "max_failures"),
        ({"chunk": True}, "chunk"),
        ({"items": "abc"}, "items"),
        ({"items": 5}, "items"),
    ):
        with pytest.raises(stalwart.UsageError, match=message):
            pipeline.map(**{"items": [1], **options})(fn)  # type: ignore[arg-type]


def test_a_worker_on_another_host_is_refused(root: Path) -> None:
    task = ChunkTask(
        fn=print,
        pipeline="p",
        root=str(root),
        run_id="r1",
        step="s",
        runs=1,
        params={},
        retry=None,
        timeout=None,
        http_retry=None,
        host="driver.example",
        items=[("a", 1)],
    )
    with pytest.raises(RemoteRootRefused, match=r"local directory of host driver\.example"):
        run_chunk(task)


def test_items_finished_becomes_the_items_counter() -> None:
    event = ItemsFinished(pipeline="p", run_id="r", step="s", done=3, failed=1, skipped=0)
    seen = observations(event)
    assert [(o.name, o.labels, o.value) for o in seen] == [
        ("stalwart_items_total", ("p", "s", "done"), 3.0),
        ("stalwart_items_total", ("p", "s", "failed"), 1.0),
    ]
    assert StatsD("localhost", 8125).line(seen[0]) == (
        "stalwart.items:3|c|#pipeline:p,step:s,outcome:done"
    )


def test_async_items_are_awaited_and_returned_values_refused(root: Path) -> None:
    pipeline = stalwart.Pipeline("kinds", root=root, alerters=[])

    @pipeline.map(items=["async", "value"])
    async def item(ctx: stalwart.ItemContext, kind: str) -> object:
        if kind == "value":
            return 42
        ctx.write_text(f"{kind}.txt", kind)
        return None

    with pytest.raises(ItemsFailed, match="item 'value': TypeError: step item item value returned"):
        pipeline.run(run_id="r1")
    assert (pipeline.run_dir("r1") / "async.txt").read_text() == "async"


ITEM_TIMEOUT = """
import sys, time
import stalwart
pipeline = stalwart.Pipeline("slow", root=sys.argv[1], alerters=[])

@pipeline.map(items=["hung", "quick"], timeout=0.2, workers=2)
def item(ctx, kind):
    end = time.monotonic() + 30
    while kind == "hung" and time.monotonic() < end:  # work far longer than 0.2 s
        pass
    ctx.write_text(f"{kind}.txt", kind)

try:
    pipeline.run(run_id="r1")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_an_item_over_its_timeout_fails_with_step_timeout(tmp_path: Path) -> None:
    """Items run in worker threads, where the timeout is an exception set on the thread. Run
    without coverage: a tracer can keep that exception from landing (docs/steps.md)."""
    script = tmp_path / "slow.py"
    script.write_text(ITEM_TIMEOUT)
    done = run_python([str(script), str(tmp_path / "state")], drop=("COVERAGE",), timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ItemsFailed"), done.stdout
    assert "1 of 2 items failed" in done.stdout
    assert "StepTimeout" in done.stdout
    run_dir = tmp_path / "state" / "slow" / "runs" / "r1"
    assert (run_dir / "quick.txt").exists()
    assert not (run_dir / "hung.txt").exists()


def test_dead_letters_an_item_keeps_on_purpose_stay_pending(root: Path) -> None:
    pipeline = stalwart.Pipeline("keeps", root=root, alerters=[])

    @pipeline.map(items=[1, 2])
    def check(ctx: stalwart.ItemContext, n: int) -> None:
        if n == 2:
            ctx.dead_letter({"row": n}, reason="rejected row")

    pipeline.run(run_id="r1")
    [row] = pipeline.deadletters.list(run_id="r1")
    assert (row.state, row.reason) == ("pending", "rejected row")


class Opaque:
    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Opaque({self.n})"


def test_an_item_that_is_not_json_is_kept_as_text_and_not_replayed(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = stalwart.Pipeline("opaque", root=root, alerters=[])

    @pipeline.map(items=[Opaque(1)], key=lambda item: item.n)
    def use(ctx: stalwart.ItemContext, item: Opaque) -> None:
        raise ValueError("no")

    with pytest.raises(ItemsFailed):
        pipeline.run(run_id="r1")
    [row] = pipeline.deadletters.list(run_id="r1")
    envelope = pipeline.deadletters.show(row.id)
    assert (envelope["item"], envelope["item_is_json"]) == ("Opaque(1)", False)
    assert run_cli(["deadletter", "replay", row.id], pipeline=pipeline) == 1
    assert "was not JSON" in capsys.readouterr().err


def test_a_long_journal_is_compacted_when_the_step_starts(root: Path) -> None:
    squares = Squares(root, [0, 1])
    path = squares.pipeline.run_dir("r1") / ".checkpoints" / "square.items"
    path.parent.mkdir(parents=True)
    header = '.step started {"inputs":{},"params":{},"total":2}\n'
    path.write_text(header + '0 failed {"a":1}\n' * 5000 + '0 done {"a":1}\n')
    squares.run()
    assert squares.calls == Counter({"1": 1})
    lines = path.read_text().splitlines()
    assert len(lines) < 10
    assert '0 done {"a":1}' in lines


def test_status_counts_survive_a_header_that_is_not_json(root: Path) -> None:
    run_dir = root / "p" / "runs" / "r1"
    (run_dir / ".checkpoints").mkdir(parents=True)
    (run_dir / ".checkpoints" / "s.items").write_text(".step started {oops\na done\nb failed\n")
    assert item_counts(str(run_dir), "s") == (2, 1, 1, 0)
    assert item_counts(str(run_dir), "other") is None


def test_without_cloudpickle_a_loaded_file_cannot_use_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fn(ctx: Any, item: Any) -> None: ...

    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    assert _fn_payload(fn) is fn  # pickled by reference by the pool
    fn.__module__ = "stalwart_target_pipe"
    with pytest.raises(stalwart.UsageError, match="with cloudpickle installed"):
        _fn_payload(fn)


def test_a_replay_of_a_settled_item_letter_is_refused(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    squares = Squares(root, [1])
    squares.failing = {"1"}
    with pytest.raises(ItemsFailed):
        squares.run()
    [row] = squares.pipeline.deadletters.list(run_id="r1")
    assert run_cli(["deadletter", "discard", row.id], pipeline=squares.pipeline) == 0
    assert run_cli(["deadletter", "replay", row.id], pipeline=squares.pipeline) == 1
    assert "is discarded: refusing to run its item again" in capsys.readouterr().err
    other = stalwart.Pipeline("sq", root=root, alerters=[])
    other.step(name="square")(lambda ctx: None)
    store = other.deadletters
    envelope = store.show(row.id)
    envelope["state"] = "pending"
    store.write(envelope)
    assert run_cli(["deadletter", "replay", row.id], pipeline=other) == 1
    assert "is not a map step of sq" in capsys.readouterr().err
