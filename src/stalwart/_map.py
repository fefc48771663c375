"""Map steps: one function over many items, each item checkpointed on its own, in parallel.

``@pipeline.map(items=..., key=...)`` registers a step whose function is a ``MapStep``: the
runner calls it with the step's ``Context`` like any step, and it is the **driver**:

1. evaluates ``items`` (an iterable, or a callable taking the ``Context``), gives each item
   its key, refuses duplicate keys;
2. reads the step's item journal, ``.checkpoints/<step>.items`` (``_journal``: one line
   ``<id> <state> <detail>`` per ended item), and decides what is left from the id and state
   of each line alone (no JSON parse): every item without a ``done`` or ``skipped`` line;
3. sends the rest to the executor in chunks, a bounded window in flight; each chunk's
   outcomes are appended to the journal as they come back (group commit: one
   ``fdatasync`` per 64 lines or 200 ms), and the chunk's future is dropped;
4. returns when every item has ended; the runner then writes the step's marker. If items
   failed for good (each one kept as a dead letter of kind ``item``), it raises
   ``ItemsFailed`` instead: one failure, one alert, counting them.

Workers only compute and write the items' outputs (atomic writes); the driver alone writes
the journal. A kill of the driver redoes at most the lines not yet committed (one batch) and
the chunks in flight. See docs/map-steps.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gc
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ._errors import StalwartError, UsageError
from ._executors import ExecutorSpec, ItemExecutor, check_executor, open_executor
from ._journal import Entry, Journal, Replay, worth_compacting
from ._map_progress import Progress
from ._map_state import (
    envelope_state,
    holding_run,
    item_dead_letters,
    open_item_journal,
)
from ._map_state import item_journal_path as items_journal_path
from ._map_worker import ChunkTask, Outcome, RemoteRootRefused, run_chunk

if TYPE_CHECKING:
    from ._checkpoint import CheckpointStore
    from ._context import Context
    from ._deadletter import StepDeadLetters
    from ._policy import RetryPolicy
    from ._services import RunServices

__all__ = [
    "ItemCounts",
    "ItemsFailed",
    "MapStep",
    "checkpoint_item_counts",
    "default_key",
    "item_counts",
    "items_journal_path",
    "journal_id",
    "replay_counts",
]

log = logging.getLogger("stalwart.map")

HEADER = ".step"
"""The journal id of the line that says with what the step started (params, inputs, N)."""
FINISHED = frozenset({"done", "skipped"})
BATCH = 64
"""Journal lines per ``fdatasync`` (group commit), at most."""
BATCH_DELAY_S = 0.2
"""Seconds a journal line waits for its ``fdatasync``, at most."""
SHOWN_DEAD_LETTERS = 5
"""Item dead letters named in the step's failure (the rest: ``deadletter list``)."""
CHUNK_S = 0.005
"""On threads, without ``chunk=``: queued chunks are merged into one of up to ``BATCH``
items while the items measured so far would fill it in this many seconds (fast items:
fewer chunks, fewer wake-ups of the driver)."""


class ItemsFailed(StalwartError):
    """Items of a map step failed for good (each is a dead letter of kind ``item``), or the
    step stopped starting items after ``max_failures``."""

    def __init__(self, message: str, *, failed: int, not_started: int, total: int) -> None:
        super().__init__(message)
        self.failed = failed
        self.not_started = not_started
        self.total = total


def default_key(item: object) -> str:
    """The item itself if it is a str or an int, else the sha256 of its JSON (sorted keys)."""
    if isinstance(item, str):
        return item
    if isinstance(item, int) and not isinstance(item, bool):
        return str(item)
    try:
        text = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise UsageError(
            f"map step item {repr(item)[:60]} is neither a str, an int nor JSON: give the step "
            f"key=... (a function returning a stable id for each item)"
        ) from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def journal_id(key: str) -> str:
    """The item's id in the journal: the key itself when it is printable ASCII with no space
    or ``%`` (the common case, no work), else percent-encoded, or hashed if long."""
    if (
        0 < len(key) <= 200
        and key.isascii()
        and key.isprintable()
        and " " not in key
        and "%" not in key
        and key[0] != "."
    ):
        return key
    from urllib.parse import quote  # noqa: PLC0415 - only unusual keys

    encoded = quote(key, safe="")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if 0 < len(encoded) <= 200:
        return encoded
    return "%h" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:48]


