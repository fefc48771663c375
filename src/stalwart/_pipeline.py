"""``Pipeline``: a named sequence of steps with checkpoints under a state root.

Declaring steps, the state directories, the configuration of the run's services (HTTP
client, alerters, metric sinks), and the operations: ``run`` (see ``_runner``) and ``reset``.
The command line (``main``) is a layer above: ``stalwart.cli`` adds it to the public
``stalwart.Pipeline``; nothing here imports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from ._atomic import lazy_path
from ._checkpoint import CheckpointStore
from ._context import Step, StepFunction
from ._errors import RunLockedError, UsageError
from ._lock import RunLock
from ._records import validate_name, validate_params
from ._runner import Run
from ._services import Emitter, RunServices, SharedHttp
from ._state_files import real_directories
from ._time import today

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, TypeVar, overload

    from ._alerts import Alerter
    from ._context import Context
    from ._deadletter import DeadLetterStore
    from ._executors import ExecutorSpec
    from ._history import RunHistory
    from ._http import HttpClient
    from ._policy import RetryPolicy
    from ._remote_state import RunLease
    from ._result import RunResult
    from ._store import StateStore
    from .instrumentation._events import MetricsSink

__all__ = ["Pipeline"]

if TYPE_CHECKING:
    F = TypeVar("F", bound=StepFunction)
    M = TypeVar("M", bound=Callable[..., object])

_METRICS_VARIABLES = ("STALWART_PUSHGATEWAY", "STALWART_STATSD", "STALWART_PROM_TEXTFILE")


class Pipeline:
    """A named sequence of steps with checkpoints under ``root``.

    ``root``: ``$STALWART_ROOT`` or ``./stalwart-data``. ``http``: the ``HttpClient`` behind
    ``ctx.http``. ``alerters``: default a ``SlackWebhook`` if ``SLACK_WEBHOOK_URL`` is set;
    the log alerter is always there. ``metrics``: default the sinks named by
    ``STALWART_PUSHGATEWAY``, ``STALWART_STATSD`` and ``STALWART_PROM_TEXTFILE``.
    """

    def __init__(
        self,
        name: str,
        *,
        root: str | os.PathLike[str] | None = None,
        http: HttpClient | None = None,
        alerters: Sequence[Alerter] | None = None,
        metrics: Sequence[MetricsSink] | None = None,
    ) -> None:
        self.name = validate_name(name, "pipeline name")
        chosen = root if root is not None else (os.environ.get("STALWART_ROOT") or "stalwart-data")
        text = os.fspath(chosen)
        self._remote = "://" in text and _is_remote(text)  # s3://bucket/prefix: _remote_state
        self._root = text.rstrip("/") if self._remote else os.path.abspath(text)
        self._store: StateStore | None = None
        self._http = SharedHttp(http)
        self._alerters = None if alerters is None else tuple(alerters)
        self._metrics = None if metrics is None else list(metrics)
        self.steps: list[Step] = []
        self._names: set[str] = set()  # beside ``steps``: declaring stays linear in steps
        self._map_steps: set[str] = set()
        self.source: str | None = None
        """``file.py:name`` when the ``stalwart`` command loaded it (for resume hints)."""

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, root={str(self.root)!r}, steps={self.step_names})"

    # -- declaring ---------------------------------------------------------------------------

    if TYPE_CHECKING:

        @overload
        def step(self, fn: F, /) -> F: ...
        @overload
        def step(
            self,
            fn: None = None,
            /,
            *,
            name: str | None = None,
            retry: RetryPolicy | None = None,
            timeout: float | None = None,
            http_retry: RetryPolicy | None = None,
        ) -> Callable[[F], F]: ...

    def step(
        self,
        fn: StepFunction | None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        http_retry: RetryPolicy | None = None,
    ) -> Any:
        """Register a step (``@pipeline.step()`` or ``@pipeline.step``); steps run in the
        order they are declared. A step is a function (or ``async def``) taking the
        ``Context`` and returning None.

        ``retry``: re-run the whole step after a transient error (``is_transient``), a fresh
        ``Context`` each time (a failed attempt's outputs are not recorded). ``timeout``:
        seconds after which the step is interrupted with ``StepTimeout`` (transient, so
        ``retry`` applies). ``http_retry``: the policy of this step's ``ctx.http`` calls
        (default: the client's).
        """
        _check_options(retry, timeout, http_retry)

        def register(function: StepFunction) -> StepFunction:
            _check_step_function(function)
            step_name = self._new_step_name(name or function.__name__)
            self.steps.append(Step(step_name, function, retry, timeout, http_retry))
            self._names.add(step_name)
            return function

        return register(fn) if fn is not None else register

    def map(
        self,
        *,
        items: Iterable[Any] | Callable[[Context], Iterable[Any]],
        key: Callable[[Any], object] | None = None,
        executor: ExecutorSpec = "threads",
        workers: int = 8,
        retry: RetryPolicy | None = None,
        max_failures: int | None = None,
        timeout: float | None = None,
        http_retry: RetryPolicy | None = None,
        chunk: int | None = None,
        name: str | None = None,
    ) -> Callable[[M], M]:
        """Register a map step: ``fn(ctx: ItemContext, item)`` runs once per item, each item
        checkpointed on its own (docs/map-steps.md). ``items``: an iterable, or a function of
        the step's ``Context`` evaluated when the step starts. ``key``: a stable id per item
        (default: the item if it is a str or int, else a hash of its JSON). ``executor``:
        ``"threads"``, ``"processes"``, a ``concurrent.futures.Executor``, a Dask
        ``distributed.Client`` or ``"dask://HOST:PORT"``. ``retry``/``timeout``: per item.
        ``max_failures``: after that many failed items, no new item starts."""
        _check_options(retry, timeout, http_retry)

        def register(function: M) -> M:
            _check_step_function(function)
            from ._map import MapStep  # noqa: PLC0415 - only pipelines with map steps

            step_name = self._new_step_name(name or function.__name__)
            driver = MapStep(
                function,
                step=step_name,
                items=items,
                key=key,
                executor=executor,
                workers=workers,
                retry=retry,
                max_failures=max_failures,
                timeout=timeout,
                http_retry=http_retry,
                chunk=chunk,
            )
            self.steps.append(Step(step_name, driver))
            self._names.add(step_name)
            self._map_steps.add(step_name)
            return function

        return register

    def _new_step_name(self, name: str) -> str:
        """``name``, checked: a valid step name that no step of this pipeline has yet."""
        step_name = validate_name(name, "step name")
        if len(self._names) != len(self.steps):  # ``steps`` was edited in place
            self._names = {s.name for s in self.steps}
        if step_name in self._names:
            raise UsageError(f"pipeline {self.name!r} already has a step {step_name!r}")
        return step_name

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def root(self) -> Path:
        """The state root (absolute): ``<root>/<pipeline>/runs/<run_id>/`` holds a run."""
        return lazy_path(self._root)

    # -- collaborators -----------------------------------------------------------------------

    @property
    def http(self) -> HttpClient:
        """The ``HttpClient`` behind ``ctx.http`` (and ``deadletter replay``)."""
        return self._http.get()

    def configured_alerters(self) -> tuple[Alerter, ...]:
        """The alerters given to the pipeline, or by default a ``SlackWebhook`` if
        ``SLACK_WEBHOOK_URL`` is set (``UsageError`` if it is malformed). The log alerter is
        always used as well."""
        if self._alerters is not None:
            return self._alerters
        if not os.environ.get("SLACK_WEBHOOK_URL", "").strip():
            return ()  # the common case imports nothing
        from ._alerts import SlackWebhook  # noqa: PLC0415

        slack = SlackWebhook.from_env()
        return (slack,) if slack else ()

    def metric_sinks(self) -> list[MetricsSink]:
        if self._metrics is not None:
            return list(self._metrics)
        if not any(os.environ.get(name) for name in _METRICS_VARIABLES):
            return []  # the common case costs no import
        from .instrumentation._env import sinks_from_env  # noqa: PLC0415

        return sinks_from_env()

    @property
    def state_dir(self) -> Path:
        return lazy_path(self._state_dir)

    @property
    def _state_dir(self) -> str:
        return os.path.join(self._root, self.name)

    def run_dir(self, run_id: str) -> Path:
        return lazy_path(self._run_dir(run_id))

    def _run_dir(self, run_id: str) -> str:
        return os.path.join(self._root, self.name, "runs", validate_name(run_id, "run ID"))

    def checkpoints(self, run_id: str | None = None) -> CheckpointStore:
        run_id = today() if run_id is None else run_id
        if self._remote:
            from ._remote_state import RemoteCheckpointStore, run_key  # noqa: PLC0415

            return RemoteCheckpointStore(self._state_store(), run_key(self.name, run_id))
        return CheckpointStore(self._run_dir(run_id))

    @property
    def deadletters(self) -> DeadLetterStore:
        if self._remote:
            from ._remote_state import RemoteDeadLetterStore, deadletter_key  # noqa: PLC0415

            key = deadletter_key(self.name)
            return RemoteDeadLetterStore(self._state_store(), key, pipeline=self.name)
        from ._deadletter import DeadLetterStore  # noqa: PLC0415
        from ._state_files import refuse_planted_links  # noqa: PLC0415

        refuse_planted_links(self._root, f"{self.name}/deadletter")  # never followed out
        return DeadLetterStore(self.state_dir / "deadletter", pipeline=self.name)

    def history(self) -> RunHistory:
        """The pipeline's runs in its state root, as ``runs``, ``report`` and ``gc`` read them
        (and ``gc`` deletes them): a local directory, or object storage."""
        if self._remote:
            from ._remote_history import StoreRunHistory  # noqa: PLC0415 - object storage only

            return StoreRunHistory(self._state_store(), self.name)
        from ._history import LocalRunHistory  # noqa: PLC0415 - the operating commands only

        return LocalRunHistory(self._state_dir)

    def _state_store(self) -> StateStore:
        """The object store of an ``s3://`` root (made on first use; s3fs is imported then)."""
        if self._store is None:
            from ._remote_state import open_store  # noqa: PLC0415

            self._store = open_store(self._root)
        return self._store

    def _run_lease(self, run_id: str) -> RunLease:
        from ._remote_state import RunLease, run_key  # noqa: PLC0415 - object storage only

        return RunLease(self._state_store(), run_key(self.name, run_id))

    def _holder(self, run_id: str) -> str | None:
        """Who is running ``run_id`` now (pid, host, since), ``None`` if nobody."""
        if self._remote:
            from ._remote_state import run_holder, run_key  # noqa: PLC0415

            return run_holder(self._state_store(), run_key(self.name, run_id))
        from ._lock import lock_holder  # noqa: PLC0415

        return lock_holder(self._run_dir(run_id))

    def _prepare_state(self, run_id: str) -> None:
        """Create the run's state directories (0700), refusing planted symlinks."""
        root = self._root
        if os.path.exists(root) and not os.path.isdir(root):
            raise UsageError(f"the state root {root} is not a directory ($STALWART_ROOT?)")
        if not os.path.isdir(root):
            os.makedirs(root, mode=0o700, exist_ok=True)
        real_directories(root, f"{self.name}/runs/{run_id}/.checkpoints")
        real_directories(root, f"{self.name}/deadletter")
        lock = os.path.join(self._run_dir(run_id), ".lock")
        if os.path.islink(lock):
            raise UsageError(f"refusing to use {lock}: it is a symbolic link")

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        *,
        run_id: str | None = None,
        force: bool = False,
        from_step: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run the pipeline; return a ``RunResult``, or raise the failing step's exception
        (after alerting). ``force`` clears every marker of the run first; ``from_step``
        clears the markers of that step and of every step after it. ``params``: the run's
        parameters (``ctx.params``); a step that ran with other parameters runs again.

        Raises ``UsageError`` (bad run ID or step name, bad setting) and ``RunLockedError``
        (another process holds the run) before touching anything.
        """
        run = self.start(run_id=run_id, force=force, from_step=from_step, params=params)
        if run.failure is not None:
            error = run.failure.error
            if isinstance(error, SystemExit) and not error.code:
                raise SystemExit(1) from error  # sys.exit(0) in a step: the run did not finish
            raise error
        return run.result()

    def services(self, *, resume_hint: str | None = None) -> RunServices:
        """The services of a run, built now: settings are read and checked here (a malformed
        ``SLACK_WEBHOOK_URL`` or metrics variable is a ``UsageError``, before any step)."""
        return RunServices(
            pipeline=self.name,
            root=self._root,
            http=self._http,
            alerters=self.configured_alerters(),
            emit=Emitter(self.metric_sinks()),
            resume_hint=resume_hint or self.source,
        )

    def start(
        self,
        *,
        run_id: str | None = None,
        force: bool = False,
        from_step: str | None = None,
        params: Mapping[str, str] | None = None,
        resume_hint: str | None = None,
    ) -> Run:
        """Run the pipeline and return the finished ``Run``: its ``failure`` says how it
        failed (the command line renders it; ``run()`` raises it). Usage errors and a locked
        run raise, before anything is touched; an interrupt propagates."""
        run_id = validate_name(run_id if run_id is not None else today(), "run ID")
        if not self.steps:
            raise UsageError(f"pipeline {self.name!r} has no steps")
        if from_step is not None:
            self._check_step(from_step)
        if os.environ.get("SLACK_WEBHOOK_URL") or os.environ.get("STALWART_PUSHGATEWAY"):
            from ._environment_secrets import register_environment_secrets  # noqa: PLC0415

            register_environment_secrets()  # before any step can quote them in its error
        checked = validate_params(params)
        services = self.services(resume_hint=resume_hint)
        lock: RunLock | RunLease
        if self._remote:  # a lease instead of flock; the run's writes check it
            lock = self._run_lease(run_id)
            services = services._replace(store=lock.store)
        else:
            lock = RunLock(os.path.join(services.run_dir(run_id), ".lock"))
        run = Run(services, tuple(self.steps), run_id, checked)
        started = time.monotonic()
        try:
            if not self._remote:
                self._prepare_state(run_id)
            lock.acquire()
        except (UsageError, RunLockedError):
            raise  # a setting to fix (exit 2) or another process on this run (exit 75)
        except Exception as exc:  # noqa: BLE001 - an unwritable state directory: alerted
            run.failed_before_steps(exc, time.monotonic() - started)
            return run
        self._http.enter()
        try:
            run.execute(force=force, from_step=from_step)
            return run
        finally:
            self._http.leave()
            lock.release()

    def _check_step(self, name: str) -> None:
        if name not in self.step_names:
            raise UsageError(
                f"unknown step {name!r}; the steps of {self.name!r} are: "
                + ", ".join(self.step_names)
            )

    # -- operating ---------------------------------------------------------------------------

    def reset(self, *, run_id: str | None = None, step: str | None = None) -> list[str]:
        """Clear the run's markers (all, or ``step`` and the steps after it) without running;
        return the steps whose marker was removed. Takes the run lock."""
        run_id = validate_name(run_id if run_id is not None else today(), "run ID")
        if step is not None:
            self._check_step(step)
        if self._remote:
            from ._remote_state import reset_run, run_key  # noqa: PLC0415

            later = None if step is None else self.step_names[self.step_names.index(step) :]
            return reset_run(self._state_store(), run_key(self.name, run_id), later)
        run_dir = self._run_dir(run_id)
        from ._state_files import refuse_planted_links  # noqa: PLC0415

        refuse_planted_links(self._root, f"{self.name}/runs/{run_id}/.checkpoints")
        if not os.path.isdir(run_dir):
            return []
        with RunLock(os.path.join(run_dir, ".lock")):
            store = CheckpointStore(run_dir)
            if step is None:
                return store.clear_all()
            return store.clear(self.step_names[self.step_names.index(step) :])


def _is_remote(root: str) -> bool:
    """``_store.is_remote``, imported only for a root that has a scheme: a local run never
    loads object storage's module (~0.4 ms of every start)."""
    from ._store import is_remote  # noqa: PLC0415 - see the docstring

    return is_remote(root)


# Code flags of generator functions (CPython's ``inspect.CO_GENERATOR`` and
# ``CO_ASYNC_GENERATOR``; spelled here so that declaring a step does not import ``inspect``).
_GENERATOR_FLAGS = 0x20 | 0x200


def _check_step_function(function: object) -> None:
    """Refuse, when it is declared, what cannot be a step: a class, a non-callable, a
    generator function (its body would never run, yet the step would be marked done)."""
    shown = getattr(function, "__qualname__", None) or repr(function)
    if isinstance(function, type):
        raise UsageError(
            f"step {shown} is a class; a step is a function taking ctx (def {shown.lower()}"
            f"(ctx): ...)"
        )
    if not callable(function):
        raise UsageError(f"a step must be a function taking ctx, not {shown[:80]}")
    code = getattr(function, "__code__", None)
    if code is not None and code.co_flags & _GENERATOR_FLAGS:
        raise UsageError(
            f"step {shown} is a generator function (it yields): its body would not run. A "
            f"step runs once and returns None; write what it produces with ctx.write_*"
        )


def _check_options(
    retry: RetryPolicy | None, timeout: float | None, http_retry: RetryPolicy | None
) -> None:
    for option, value in (("retry", retry), ("http_retry", http_retry)):
        if value is None:
            continue
        from ._policy import RetryPolicy  # noqa: PLC0415 - only steps with a policy need it

        if not isinstance(value, RetryPolicy):
            raise UsageError(f"step({option}=...) takes a RetryPolicy, not {value!r}")
    if timeout is not None and not (
        isinstance(timeout, int | float)
        and not isinstance(timeout, bool)
        and 0 < timeout < float("inf")
    ):
        raise UsageError(f"step(timeout=...) takes seconds > 0, not {timeout!r}")
