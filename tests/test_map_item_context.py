"""What each item of a map step has of its own, even when many items run in one chunk: its
Idempotency-Keys (with its key; repeated by its retries and by a re-run), the retries it made,
the dead letters it kept, its outputs, its log records; and contexts made for a chunk are
the same as contexts made one by one."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stalwart
from stalwart._context import Context, Step
from stalwart._item_context import _OWN, _SHARED, ItemContext, ItemScope
from stalwart._services import Emitter, RunServices, SharedHttp
from stalwart.testing import FlakyServer, Reply, no_wait

POLICY = stalwart.RetryPolicy(attempts=3)


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    with FlakyServer() as flaky:
        yield flaky


@pytest.fixture
def client() -> Iterator[stalwart.HttpClient]:
    with stalwart.HttpClient(timeout=5.0, retry=POLICY) as http:
        yield http


def details(pipeline: stalwart.Pipeline, step: str, run_id: str = "r1") -> dict[str, Any]:
    """Item id -> the detail of its latest ``done`` or ``failed`` line."""
    path = pipeline.run_dir(run_id) / ".checkpoints" / f"{step}.items"
    found = {}
    for line in path.read_text().splitlines():
        jid, state, detail = line.split(" ", 2)
        if state in ("done", "failed"):
            found[jid] = json.loads(detail)
    return found


def keys_by_item(server: FlakyServer, path: str) -> dict[str, list[str | None]]:
    """The Idempotency-Keys each item sent (items name themselves in ``X-Item``)."""
    keys: dict[str, list[str | None]] = {}
    for request in server.requests_for("POST", path):
        item = request.headers["x-item"]
        keys.setdefault(item, []).append(request.headers.get("idempotency-key"))
    return keys


def test_items_of_one_chunk_post_with_keys_and_retries_of_their_own(
    root: Path, server: FlakyServer, client: stalwart.HttpClient
) -> None:
    # One chunk of three items on one thread, all posting the same body; the first POST of
    # items a and c gets a 503 and is retried.
    ok = Reply(status=201)
    server.route("POST", "/orders", [Reply(status=503), ok, ok, Reply(status=503), ok])
    pipeline = stalwart.Pipeline("shop", root=root, http=client, alerters=[], metrics=[])

    @pipeline.map(items=["a", "b", "c"], workers=1, chunk=3)
    def order(ctx: stalwart.ItemContext, item: str) -> None:
        ctx.http.post(server.url("/orders"), json={"qty": 1}, headers={"X-Item": item})

    with no_wait():
        pipeline.run(run_id="r1")
    keys = keys_by_item(server, "/orders")
    assert [len(keys[item]) for item in "abc"] == [2, 1, 2]
    assert len(set(keys["a"])) == 1  # the HTTP retry repeats the item's key
    assert len({keys["a"][0], keys["b"][0], keys["c"][0]}) == 3  # one key per item
    found = details(pipeline, "order")
    assert found["a"]["r"] == 1  # each retry is the item's, not its neighbours'
    assert "r" not in found["b"]
    assert found["c"]["r"] == 1
    marker = pipeline.checkpoints("r1").read_marker("order")
    assert marker is not None
    assert marker.retries == 2

    pipeline.run(run_id="r1", force=True)  # a re-run repeats each item's key
    again = keys_by_item(server, "/orders")
    assert [again[item][-1] for item in "abc"] == [keys[item][0] for item in "abc"]


def test_an_item_retried_by_its_policy_repeats_its_keys_and_counts_its_attempts(
    root: Path, server: FlakyServer, client: stalwart.HttpClient
) -> None:
    server.route("POST", "/orders", Reply(status=201))
    pipeline = stalwart.Pipeline("shop", root=root, http=client, alerters=[], metrics=[])
    tries: dict[str, int] = {}

    @pipeline.map(items=["a", "b"], workers=1, chunk=2, retry=POLICY)
    def order(ctx: stalwart.ItemContext, item: str) -> None:
        tries[item] = tries.get(item, 0) + 1
        ctx.http.post(server.url("/orders"), json={"qty": 1}, headers={"X-Item": item})
        if item == "a" and tries[item] == 1:
            ctx.dead_letter({"item": item}, reason="kept by the first attempt")
            ctx.write_text("half.txt", "not the item's output: its attempt failed")
            raise stalwart.Transient("the confirmation did not come")
        ctx.write_text(f"{item}.txt", item)

    with no_wait():
        pipeline.run(run_id="r1")
    keys = keys_by_item(server, "/orders")
    assert len(keys["a"]) == 2
    assert keys["a"][0] == keys["a"][1]  # the second attempt repeats the first's effects
    assert keys["a"][0] != keys["b"][0]
    found = details(pipeline, "order")
    assert (found["a"]["a"], found["a"]["r"]) == (2, 1)
    assert (found["b"]["a"], "r" in found["b"]) == (1, False)
    assert [name for name, _, _ in found["a"]["o"]] == ["a.txt"]  # the last attempt's output
    [kept] = pipeline.deadletters.list(run_id="r1")
    assert found["a"]["k"] == [kept.id]  # what any attempt of the item kept
    assert "k" not in found["b"]


def test_dead_letters_an_item_keeps_are_its_own_in_the_journal(root: Path) -> None:
    pipeline = stalwart.Pipeline("keeps", root=root, alerters=[], metrics=[])

    @pipeline.map(items=[1, 2, 3], workers=1, chunk=3)
    def check(ctx: stalwart.ItemContext, n: int) -> None:
        if n == 2:
            ctx.dead_letter({"row": n}, reason="rejected row")
        ctx.write_text(f"{n}.txt", str(n))

    pipeline.run(run_id="r1")
    found = details(pipeline, "check")
    [row] = pipeline.deadletters.list(run_id="r1")
    assert found["2"]["k"] == [row.id]
    assert "k" not in found["1"]
    assert "k" not in found["3"]
    assert [[name for name, _, _ in found[n]["o"]] for n in "123"] == [
        ["1.txt"],
        ["2.txt"],
        ["3.txt"],
    ]


def test_log_records_of_items_in_one_chunk_carry_their_own_key(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = stalwart.Pipeline("logs", root=root, alerters=[], metrics=[])

    @pipeline.map(items=["a", "b", "c"], workers=1, chunk=3)
    def look(ctx: stalwart.ItemContext, item: str) -> None:
        ctx.log.info("item %s", item)
        assert ctx.log is ctx.log  # made once
        logging.getLogger("elsewhere").info("not through ctx.log")

    caplog.set_level("INFO")
    pipeline.run(run_id="r1")
    mine = [r for r in caplog.records if r.name == "stalwart.step.look"]
    assert [(r.getMessage(), getattr(r, "item", None)) for r in mine] == [
        ("item a", "a"),
        ("item b", "b"),
        ("item c", "c"),
    ]
    assert {getattr(r, "step", None) for r in mine} == {"look"}


def services(root: Path) -> RunServices:
    return RunServices(
        pipeline="p", root=str(root), http=SharedHttp(None), alerters=(), emit=Emitter([])
    )


def test_every_attribute_of_a_context_is_known_as_shared_or_the_items_own(root: Path) -> None:
    # If Context gains an attribute, ItemContext._maker falls back to __init__ per item (slow):
    # this test says which of the two sets the new attribute belongs to.
    scope = ItemScope(item_key="k", pipeline="p", run_id="r", step="s", emit=Emitter([]))
    made = ItemContext(
        services=services(root), run_id="r", step=Step("s", print), run_dir="/d", scope=scope,
        runs=1, key="k",
    )  # fmt: skip
    plain = Context(
        services=services(root), run_id="r", step=Step("s", print), run_dir="/d", scope=scope,
        runs=1,
    )  # fmt: skip
    assert set(vars(made)) == _SHARED | _OWN
    assert set(vars(plain)) <= _SHARED | _OWN | {"_scope"}


def test_contexts_made_for_a_chunk_are_contexts_made_one_by_one(root: Path) -> None:
    made_scopes: list[str] = []

    def new_scope(key: str) -> ItemScope:
        made_scopes.append(key)
        return ItemScope(item_key=key, pipeline="p", run_id="r", step="s", emit=Emitter([]))

    shared: dict[str, Any] = {
        "services": services(root),
        "run_id": "r",
        "step": Step("s", print),
        "run_dir": str(root),
        "runs": 2,
        "params": {"p": "1"},
    }
    make = ItemContext._maker(**shared, new_scope=new_scope)
    first, second = make("a"), make("b")
    by_init = ItemContext(scope=new_scope("a"), key="a", **shared)
    made_scopes.clear()
    assert vars(first).keys() == vars(by_init).keys()
    for name in _SHARED - {"_new_scope"}:
        assert getattr(first, name) is getattr(by_init, name) or (
            getattr(first, name) == getattr(by_init, name)
        ), name
    assert (first.key, second.key, first.params, first.attempt) == ("a", "b", {"p": "1"}, 2)

    first.write_text("a.txt", "a")
    assert [o.name for o in first.outputs] == ["a.txt"]
    assert second.outputs == ()  # what an item wrote is its own
    assert made_scopes == []  # no scope until one is needed
    key = first._scope.idempotency_key("POST", "/x", "0" * 64)
    assert made_scopes == ["a"]
    assert first._scope is first._scope  # made once
    assert key != second._scope.idempotency_key("POST", "/x", "0" * 64)
    assert made_scopes == ["a", "b"]


def test_an_attribute_the_maker_does_not_know_falls_back_to_init(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stalwart._item_context as module  # noqa: PLC0415 - the module's own sets

    monkeypatch.setattr(module, "_OWN", _OWN - {"_log"})  # as if Context had gained "_log"
    make = ItemContext._maker(
        services=services(root), run_id="r", step=Step("s", print), run_dir=str(root), runs=1,
        params={},
        new_scope=lambda key: ItemScope(
            item_key=key, pipeline="p", run_id="r", step="s", emit=Emitter([])
        ),
    )  # fmt: skip
    first, second = make("a"), make("b")
    first.write_text("a.txt", "a")
    assert (first.key, second.key, second.outputs) == ("a", "b", ())
    assert first._scope.item_key == "a"  # type: ignore[attr-defined]
    assert first._item_scope is not None  # made by __init__: eagerly