class ItemCounts(NamedTuple):
    """What the journal of a map step says (``status``)."""

    total: int
    done: int
    failed: int
    skipped: int

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed - self.skipped)


def _latest(replay: Replay) -> dict[str, str]:
    """Item id -> its latest state (the header lines left out): no JSON parse."""
    latest = {entry.id: entry.state for entry in replay.entries}
    latest.pop(HEADER, None)
    return latest


def _header(replay: Replay) -> dict[str, Any]:
    for entry in reversed(replay.entries):
        if entry.id == HEADER:
            with contextlib.suppress(ValueError):
                found = json.loads(entry.detail)
                if isinstance(found, dict):
                    return found
            return {}
    return {}


def item_counts(run_dir: str, step: str) -> ItemCounts | None:
    """Done, failed and skipped items of ``step`` and how many it had, from its journal
    (``None`` if the step is not a map step that started)."""
    journal = Journal(items_journal_path(run_dir, step))
    try:
        replay = journal.replay()
    except OSError:
        return None
    return replay_counts(replay)


def checkpoint_item_counts(checkpoints: CheckpointStore, step: str) -> ItemCounts | None:
    """``item_counts`` for the run of ``checkpoints`` (a ``CheckpointStore``; on object
    storage its ``item_journal``)."""
    remote = getattr(checkpoints, "item_journal", None)
    if remote is None:
        return item_counts(str(checkpoints.run_dir), step)
    journal = remote(step)
    try:
        return None if journal is None else replay_counts(journal.replay())
    except OSError:
        return None


def replay_counts(replay: Replay) -> ItemCounts | None:
    """The counts a journal's lines give (``None`` for an empty journal)."""
    if not replay.entries and not replay.bad:
        return None
    latest = _latest(replay)
    states = list(latest.values())
    done, failed, skipped = (states.count(s) for s in ("done", "failed", "skipped"))
    total = _header(replay).get("total")
    if not isinstance(total, int):
        total = len(latest)
    return ItemCounts(total=total, done=done, failed=failed, skipped=skipped)


def _fn_payload(fn: Callable[..., Any]) -> Any:
    """The map function as another process receives it: cloudpickle'd (by value when it
    lives in a script or a file ``stalwart run`` loaded), else the function itself."""
    try:
        import cloudpickle  # type: ignore[import-untyped, unused-ignore]  # noqa: PLC0415
    except ImportError:
        module = getattr(fn, "__module__", "")
        if module.startswith("stalwart_target_"):
            raise UsageError(
                "a map step of a file loaded by 'stalwart run' runs in other processes only "
                "with cloudpickle installed: pip install 'stalwart[dask]'"
            ) from None
        return fn
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is not None and _users_own(module):
        cloudpickle.register_pickle_by_value(module)  # workers need not import it
    payload: bytes = cloudpickle.dumps(fn)
    return payload


def _users_own(module: Any) -> bool:
    """A module of the user's (a script, a file beside it), not an installed package: its
    functions travel by value, so workers need not have it on their path."""
    name: str = module.__name__
    if name == "__main__" or name.startswith("stalwart_target_"):
        return True
    path = getattr(module, "__file__", None) or ""
    installed = (sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(__file__))
    return bool(path) and not os.path.abspath(path).startswith(installed)


class _Chunk(NamedTuple):
    items: list[tuple[str, str, Any]]
    """``(journal id, key, item)``."""
    generation: int
    """The executor's generation it was sent to (a renewed pool is the next)."""
    alone: bool = False
    """A suspect: its item runs with nothing else in flight."""


