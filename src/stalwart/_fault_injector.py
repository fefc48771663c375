"""The child side of ``stalwart chaos``: run the ``stalwart`` command line with a kill plan.

    STALWART_CHAOS_PLAN='{"trace": "/tmp/t.jsonl", ...}' python -m stalwart._fault_injector \\
        run pipeline.py --run-id chaos

With no ``STALWART_CHAOS_PLAN`` this is the plain ``stalwart`` command. With a plan, before the
pipeline is loaded, it:

- counts the file-system calls (``os.open``, ``os.write``, ``os.fsync``, ``os.fdatasync``,
  ``os.replace``, ``os.rename``, ``os.unlink``, ``os.mkdir``, ``os.truncate``,
  ``os.ftruncate`` and the built-in ``open``) made while each step runs, its marker write
  included, and kills the process with SIGKILL at the ``kill_at``-th call of step
  ``kill_step`` (``"*"``: of the whole process). A ``write`` is torn first: half the buffer
  reaches the file, as when a machine dies mid-write;
- or kills it ``kill_after`` seconds after the first step started;
- records every HTTP request sent through httpx (``ctx.http``, ``HttpClient``, or a plain
  httpx client): step, method, URL, ``Idempotency-Key`` and the body's sha256;
- appends what it saw to the ``trace`` file, one JSON object a line: ``{"step": ...}`` when a
  step starts, ``{"http": {...}}``, ``{"kill": {...}}`` just before it kills itself, and
  ``{"ops": {step: count}, "elapsed": seconds}`` at a normal exit (seconds since the first
  step started).

The trace is written with the original ``os`` functions (never counted), unbuffered, with
``O_APPEND``: what was written before the SIGKILL is in the file.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import io
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

__all__ = ["PLAN_VARIABLE", "SETUP", "main"]

PLAN_VARIABLE = "STALWART_CHAOS_PLAN"
SETUP = "(setup)"
"""Where calls made before the first step (lock, sweep, journal) are counted."""

_COUNTED = (
    "open",
    "write",
    "fsync",
    "fdatasync",
    "replace",
    "rename",
    "unlink",
    "mkdir",
    "truncate",
    "ftruncate",
)
_os_open = os.open
_os_write = os.write
_os_close = os.close


class _Injector:
    """One process's counters, kill plan and trace."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.trace = str(plan["trace"])
        self.kill_step: str | None = plan.get("kill_step")
        self.kill_at = int(plan.get("kill_at", 0))
        self.kill_after = float(plan.get("kill_after", 0.0))
        self.step = SETUP
        self.ops: dict[str, int] = {}
        self.lock = threading.RLock()
        self.timer: threading.Timer | None = None
        self.started: float | None = None

    def emit(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        fd = _os_open(self.trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _os_write(fd, data)
        finally:
            _os_close(fd)

    def die(self, how: dict[str, Any]) -> None:  # pragma: no cover - dies before coverage saves
        self.emit({"kill": {"step": self.step, **how}})
        os.kill(os.getpid(), signal.SIGKILL)

    def step_started(self, step: str) -> None:
        with self.lock:
            self.step = step
            self.emit({"step": step})
            if self.started is None:
                self.started = time.monotonic()
            if self.kill_after > 0 and self.timer is None:  # pragma: no cover - it dies
                self.timer = threading.Timer(
                    self.kill_after, self.die, args=({"after": self.kill_after},)
                )
                self.timer.daemon = True
                self.timer.start()

    def counted(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                n = self.ops.get(self.step, 0) + 1
                self.ops[self.step] = n
                total = sum(self.ops.values())
                hit = self.kill_at > 0 and (
                    (self.kill_step == "*" and total == self.kill_at)
                    or (self.kill_step == self.step and n == self.kill_at)
                )
                if hit:  # pragma: no cover - the process dies here, before coverage saves
                    if name == "write" and len(args) == 2 and len(args[1]) > 1:
                        original(args[0], memoryview(args[1])[: len(args[1]) // 2])
                    self.die({"call": name, "n": n})
            return original(*args, **kwargs)

        return wrapper

    def http_sent(self, request: Any) -> None:
        import hashlib  # noqa: PLC0415

        from ._redact import redact_url  # noqa: PLC0415 - no credential reaches the report

        body = request.content if hasattr(request, "_content") else b""
        self.emit(
            {
                "http": {
                    "step": self.step,
                    "method": str(request.method),
                    "url": redact_url(str(request.url.copy_with(query=None, fragment=None))),
                    "key": request.headers.get("idempotency-key"),
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                }
            }
        )

    def exited(self) -> None:
        elapsed = 0.0 if self.started is None else time.monotonic() - self.started
        self.emit({"ops": self.ops, "elapsed": elapsed})


def install(plan: dict[str, Any]) -> _Injector:
    """Patch this process as ``plan`` says (see the module docstring)."""
    injector = _Injector(plan)
    for name in _COUNTED:
        setattr(os, name, injector.counted(name, getattr(os, name)))
    counted_open = injector.counted("open", builtins.open)
    builtins.open = counted_open
    io.open = counted_open

    from . import _scope  # noqa: PLC0415 - a step starts when its scope is made

    original_init = _scope.StepScope.__init__

    def scope_init(self: _scope.StepScope, **kwargs: Any) -> None:
        original_init(self, **kwargs)
        injector.step_started(self.step)

    _scope.StepScope.__init__ = scope_init  # type: ignore[method-assign]

    def record_requests(httpx: Any) -> None:
        original_send = httpx.Client.send

        def send(self: Any, request: Any, **kwargs: Any) -> Any:
            injector.http_sent(request)
            return original_send(self, request, **kwargs)

        httpx.Client.send = send

    _when_imported("httpx", record_requests)
    atexit.register(injector.exited)
    return injector


class _PatchOnImport:
    """A meta-path finder that patches module ``name`` right after it is first imported
    (httpx costs ~0.1 s to import: a child whose pipeline makes no request does not pay)."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.patch = patch

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util  # noqa: PLC0415

        spec = importlib.util.find_spec(fullname)
        loader: Any = spec.loader if spec is not None else None
        if loader is not None:
            execute = loader.exec_module

            def exec_module(module: ModuleType) -> None:
                execute(module)
                self.patch(module)

            loader.exec_module = exec_module
        return spec


def _when_imported(name: str, patch: Callable[[ModuleType], None]) -> None:
    if name in sys.modules:
        patch(sys.modules[name])
    else:
        sys.meta_path.insert(0, _PatchOnImport(name, patch))


def _console() -> Callable[[], object]:
    """The ``stalwart`` console script's function: where it lives today, else wherever the
    package's entry point says (so a move of the command line does not break chaos)."""
    import importlib  # noqa: PLC0415

    for where in ("stalwart._cli", "stalwart.cli._main"):  # before and after the cli package
        with contextlib.suppress(ImportError, AttributeError):
            found: Callable[[], object] = importlib.import_module(where).console_main
            return found
    from importlib.metadata import entry_points  # noqa: PLC0415 - ~35 ms, the fallback

    for entry in entry_points(group="console_scripts", name="stalwart"):  # pragma: no cover
        return cast("Callable[[], object]", entry.load())
    raise SystemExit("stalwart chaos: the `stalwart` console script is not installed")


def main() -> None:
    raw = os.environ.get(PLAN_VARIABLE)
    if raw:
        install(json.loads(raw))
    sys.argv[0] = "stalwart"
    _console()()


if __name__ == "__main__":
    main()
