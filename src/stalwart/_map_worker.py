"""The worker side of a map step: run a chunk of items, return how each one ended.

``run_chunk`` runs where the executor puts it: a thread of the driver, a process of a pool,
a Dask worker. It writes the items' outputs (atomic writes into the run directory; one PUT
each on object storage, through a store the worker opens itself) and
returns one ``(key, ok, detail)`` per item; it never touches the step's journal or marker:
the driver alone records what is done.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ._context import Step
from ._errors import UsageError
from ._invoke import call_step
from ._item_context import ItemContext, ItemScope
from ._map_state import item_context_type, worker_store
from ._redact import scrub_registered
from ._scope import StepScope, current_scope
from ._services import Emitter, RunServices, SharedHttp

if TYPE_CHECKING:
    from ._policy import RetryPolicy

__all__ = ["ChunkTask", "Outcome", "RemoteRootRefused", "run_chunk"]

Outcome = tuple[str, bool, dict[str, Any]]
"""``(key, ok, detail)``: ``detail`` holds ``a`` (attempts), ``r`` (retries), ``t`` (seconds),
``o`` (outputs: ``[name, size, sha256]``) when it succeeded, ``e`` (``Type: message``)
when it failed, and ``k`` (dead letters the item kept itself) if any."""


class RemoteRootRefused(UsageError):
    """A worker on another host cannot write into the driver's local state root."""


class ChunkTask(NamedTuple):
    """Everything a worker needs to run some items of a step (picklable)."""

    fn: Any
    """The map function, or its pickled bytes (cloudpickle) for another process."""
    pipeline: str
    root: str
    run_id: str
    step: str
    runs: int
    params: Mapping[str, str]
    retry: RetryPolicy | None
    timeout: float | None
    http_retry: RetryPolicy | None
    host: str
    """The driver's host name; a worker on another host refuses the chunk ("" = no check)."""
    items: list[tuple[str, Any]]
    """``(key, item)`` pairs, run in order."""


_worker_services: dict[tuple[str, str], RunServices] = {}
_worker_lock = threading.Lock()


def _services_here(task: ChunkTask) -> RunServices:
    """The services of a worker process: its own default HTTP client (kept for the
    process's later chunks), no alerter, no metric sink (the driver reports)."""
    with _worker_lock:
        found = _worker_services.get((task.pipeline, task.root))
        if found is None:
            found = RunServices(
                pipeline=task.pipeline,
                root=task.root,
                http=SharedHttp(None),
                alerters=(),
                emit=Emitter([]),
                store=worker_store(task.root),  # s3://: opened here, with our credentials
            )
            _worker_services[(task.pipeline, task.root)] = found
        return found


def run_chunk(task: ChunkTask, services: RunServices | None = None) -> list[Outcome]:
    """Run ``task.items`` one after another; ``services`` are the driver's own when the
    chunk runs on one of its threads."""
    if task.host and socket.gethostname() != task.host:
        raise RemoteRootRefused(
            f"a worker on host {socket.gethostname()} cannot write the outputs of step "
            f"{task.step}: the state root {task.root} is a local directory of host "
            f"{task.host}. Run the workers on {task.host}, or use executor='processes'"
        )
    fn = pickle.loads(task.fn) if isinstance(task.fn, bytes) else task.fn  # noqa: S301 - ours
    runner = _ItemRunner(task, fn, services or _services_here(task))
    token = current_scope.set(runner.counts)
    try:
        return [runner.run(key, item) for key, item in task.items]
    finally:
        current_scope.reset(token)


class _ItemRunner:
    """Runs the items of one chunk, one after another. What they share is made once per
    chunk: the step, the run directory, the contexts' common parts, and ``counts``, the
    scope the items' retries count into (each item's are the difference it made). An item's
    own scope (Idempotency-Keys with its key, its dead-letter writer) is made only if it
    uses ``ctx.http`` or keeps a dead letter."""

    def __init__(self, task: ChunkTask, fn: Any, services: RunServices) -> None:
        from ._runner import _StepDeadLetters  # noqa: PLC0415 - the runner imports us lazily too

        self.task = task
        self.fn = fn
        self.services = services
        self.dead_letters = _StepDeadLetters
        self.counts = StepScope(
            pipeline=task.pipeline, run_id=task.run_id, step=task.step, emit=services.emit
        )
        context = item_context_type(services)  # ItemContext; on S3 one whose writes are PUTs
        self.new_context = context._maker(
            services=services,
            run_id=task.run_id,
            step=Step(task.step, fn),
            run_dir=os.path.join(task.root, task.pipeline, "runs", task.run_id),
            runs=task.runs,
            params=task.params,
            new_scope=self.new_scope,
        )

    def new_scope(self, key: str) -> ItemScope:
        task = self.task
        return ItemScope(
            item_key=key,
            pipeline=task.pipeline,
            run_id=task.run_id,
            step=task.step,
            emit=self.services.emit,
            retry_policy=task.http_retry,
            dead_letter=self.dead_letters(self.services, task.run_id, task.step),
        )

    def run(self, key: str, item: Any) -> Outcome:
        task = self.task
        contexts: list[ItemContext] = []
        retries = self.counts.retries
        started = time.perf_counter()
        detail: dict[str, Any]
        try:
            if task.retry is None and task.timeout is None:  # the common case: one call
                ctx = self.new_context(key)
                contexts.append(ctx)
                result = self.fn(ctx, item)
                if result is not None:  # a coroutine to await, or a value to refuse
                    call_step(lambda c: result, ctx, step=f"{task.step} item {key}", timeout=None)
            else:
                self._attempts(key, item, contexts)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the item failed: reported
            message = scrub_registered(str(exc) or repr(exc))
            detail = {"e": f"{type(exc).__name__}: {message}"[:1000]}
            ok = False
        else:
            outputs = contexts[-1].outputs
            detail = {"o": [[o.name, o.size, o.sha256] for o in outputs]} if outputs else {}
            ok = True
        detail["a"] = max(1, len(contexts))
        if self.counts.retries != retries:
            detail["r"] = self.counts.retries - retries
        detail["t"] = round(time.perf_counter() - started, 6)
        scope = contexts[-1]._item_scope if contexts else None
        kept = getattr(scope.dead_letter, "ids", None) if scope is not None else None
        if kept:
            detail["k"] = list(kept)
        return key, ok, detail

    def _attempts(self, key: str, item: Any, contexts: list[ItemContext]) -> None:
        """The item under its ``retry=`` or ``timeout=``: each attempt a fresh context (its
        outputs its own), all with one scope: a retry repeats the first's Idempotency-Keys."""
        task = self.task
        scope = self.new_scope(key)
        step = f"{task.step} item {key}"

        def attempt() -> None:
            scope.new_attempt()
            ctx = self.new_context(key)
            ctx._scope = scope
            contexts.append(ctx)
            call_step(lambda c: self.fn(c, item), ctx, step=step, timeout=task.timeout)

        if task.retry is None:
            attempt()
            return
        from ._retry import call_with_retries  # noqa: PLC0415 - only retried items

        call_with_retries(
            attempt, task.retry, operation=f"item {key} of step {task.step}", stacked=True
        )