class MapStep:
    """The function of a map step (the driver): what ``@pipeline.map`` registers."""

    def __init__(
        self,
        fn: Callable[[Any, Any], object],
        *,
        step: str,
        items: Iterable[Any] | Callable[[Context], Iterable[Any]],
        key: Callable[[Any], object] | None,
        executor: ExecutorSpec,
        workers: int,
        retry: RetryPolicy | None,
        max_failures: int | None,
        timeout: float | None,
        http_retry: RetryPolicy | None,
        chunk: int | None,
    ) -> None:
        check_executor(executor)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UsageError(f"map(workers=...) takes an int >= 1, not {workers!r}")
        if max_failures is not None and (
            isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1
        ):
            raise UsageError(f"map(max_failures=...) takes an int >= 1, not {max_failures!r}")
        if chunk is not None and (
            isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1
        ):
            raise UsageError(f"map(chunk=...) takes an int >= 1, not {chunk!r}")
        if isinstance(items, str | bytes) or not (callable(items) or isinstance(items, Iterable)):
            raise UsageError(
                f"map(items=...) takes an iterable or a function of ctx, not {type(items).__name__}"
            )
        self.fn = fn
        self.step = step
        self.items = items
        self.key = key
        self.executor = executor
        self.workers = workers
        self.retry = retry
        self.max_failures = max_failures
        self.timeout = timeout
        self.http_retry = http_retry
        self.chunk = chunk
        self.__name__ = getattr(fn, "__name__", step)
        self.__qualname__ = getattr(fn, "__qualname__", step)

    def __repr__(self) -> str:
        return f"<map step {self.step} of {self.__qualname__}>"

    # -- items -------------------------------------------------------------------------------

    def keyed_items(self, ctx: Context) -> list[tuple[str, str, Any]]:
        """``(journal id, key, item)`` of every item, in order; ``UsageError`` for a bad or
        duplicate key."""
        source = self.items(ctx) if callable(self.items) else self.items
        keyed: list[tuple[str, str, Any]] = []
        seen: dict[str, Any] = {}
        key_of = self.key or default_key
        for item in source:
            key = key_of(item)
            if isinstance(key, int) and not isinstance(key, bool):
                key = str(key)
            if not isinstance(key, str) or not key:
                raise UsageError(
                    f"map step {self.step}: key= returned {key!r} for item {repr(item)[:60]}; "
                    f"a key is a non-empty str (or an int)"
                )
            jid = journal_id(key)
            if jid in seen:
                raise UsageError(
                    f"map step {self.step}: two items have the key {key!r} "
                    f"({repr(seen[jid])[:60]} and {repr(item)[:60]}); keys must be unique: "
                    f"give key=... a function returning a distinct id per item"
                )
            seen[jid] = item
            keyed.append((jid, key, item))
        return keyed

    # -- the driver --------------------------------------------------------------------------

    def __call__(self, ctx: Context) -> None:
        _Drive(self, ctx).run()


