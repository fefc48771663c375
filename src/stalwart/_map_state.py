"""Where a map step's state lives: a local run directory, or an object store (``s3://``).

The driver (``_map``) and the workers (``_map_worker``) ask here, never decide themselves:

- the item journal: ``_journal.Journal`` (``.checkpoints/<step>.items``, a file) or
  ``_remote_state.RemoteItemJournal`` (``.checkpoints/<step>.items/seg-<n>``, objects);
- the dead-letter store the failed items go to, and a kept envelope's state;
- the run's lock for ``deadletter replay`` of an item (``flock`` or the lease);
- the store a worker process writes the items' outputs to (opened from the root's URL, with
  the worker's own credentials: the standard AWS variables of the worker's environment), and
  the ``ItemContext`` whose ``write_*`` go there.

On a local root nothing here imports anything of object storage.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from ._item_context import ItemContext
from ._journal import Journal
from ._store import is_remote

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._deadletter import DeadLetterStore
    from ._remote_state import RemoteItemJournal
    from ._services import RunServices
    from ._store import StateStore

__all__ = [
    "envelope_state",
    "holding_run",
    "item_context_type",
    "item_dead_letters",
    "item_journal_path",
    "open_item_journal",
    "worker_store",
]


def item_journal_path(run_dir: str, step: str) -> str:
    """The item journal of ``step`` in a local run directory."""
    return os.path.join(run_dir, ".checkpoints", f"{step}.items")


def open_item_journal(
    services: RunServices, run_id: str, step: str, *, max_batch: int = 1, max_delay: float = 0.0
) -> Journal | RemoteItemJournal:
    """The item journal of ``step`` in run ``run_id``: a file, or on object storage segment
    objects written through ``services.store`` (fenced by the run's lease)."""
    if services.store is None:
        return Journal(
            item_journal_path(services.run_dir(run_id), step),
            max_batch=max_batch,
            max_delay=max_delay,
        )
    from ._remote_state import RemoteItemJournal, item_journal_key, run_key  # noqa: PLC0415

    key = item_journal_key(run_key(services.pipeline, run_id), step)
    return RemoteItemJournal(services.store, key, max_batch=max_batch, max_delay=max_delay)


def item_dead_letters(services: RunServices) -> DeadLetterStore:
    """The pipeline's dead-letter store: its directory, or its prefix on object storage."""
    if services.store is not None:
        from ._remote_state import RemoteDeadLetterStore, deadletter_key  # noqa: PLC0415

        key = deadletter_key(services.pipeline)
        return RemoteDeadLetterStore(services.store, key, pipeline=services.pipeline)
    from ._deadletter import DeadLetterStore  # noqa: PLC0415 - only when an item failed

    return DeadLetterStore(services.deadletter_dir, pipeline=services.pipeline)


def envelope_state(services: RunServices, envelope_id: str) -> str | None:
    """The state of a kept envelope (``pending``, ``discarded``...); ``None`` if it cannot
    be read (missing, corrupt): then nothing is decided from it."""
    from ._errors import StalwartError  # noqa: PLC0415

    try:
        return item_dead_letters(services).load(envelope_id).state
    except (StalwartError, OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def holding_run(services: RunServices, run_id: str) -> Iterator[RunServices]:
    """Hold the run's lock (``RunLockedError`` at once if another process does) and yield
    the services to use meanwhile: on object storage, with the store fenced by the lease."""
    if not is_remote(services.root):
        from ._lock import RunLock  # noqa: PLC0415

        with RunLock(os.path.join(services.run_dir(run_id), ".lock")):
            yield services
        return
    from ._remote_state import RunLease, open_store, run_key  # noqa: PLC0415

    store = services.store or open_store(services.root)
    with RunLease(store, run_key(services.pipeline, run_id)) as lease:
        yield services._replace(store=lease.store)


def worker_store(root: str) -> StateStore | None:
    """The store a worker writes the items' outputs to: ``None`` for a local root (the run
    directory), else the object store of ``root``, opened here with this process's
    credentials (never the driver's: they are not sent with the items)."""
    if not is_remote(root):
        return None
    from ._remote_state import open_store  # noqa: PLC0415 - object storage only

    return open_store(root)


def item_context_type(services: RunServices) -> type[ItemContext]:
    """The class of an item's context: ``ItemContext``, or on object storage
    ``RemoteItemContext`` (its writes are single PUTs to ``services.store``)."""
    if services.store is None:
        return ItemContext
    from ._remote_context import RemoteItemContext  # noqa: PLC0415 - object storage only

    return RemoteItemContext
