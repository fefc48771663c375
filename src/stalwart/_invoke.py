"""Calling a step function once: await it if it is a coroutine, interrupt it after its
``timeout``, and refuse a returned value (a step writes what it produces through ``ctx``)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator

from ._errors import StepTimeout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["call_step"]

_COROUTINE_FLAG = 0x80  # CPython's inspect.CO_COROUTINE, without importing inspect


def call_step(
    fn: Callable[[Any], object], ctx: object, *, step: str, timeout: float | None
) -> None:
    """Call ``fn(ctx)`` once. A coroutine (an ``async def`` step) is run to completion in an
    event loop of its own. After ``timeout`` seconds the step is interrupted with
    ``StepTimeout``. A result other than None raises ``TypeError``: a step that returns a
    value (or an un-awaited coroutine) must never be marked done as if it had written it."""
    code = getattr(fn, "__code__", None)
    if timeout is not None and code is not None and code.co_flags & _COROUTINE_FLAG:
        result: object = _run_coroutine(fn(ctx), step, timeout)  # type: ignore[arg-type]
    else:
        with _interrupt_after(step, timeout):
            result = fn(ctx)
            if _is_coroutine(result):
                result = _run_coroutine(result, step, None)  # type: ignore[arg-type]
    if result is not None:
        shown = repr(result)
        raise TypeError(
            f"step {step} returned {type(result).__name__} "
            f"({shown[:60]}{'...' if len(shown) > 60 else ''}); a step returns None and "
            f"writes what it produces with ctx.write_json, ctx.write_text or ctx.write_bytes"
        )


def _is_coroutine(value: object) -> bool:
    return type(value).__name__ == "coroutine" or (
        hasattr(value, "__await__") and hasattr(value, "send") and hasattr(value, "throw")
    )


def _run_coroutine(
    coroutine: Coroutine[Any, Any, object], step: str, timeout: float | None
) -> object:
    import asyncio  # noqa: PLC0415 - only async steps pay for asyncio

    async def bounded() -> object:
        if timeout is None:
            return await coroutine
        try:
            return await asyncio.wait_for(coroutine, timeout)
        except TimeoutError:
            raise _timed_out(step, timeout) from None

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    # The caller is itself inside an event loop (``pipeline.run()`` from async code): run
    # the step's coroutine in a thread with a loop of its own.
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    with ThreadPoolExecutor(1, thread_name_prefix=f"stalwart-{step}") as pool:
        return pool.submit(asyncio.run, bounded()).result()


def _timed_out(step: str, timeout: float) -> StepTimeout:
    return StepTimeout(
        f"step {step} ran longer than its timeout of {timeout:g} s and was interrupted",
        step=step,
        timeout=timeout,
    )


@contextlib.contextmanager
def _interrupt_after(step: str, timeout: float | None) -> Iterator[None]:
    """Raise ``StepTimeout`` in this thread if the block runs longer than ``timeout``.

    In the main thread, a ``SIGALRM`` timer: it also interrupts a blocking call (a socket
    read, a sleep). In another thread, the exception is set on the thread (CPython's
    ``PyThreadState_SetAsyncExc``): it is raised at the step's next Python instruction.
    """
    if timeout is None:
        yield
        return
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        with _alarm(step, timeout):
            yield
        return
    with _thread_interrupt(step, timeout):
        yield


@contextlib.contextmanager
def _alarm(step: str, timeout: float) -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise _timed_out(step, timeout)

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _thread_interrupt(step: str, timeout: float) -> Iterator[None]:
    import ctypes  # noqa: PLC0415 - only timeouts outside the main thread

    target = ctypes.c_ulong(threading.get_ident())
    guard = threading.Lock()
    state = {"running": True, "fired": False}

    def fire() -> None:
        with guard:
            if state["running"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, ctypes.py_object(StepTimeout))

    timer = threading.Timer(timeout, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except StepTimeout as exc:
        if exc.step:  # a StepTimeout of the step's own (a nested step's), not the injected one
            raise
        raise _timed_out(step, timeout) from None
    finally:
        with guard:
            state["running"] = False
            timer.cancel()
            if state["fired"]:  # fired but not yet raised: take it back
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, None)