class _Drive:
    """One run of a map step's driver."""

    def __init__(self, spec: MapStep, ctx: Context) -> None:
        self.spec = spec
        self.ctx = ctx
        self.services: RunServices = ctx._services
        self.run_dir: str = ctx._run_dir
        self.step = spec.step
        self.context = {"pipeline": self.services.pipeline, "run_id": ctx.run_id, "step": self.step}
        self.journal = open_item_journal(  # a file, or segment objects on S3
            self.services, ctx.run_id, self.step, max_batch=BATCH, max_delay=BATCH_DELAY_S
        )
        self.done = self.failed = self.skipped = 0
        self.attempts = self.retries = 0
        self.failures: list[tuple[str, str, str]] = []
        """``(key, error, dead letter id)`` of the items that failed in this process."""
        self._writer: StepDeadLetters | None = None
        self.progress: Progress | None = None

    # -- deciding ----------------------------------------------------------------------------

    def _decide(self, keyed: list[tuple[str, str, Any]]) -> dict[str, str]:
        """The latest state of each item id in the journal; a journal of other parameters or
        inputs is started afresh; unreadable lines are a warning (those items run again)."""
        replay = self.journal.replay()
        if replay.bad:
            log.warning(
                "step %s: %d unreadable line(s) in %s (torn by a crash?): the items they were "
                "about run again",
                self.step,
                replay.bad,
                self.journal.path,
                extra=self.context,
            )
        header = {
            "params": dict(self.ctx.params),
            "inputs": {i.name: i.sha256 for i in self.ctx.inputs},
        }
        before = _header(replay)
        if replay.entries and (
            before.get("params") != header["params"] or before.get("inputs") != header["inputs"]
        ):
            what = "parameters" if before.get("params") != header["params"] else "inputs"
            log.info(
                "step %s: the run's %s changed since its items were recorded: every item runs "
                "again",
                self.step,
                what,
                extra=self.context,
            )
            self.journal.compact([])
            replay = Replay([], 0)
        latest = _latest(replay)
        started = {**header, "total": len(keyed)}
        compacting = worth_compacting(replay)
        if compacting:
            self.journal.compact([e for e in replay.latest().values() if e.id != HEADER])
        if compacting or before != started:  # the same header again: nothing to write
            self.journal.append(
                HEADER,
                "started",
                json.dumps(started, separators=(",", ":"), sort_keys=True),
                durable=True,
            )
        self._settle_discarded(replay, latest, {jid: key for jid, key, _ in keyed})
        return latest

    def _settle_discarded(
        self, replay: Replay, latest: dict[str, str], keys: Mapping[str, str]
    ) -> None:
        """Failed items whose dead letter was discarded are skipped from now on."""
        failed = {jid for jid, state in latest.items() if state == "failed" and jid in keys}
        if not failed:
            return
        details = {e.id: e.detail for e in replay.entries if e.id in failed}
        for jid, detail in details.items():
            try:
                envelope_id = str(json.loads(detail).get("dl"))
            except (ValueError, AttributeError):
                continue
            state = envelope_state(self.services, envelope_id)
            if state == "discarded":
                self.journal.append(jid, "skipped", json.dumps({"dl": envelope_id}), durable=True)
                latest[jid] = "skipped"
                self.skipped += 1
                log.info(
                    "item %s of step %s is skipped: its dead letter %s was discarded",
                    keys[jid],
                    self.step,
                    envelope_id,
                    extra={**self.context, "item": keys[jid]},
                )

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        keyed = self.spec.keyed_items(self.ctx)
        t0 = time.perf_counter()
        try:
            with _no_gc():  # 100,000 lines make many small objects: no collection pauses
                latest = self._decide(keyed)
                todo = [entry for entry in keyed if latest.get(entry[0]) not in FINISHED]
            finished_before = len(keyed) - len(todo)
            failed_before = sum(1 for e in todo if latest.get(e[0]) == "failed")
            log.info(
                "step %s: %d items, %d already done, %d to run (%d failed before)%s",
                self.step,
                len(keyed),
                finished_before,
                len(todo),
                failed_before,
                f" in {time.perf_counter() - t0:.3f} s" if keyed else "",
                extra={**self.context, "total": len(keyed), "pending": len(todo)},
            )
            self.progress = Progress(
                step=self.step,
                total=len(keyed),
                done=finished_before,
                failed=0,
                extra=self.context,
            )
            not_started = self._run_items(todo) if todo else 0
        finally:
            self.journal.close()
            if self.progress is not None:
                self.progress.close()
            self._account()
        self._end(len(keyed), not_started)

    def _account(self) -> None:
        """Items' attempts and retries count in the step's marker; their outcomes in the
        metrics (``stalwart_items_total``)."""
        scope = self.ctx._scope
        scope.attempts += self.attempts
        scope.retries += self.retries
        if self.services.emit:
            from .instrumentation._events import ItemsFinished  # noqa: PLC0415 - sinks only

            self.services.emit(
                ItemsFinished(
                    pipeline=self.services.pipeline,
                    run_id=self.ctx.run_id,
                    step=self.step,
                    done=self.done,
                    failed=self.failed,
                    skipped=self.skipped,
                )
            )

    def _end(self, total: int, not_started: int) -> None:
        if self.failures or not_started:
            self.journal.close()
            counts = replay_counts(self.journal.replay())
            failed_now = counts.failed if counts is not None else len(self.failures)
            key, error, _ = self.failures[0] if self.failures else ("", "", "")
            parts = [f"{failed_now} of {total} items failed"]
            if key:
                parts[0] += f" (first: item {key[:80]!r}: {error[:300]})"
            if not_started:
                parts.append(
                    f"it stopped starting items after {len(self.failures)} failures "
                    f"(max_failures={self.spec.max_failures}): {not_started} items not started"
                )
            parts.append(
                f"each failed item is a dead letter of kind item (deadletter list --run-id "
                f"{self.ctx.run_id}); a re-run runs only the failed and unfinished items"
            )
            raise ItemsFailed(
                "; ".join(parts), failed=failed_now, not_started=not_started, total=total
            )

    def _executor_ready(self) -> ItemExecutor:
        executor = open_executor(self.spec.executor, self.spec.workers)
        if self.services.store is not None:
            return executor  # object storage: workers on any host write the outputs there
        try:
            here = socket.gethostname()
            elsewhere = {w: h for w, h in executor.worker_hosts().items() if h != here}
        except BaseException:
            executor.shutdown(cancel=True)
            raise
        if elsewhere:
            executor.shutdown(cancel=True)
            worker, host = sorted(elsewhere.items())[0]
            raise RemoteRootRefused(
                f"step {self.step}: Dask worker {worker} runs on host {host}, but the "
                f"state root {self.services.root} is a local directory of {here}: the "
                f"worker could not write the items' outputs there. Run the workers on "
                f"{here}, or use executor='processes'"
            )
        return executor

    def task(self, chunk: list[tuple[str, str, Any]], fn: Any, host: str) -> ChunkTask:
        return ChunkTask(
            fn=fn,
            pipeline=self.services.pipeline,
            root=self.services.root,
            run_id=self.ctx.run_id,
            step=self.step,
            runs=self.ctx.attempt,
            params=dict(self.ctx.params),
            retry=self.spec.retry,
            timeout=self.spec.timeout,
            http_retry=self.spec.http_retry,
            host=host,
            items=[(key, item) for _, key, item in chunk],
        )

    def _run_items(self, todo: list[tuple[str, str, Any]]) -> int:
        """Run ``todo``; return how many were not started (the circuit breaker tripped)."""
        executor = self._executor_ready()
        size = self.spec.chunk or max(
            1, min(100 if executor.remote else 16, len(todo) // (executor.workers * 4))
        )
        window = _Window(
            self,
            executor,
            deque(_Chunk(todo[i : i + size], 0) for i in range(0, len(todo), size)),
        )
        interrupted = True
        try:
            window.run()
            interrupted = False
        finally:
            if interrupted:
                self._salvage(window.inflight)
            executor.shutdown(cancel=interrupted or window.tripped)
        return sum(len(c.items) for c in window.queue) + sum(len(c.items) for c in window.suspects)

    def tripped(self) -> bool:
        """The circuit breaker: ``max_failures`` items failed, start no new one."""
        return bool(self.spec.max_failures and self.failed >= self.spec.max_failures)

    def chunk_died(self, chunk: _Chunk, exc: Exception, suspects: deque[_Chunk]) -> None:
        """A chunk came back with no outcomes (its worker died, or it could not be sent):
        each of its items runs again alone; an item that fails so when alone failed."""
        if chunk.alone:
            key = chunk.items[0][1]
            reason = (
                f"{type(exc).__name__}: the worker running it died, or it could not be sent "
                f"to one: {exc}"
            )
            self.record(chunk.items, [(key, False, {"e": reason[:1000], "a": 1})])
            return
        log.warning(
            "step %s: a chunk of %d item(s) came back without results (%s: %s); each runs "
            "again, alone",
            self.step,
            len(chunk.items),
            type(exc).__name__,
            str(exc)[:200],
            extra=self.context,
        )
        suspects.extend(_Chunk([entry], chunk.generation, alone=True) for entry in chunk.items)

    def _salvage(self, inflight: dict[cf.Future[Any], _Chunk]) -> None:
        """Interrupted: journal the chunks that already came back; the rest run next time."""
        for fut, chunk in list(inflight.items()):
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                with contextlib.suppress(Exception):
                    self.record(chunk.items, fut.result())
            else:
                fut.cancel()

    # -- recording ---------------------------------------------------------------------------

    def record(self, items: list[tuple[str, str, Any]], outcomes: list[Outcome]) -> None:
        """Journal how ``items`` (a chunk's ``(journal id, key, item)``) ended, ``outcomes``
        in the same order: the ``done`` lines together (``Journal.append_many``, as few
        writes as the group commit allows), each failed item kept as a dead letter first."""
        done: list[Entry] = []
        for (jid, key, item), (ended, ok, detail) in zip(items, outcomes, strict=True):
            if ended != key:
                raise RuntimeError(
                    f"step {self.step}: the outcomes of a chunk came back out of order (item "
                    f"{ended!r} where {key!r} was expected); they are not journaled"
                )
            self.attempts += int(detail.get("a", 1))
            self.retries += int(detail.get("r", 0))
            kept = detail.get("k")
            if kept:
                ids = getattr(self.ctx._scope.dead_letter, "ids", None)
                if isinstance(ids, list):
                    ids.extend(kept)  # kept on purpose by a successful item: not superseded
            if ok:
                done.append(Entry(jid, "done", _compact(detail)))
            else:
                self._record_done(done)
                self._record_failed(jid, key, item, detail)
        self._record_done(done)

    def _record_done(self, done: list[Entry]) -> None:
        if not done:
            return
        self.journal.append_many(done, durable=True)
        self.done += len(done)
        if self.progress is not None:
            self.progress.add(done=len(done))
        done.clear()

    def _record_failed(self, jid: str, key: str, item: Any, detail: dict[str, Any]) -> None:
        error = str(detail.get("e", "failed"))
        envelope_id = self._keep_item(key, item, error, int(detail.get("a", 1)))
        detail["dl"] = envelope_id
        self.journal.append(jid, "failed", _compact(detail), durable=True)
        self.failed += 1
        self.failures.append((key, error, envelope_id))
        if len(self.failures) <= SHOWN_DEAD_LETTERS:
            ids = getattr(self.ctx._scope.dead_letter, "ids", None)
            if isinstance(ids, list):
                ids.append(envelope_id)
        log.warning(
            "item %s of step %s failed after %d attempt(s): %s (dead letter %s)",
            key,
            self.step,
            int(detail.get("a", 1)),
            error,
            envelope_id,
            extra={**self.context, "item": key, "dead_letter_id": envelope_id},
        )
        if self.progress is not None:
            self.progress.add(failed=1)

    def _keep_item(self, key: str, item: Any, error: str, attempts: int) -> str:
        """Keep the failed item as a dead letter of kind ``item`` (replay runs it again)."""
        if self._writer is None:
            from ._deadletter import StepDeadLetters  # noqa: PLC0415

            store = item_dead_letters(self.services)
            self._writer = StepDeadLetters(
                store, run_id=self.ctx.run_id, step=self.step, emit=self.services.emit
            )
        writer = self._writer
        envelope = writer._base("item", f"item {key} failed: {error.split(':', 1)[0]}")
        try:
            value = json.loads(json.dumps(item, ensure_ascii=False))
            as_json = True
        except (TypeError, ValueError):
            value, as_json = repr(item)[:10000], False
        error_type, _, message = error.partition(": ")
        envelope.update(
            {
                "key": key,
                "item": value,
                "item_is_json": as_json,
                "attempts": attempts,
                "first_failure_at": envelope["created_at"],
                "last_failure_at": envelope["created_at"],
                "error": {"type": error_type, "message": message},
                "response": None,
            }
        )
        return writer._keep(envelope)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Window:
    """The chunks of a map step: waiting, in flight (at most two per worker), and suspects
    (items whose chunk died with its worker: run again one at a time, alone)."""

    def __init__(self, drive: _Drive, executor: ItemExecutor, queue: deque[_Chunk]) -> None:
        self.drive = drive
        self.executor = executor
        self.queue = queue
        self.suspects: deque[_Chunk] = deque()
        self.inflight: dict[cf.Future[Any], _Chunk] = {}
        self.generation = 0
        self.tripped = False
        self.size = executor.workers * 2
        self.fn = _fn_payload(drive.spec.fn) if executor.remote else drive.spec.fn
        local = drive.services.store is None  # a local root: Dask workers on this host only
        self.host = socket.gethostname() if executor.kind == "dask" and local else ""
        self.services = None if executor.remote else drive.services
        self.grow_to = BATCH if executor.kind == "threads" and drive.spec.chunk is None else 0
        self.item_s: float | None = None
        """Seconds per item, measured by the last chunk that came back."""

    def _submit(self, chunk: _Chunk) -> None:
        chunk = chunk._replace(generation=self.generation)
        task = self.drive.task(chunk.items, self.fn, self.host)
        self.inflight[self.executor.submit(run_chunk, task, self.services)] = chunk

    def run(self) -> None:
        while self.queue or self.suspects or self.inflight:
            self._fill()
            if not self.inflight:
                return
            finished, _ = cf.wait(
                self.inflight, timeout=BATCH_DELAY_S, return_when=cf.FIRST_COMPLETED
            )
            if not finished:
                self.drive.journal.commit()  # the time bound of the group commit
            for fut in finished:
                self._collect(fut, self.inflight.pop(fut))
                self._fill()  # its successor starts now: the workers run while the next syncs

    def _fill(self) -> None:
        """Start chunks up to the window, unless the circuit breaker tripped."""
        self.tripped = self.tripped or self.drive.tripped()
        if self.tripped:
            return
        if self.suspects and not self.inflight:
            self._submit(self.suspects.popleft())
        while self.queue and not self.suspects and len(self.inflight) < self.size:
            self._submit(self._next())

    def _next(self) -> _Chunk:
        """The next queued chunk; fast items on threads: merged with the following ones."""
        chunk = self.queue.popleft()
        if not self.grow_to or self.item_s is None or self.item_s * len(chunk.items) > CHUNK_S:
            return chunk
        want = min(self.grow_to, int(CHUNK_S / max(self.item_s, 1e-6)))
        items = chunk.items
        while self.queue and len(items) + len(self.queue[0].items) <= want:
            items = items + self.queue.popleft().items
        return chunk._replace(items=items)

    def _collect(self, fut: cf.Future[Any], chunk: _Chunk) -> None:
        """Journal a chunk's outcomes (the future is dropped then), or deal with its death."""
        try:
            outcomes = fut.result()
        except RemoteRootRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - the chunk's worker died
            if (
                isinstance(exc, cf.BrokenExecutor)
                and chunk.generation == self.generation
                and self.executor.renew()
            ):
                self.generation += 1
                log.warning(
                    "step %s: a worker process died (%s); a new pool runs the items that "
                    "were in flight",
                    self.drive.step,
                    type(exc).__name__,
                    extra=self.drive.context,
                )
            self.drive.chunk_died(chunk, exc, self.suspects)
            return
        self.drive.record(chunk.items, outcomes)
        if self.grow_to and outcomes:
            self.item_s = sum(detail.get("t", 0.0) for _, _, detail in outcomes) / len(outcomes)


def _compact(detail: dict[str, Any]) -> str:
    """The detail of a journal line, compact JSON; the common case (an item with no output
    and no retry) formatted by hand, without the JSON encoder."""
    if len(detail) == 2:
        attempts, seconds = detail.get("a"), detail.get("t")
        if type(attempts) is int and type(seconds) is float:
            return f'{{"a":{attempts},"t":{seconds!r}}}'
    return json.dumps(detail, separators=(",", ":"), ensure_ascii=True)


def replay_item(spec: MapStep, services: RunServices, store: Any, envelope_id: str) -> str:
    """``deadletter replay ID`` of an item: run the item through the step's function again
    (in this process, the run's lock held); on success its ``done`` line goes to the step's
    journal and the envelope is marked ``replayed``, so the next run does not run it again.
    Returns the item's key. ``DeadLetterError`` if it cannot be replayed or fails again."""
    from ._errors import DeadLetterError  # noqa: PLC0415
    from ._time import utc_now  # noqa: PLC0415

    envelope = store.load(envelope_id)
    if envelope.state != "pending":
        raise DeadLetterError(
            f"dead letter {envelope_id} is {envelope.state}: refusing to run its item again"
        )
    key, run_id = envelope.document.get("key"), envelope.run_id
    if not isinstance(key, str) or not run_id:
        raise DeadLetterError(f"dead letter {envelope_id} names no item key and run")
    if not envelope.document.get("item_is_json", True):
        raise DeadLetterError(
            f"dead letter {envelope_id}: item {key!r} was not JSON, so it was kept as text only; "
            f"re-run step {spec.step} of run {run_id} to run it again"
        )
    with holding_run(services, run_id) as held:  # on S3: the lease, and the store it fences
        journal = open_item_journal(held, run_id, spec.step)
        params = _header(journal.replay()).get("params") or {}
        task = ChunkTask(
            fn=spec.fn,
            pipeline=services.pipeline,
            root=services.root,
            run_id=run_id,
            step=spec.step,
            runs=0,
            params=params,
            retry=spec.retry,
            timeout=spec.timeout,
            http_retry=spec.http_retry,
            host="",
            items=[(key, envelope.document.get("item"))],
        )
        [(_, ok, detail)] = run_chunk(task, held)
        with store._locked(envelope_id):  # package-internal: no replay of it meanwhile
            envelope = store.load(envelope_id)
            if not ok:
                store._update(envelope, "replay_failed", str(detail.get("e", ""))[:500])
                raise DeadLetterError(f"item {key!r} failed again: {detail.get('e', '')}")
            journal.append(journal_id(key), "done", _compact(detail), durable=True)
            journal.close()
            store._update(
                envelope,
                "replayed",
                f"item {key} ran again and succeeded",
                state="replayed",
                replayed_at=utc_now(),
            )
    return key
