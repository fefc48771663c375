"""``Pipeline``: a named sequence of steps with checkpoints under a state root.

Declaring steps, the state directories, the collaborators (HTTP client, alerters, metric
sinks), and the operations: ``run`` (see ``_runner``), ``reset``, ``main`` (see ``_cli``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

from ._atomic import lazy_path
from ._checkpoint import CheckpointStore
from ._context import Context, Step, StepFunction, real_directories
from ._errors import RunLockedError, UsageError
from ._lock import RunLock
from ._records import validate_name
from ._reporting import Emitter, resume_command
from ._runner import Terminated, _Run

if TYPE_CHECKING:
    from pathlib import Path

    from ._http import HttpClient
    from ._result import RunResult
    from ._retry import RetryPolicy

__all__ = [
    "Context",
    "Pipeline",
    "Step",
    "Terminated",
    "real_directories",
    "resume_command",
    "today",
]

F = TypeVar("F", bound=StepFunction)

_METRICS_VARIABLES = ("STALWART_PUSHGATEWAY", "STALWART_STATSD", "STALWART_PROM_TEXTFILE")


def today() -> str:
    """Today's UTC date, the default run ID: ``2026-11-28``."""
    return time.strftime("%Y-%m-%d", time.gmtime())


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
        alerters: Sequence[Any] | None = None,
        metrics: Sequence[Any] | None = None,
    ) -> None:
        self.name = validate_name(name, "pipeline name")
        chosen = root if root is not None else (os.environ.get("STALWART_ROOT") or "stalwart-data")
        self._root = os.path.abspath(os.fspath(chosen))
        self._http = http
        self._own_http = http is None
        self._guard = threading.Lock()
        self._active_runs = 0
        self._alerters = None if alerters is None else list(alerters)
        self._metrics = None if metrics is None else list(metrics)
        self.steps: list[Step] = []
        self.source: str | None = None
        """``file.py:name`` when the ``stalwart`` command loaded it (for resume hints)."""

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, root={str(self.root)!r}, steps={self.step_names})"

    # -- declaring ---------------------------------------------------------------------------

    @overload
    def step(self, fn: F, /) -> F: ...
    @overload
    def step(
        self, fn: None = None, /, *, name: str | None = None, retry: RetryPolicy | None = None
    ) -> Callable[[F], F]: ...
    def step(
        self,
        fn: StepFunction | None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Register a step (``@pipeline.step()`` or ``@pipeline.step``); steps run in the
        order they are declared. ``retry`` overrides the client's policy for this step's
        HTTP calls."""

        def register(function: StepFunction) -> StepFunction:
            step_name = validate_name(name or function.__name__, "step name")
            if step_name in self.step_names:
                raise UsageError(f"pipeline {self.name!r} already has a step {step_name!r}")
            self.steps.append(Step(step_name, function, retry))
            return function

        return register(fn) if fn is not None else register

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
        with self._guard:
            if self._http is None:
                from ._http import HttpClient  # noqa: PLC0415 - httpx only when HTTP is used

                self._http = HttpClient()
            return self._http

    @property
    def alerters(self) -> list[Any]:
        from ._alerts import LogAlerter, SlackWebhook  # noqa: PLC0415 - only when failing

        configured = self._alerters
        if configured is None:
            slack = SlackWebhook.from_env()
            configured = [slack] if slack else []
        return [LogAlerter(), *configured]

    def metric_sinks(self) -> list[Any]:
        if self._metrics is not None:
            return list(self._metrics)
        if not any(os.environ.get(name) for name in _METRICS_VARIABLES):
            return []  # the common case costs no import
        from ._metrics import sinks_from_env  # noqa: PLC0415

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
        return CheckpointStore(self._run_dir(today() if run_id is None else run_id))

    @property
    def deadletters(self) -> Any:
        from ._deadletter import DeadLetterStore  # noqa: PLC0415
        from ._state_files import refuse_planted_links  # noqa: PLC0415

        refuse_planted_links(self._root, f"{self.name}/deadletter")  # never followed out
        return DeadLetterStore(self.state_dir / "deadletter", pipeline=self.name)

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
        resume_command: str | None = None,
    ) -> RunResult:
        """Run the pipeline; return a ``RunResult``, or raise the failing step's exception
        (after alerting). ``force`` clears every marker of the run first; ``from_step``
        clears the markers of that step and of every step after it.

        Raises ``UsageError`` (bad run ID or step name, bad metrics setting) and
        ``RunLockedError`` (another process holds the run) before touching anything.
        """
        return self._run(
            run_id=run_id, force=force, from_step=from_step, resume_command=resume_command
        ).result()

    def _run(
        self,
        *,
        run_id: str | None,
        force: bool = False,
        from_step: str | None = None,
        resume_command: str | None = None,
    ) -> _Run:
        """``run`` minus the ``RunResult`` (the CLI needs none, nor the pathlib it holds)."""
        run_id = validate_name(run_id if run_id is not None else today(), "run ID")
        if not self.steps:
            raise UsageError(f"pipeline {self.name!r} has no steps")
        if from_step is not None:
            self._check_step(from_step)
        if os.environ.get("SLACK_WEBHOOK_URL") or os.environ.get("STALWART_PUSHGATEWAY"):
            from ._environment_secrets import register_environment_secrets  # noqa: PLC0415

            register_environment_secrets()  # before any step can quote them in its error
        sinks = self.metric_sinks()
        run_dir = self._run_dir(run_id)
        run = _Run(self, run_id, run_dir, Emitter(sinks), resume_command)
        lock = RunLock(os.path.join(run_dir, ".lock"))
        started = time.monotonic()
        try:
            self._prepare_state(run_id)
            lock.acquire()
        except (UsageError, RunLockedError):
            raise  # a setting to fix (exit 2) or another process on this run (exit 75)
        except Exception as exc:  # an unwritable or broken state directory: alerted
            run.failed_before_steps(exc, time.monotonic() - started)
            raise
        with self._guard:
            self._active_runs += 1
        try:
            run.execute(force=force, from_step=from_step)
            return run
        finally:
            with self._guard:  # the default client is closed by the last run that ends
                self._active_runs -= 1
                if self._own_http and self._http is not None and not self._active_runs:
                    self._http.close()
                    self._http = None
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

    def main(self, argv: Sequence[str] | None = None) -> NoReturn:
        """The command line: ``[run] [--run-id ID] [--force] [--step NAME]``, ``status``,
        ``reset``, ``deadletter ...``. Exits with 0, 1, 2, 75, 130 or 143."""
        from ._cli import run_cli  # noqa: PLC0415

        sys.exit(run_cli(list(sys.argv[1:] if argv is None else argv), pipeline=self))
