"""Where the items of a map step run: threads, processes, any ``concurrent.futures.Executor``,
a Dask ``distributed.Client`` or ``"dask://HOST:PORT"``; one small interface for the driver.

Every executor is used through ``concurrent.futures``: submit a chunk, get a
``concurrent.futures.Future`` (Dask through ``client.get_executor()``). An executor that
stalwart made is shut down when the step ends; one the caller gave is left running.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from ._errors import UsageError

__all__ = ["ExecutorSpec", "ItemExecutor", "check_executor", "open_executor"]

log = logging.getLogger("stalwart.map")

ExecutorSpec = Any
"""``"threads"``, ``"processes"``, ``"dask://HOST:PORT"``, a ``concurrent.futures.Executor``
or a ``distributed.Client``."""


def _is_dask_client(value: object) -> bool:
    return any(
        c.__name__ == "Client" and c.__module__.startswith("distributed")
        for c in type(value).__mro__
    )


def check_executor(executor: ExecutorSpec) -> None:
    """Refuse, when the step is declared, an executor that cannot be one."""
    if isinstance(executor, str):
        if executor in ("threads", "processes"):
            return
        if executor.startswith("dask://") and executor.rpartition(":")[2].isdigit():
            return
        raise UsageError(
            f"map(executor={executor!r}): use 'threads', 'processes', 'dask://HOST:PORT', "
            f"a concurrent.futures.Executor or a distributed.Client"
        )
    if isinstance(executor, cf.Executor) or _is_dask_client(executor):
        return
    raise UsageError(
        f"map(executor=...) takes 'threads', 'processes', 'dask://HOST:PORT', a "
        f"concurrent.futures.Executor or a distributed.Client, not {type(executor).__name__}"
    )


class ItemExecutor:
    """One executor, as the driver of a map step uses it."""

    def __init__(
        self,
        executor: cf.Executor,
        *,
        kind: str,
        workers: int,
        remote: bool,
        renew: Callable[[], cf.Executor] | None = None,
        close: Callable[[], None] | None = None,
        client: Any = None,
    ) -> None:
        self.executor = executor
        self.kind = kind
        """``threads``, ``processes``, ``executor`` (the caller's) or ``dask``."""
        self.workers = workers
        """How many items can run at once (the window of chunks in flight follows it)."""
        self.remote = remote
        """Chunks go to other processes: the function and items are pickled."""
        self._renew = renew
        self._close = close
        self.client = client

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        return self.executor.submit(fn, *args)

    def renew(self) -> bool:
        """After a worker process died and broke the pool: a new pool (True), if stalwart
        made it; False if it cannot be renewed (the caller's executor)."""
        if self._renew is None:
            return False
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._renew()
        return True

    def shutdown(self, *, cancel: bool) -> None:
        """End the executor if stalwart made it (``cancel``: drop the chunks not started)."""
        if self._close is not None:
            self._close()
            return
        if self._renew is not None:
            self.executor.shutdown(wait=not cancel, cancel_futures=cancel)
        elif self.kind == "dask":
            self.executor.shutdown(wait=not cancel)

    def worker_hosts(self) -> dict[str, str]:
        """Dask: worker address -> host name (``{}`` for local executors)."""
        if self.client is None:
            return {}
        hosts: dict[str, str] = self.client.run(socket.gethostname)
        return hosts


def _process_pool(workers: int) -> cf.ProcessPoolExecutor:
    import multiprocessing  # noqa: PLC0415 - only process pools

    # spawn: a child never inherits a lock another thread of the driver held (fork's
    # hazard), and it is the driver's own child, so it can end with it (die_with_parent).
    return cf.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent
    )


def die_with_parent() -> None:
    """In a pool's worker process: end when its parent ends (Linux ``PR_SET_PDEATHSIG``), so
    a driver killed with SIGKILL leaves no worker behind, still running or blocked."""
    if not sys.platform.startswith("linux"):
        return  # pragma: no cover - Linux runs the tests
    import ctypes  # noqa: PLC0415
    import signal  # noqa: PLC0415

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl: end now
            os._exit(1)


def _dask_executor(client: Any, *, owned: bool) -> ItemExecutor:
    nthreads = client.nthreads()
    workers = max(1, sum(nthreads.values()) if nthreads else 1)
    executor = client.get_executor(pure=False)  # a resubmitted chunk is a new task
    close: Callable[[], None] | None = None
    if owned:

        def close() -> None:
            executor.shutdown(wait=False)
            client.close()

    return ItemExecutor(
        executor, kind="dask", workers=workers, remote=True, close=close, client=client
    )


def open_executor(spec: ExecutorSpec, workers: int) -> ItemExecutor:
    """The executor of a step that starts now (``dask://`` is connected here)."""
    if spec == "threads":
        return ItemExecutor(
            cf.ThreadPoolExecutor(workers, thread_name_prefix="stalwart-item"),
            kind="threads",
            workers=workers,
            remote=False,
            renew=lambda: cf.ThreadPoolExecutor(workers, thread_name_prefix="stalwart-item"),
        )
    if spec == "processes":
        return ItemExecutor(
            _process_pool(workers),
            kind="processes",
            workers=workers,
            remote=True,
            renew=lambda: _process_pool(workers),
        )
    if isinstance(spec, str):  # dask://HOST:PORT, checked when declared
        try:
            from distributed import Client  # noqa: PLC0415 - optional: stalwart[dask]
        except ImportError:
            raise UsageError(
                f"executor={spec!r} needs Dask's distributed: pip install 'stalwart[dask]'"
            ) from None
        address = "tcp://" + spec.removeprefix("dask://")
        try:
            client = Client(  # type: ignore[no-untyped-call]
                address, timeout=os.environ.get("STALWART_DASK_TIMEOUT", "30s")
            )
        except OSError as exc:
            raise OSError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
        return _dask_executor(client, owned=True)
    if _is_dask_client(spec):
        return _dask_executor(spec, owned=False)
    executor: cf.Executor = spec
    pool_workers = getattr(executor, "_max_workers", None)
    return ItemExecutor(
        executor,
        kind="executor",
        workers=pool_workers if isinstance(pool_workers, int) and pool_workers > 0 else workers,
        remote=isinstance(executor, cf.ProcessPoolExecutor),
    )
