"""RetryPolicy, is_transient, call_with_retries and the @retry decorator (sync and async).

No real sleeps: every test that retries runs under ``no_wait``, which records the planned
waits and advances the retry clock by them, so deadlines behave as in real time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stalwart
from stalwart import HttpStatusError, Permanent, RetryPolicy, Transient, UsageError, is_transient
from stalwart._clock import WaitRecorder
from stalwart._errors import ResponseFormatError
from stalwart._retry import RetryStats, acall_with_retries, call_with_retries
from stalwart.instrumentation._events import RetryScheduled
from stalwart.testing import MemoryMetrics, RecordingAlerter, no_wait

FAST = RetryPolicy(attempts=4, initial=0.5, maximum=4.0, deadline=60.0)


class Flaky:
    """A callable that raises the given exceptions in turn, then returns ``result``."""

    def __init__(self, *failures: BaseException, result: object = "done") -> None:
        self.failures = list(failures)
        self.calls = 0
        self.result = result

    def __call__(self) -> object:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.result


class Busy(Transient):
    """A transient error that asks for a wait, like a 503 with Retry-After."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"busy, retry after {retry_after} s")
        self.retry_after = retry_after


# -- RetryPolicy -------------------------------------------------------------------------------


def test_policy_defaults_are_bounded() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.deadline) == (5, 120.0)
    assert [policy.backoff(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, 4.0]
    assert policy.backoff(100) == policy.maximum == 30.0


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"attempts": 0}, "attempts must be an integer >= 1"),
        ({"attempts": True}, "attempts must be an integer >= 1"),
        ({"attempts": 2.5}, "attempts must be an integer >= 1"),
        ({"initial": -1.0}, "initial must be a finite number"),
        ({"maximum": float("inf")}, "maximum must be a finite number"),
        ({"deadline": float("nan")}, "deadline must be a finite number"),
        ({"multiplier": 0.5}, "multiplier must be a finite number >= 1"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1"),
    ],
)
def test_policy_rejects_unbounded_or_nonsense_values(
    options: dict[str, object], problem: str
) -> None:
    with pytest.raises(UsageError, match=problem):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_policy_lists_every_problem_at_once() -> None:
    with pytest.raises(UsageError) as caught:
        RetryPolicy(attempts=0, jitter=2.0)
    assert "attempts" in str(caught.value)
    assert "jitter" in str(caught.value)


def test_policy_is_frozen_and_keyword_only() -> None:
    policy = RetryPolicy(attempts=3)
    with pytest.raises(AttributeError):
        policy.attempts = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]


def test_backoff_survives_overflow() -> None:
    policy = RetryPolicy(initial=1.0, multiplier=1e300, maximum=7.0)
    assert policy.backoff(50) == 7.0


def test_wait_without_jitter_is_the_backoff_and_full_jitter_stays_below_it() -> None:
    exact = RetryPolicy(jitter=0.0)
    assert [exact.wait(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    rng = random.Random(7)
    jittered = [RetryPolicy().wait(3, rng) for _ in range(200)]
    assert all(0.0 <= w <= 2.0 for w in jittered)
    assert min(jittered) < 0.5
    assert max(jittered) > 1.5  # spread over the range, not clustered


# -- is_transient ------------------------------------------------------------------------------


def _httpx_status(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://h/x")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(status))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (Transient("again"), True),
        (Permanent("stop"), False),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (ConnectionRefusedError(), True),
        (ValueError("bad"), False),
        (KeyError("k"), False),
        (KeyboardInterrupt(), False),
        (SystemExit(1), False),
        (HttpStatusError("x", status=503), True),
        (HttpStatusError("x", status=500), True),
        (HttpStatusError("x", status=429), True),
        (HttpStatusError("x", status=425), True),
        (HttpStatusError("x", status=408), True),
        (HttpStatusError("x", status=404), False),
        (HttpStatusError("x", status=400), False),
        (ResponseFormatError("not json"), False),
        (httpx.ReadTimeout("slow"), True),
        (httpx.ConnectError("refused"), True),
        (httpx.RemoteProtocolError("cut"), True),
        (httpx.LocalProtocolError("our bug"), False),
        (_httpx_status(502), True),
        (_httpx_status(429), True),
        (_httpx_status(403), False),
    ],
)
def test_is_transient(exc: BaseException, expected: bool) -> None:
    assert is_transient(exc) is expected


def test_is_transient_does_not_import_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    assert is_transient(RuntimeError("x")) is False
    assert is_transient(TimeoutError()) is True


# -- call_with_retries -------------------------------------------------------------------------


def test_success_first_time_costs_one_call_and_no_wait(no_wait: WaitRecorder) -> None:
    fn = Flaky()
    stats = RetryStats()
    assert call_with_retries(fn, FAST, operation="op", stats=stats) == "done"
    assert (fn.calls, len(no_wait), stats.attempts, stats.stop_reason) == (1, 0, 1, "")


def test_transient_failures_are_retried_then_succeed(no_wait: WaitRecorder) -> None:
    fn = Flaky(Transient("a"), TimeoutError("b"))
    stats = RetryStats()
    assert call_with_retries(fn, FAST, operation="op", stats=stats) == "done"
    assert fn.calls == 3
    assert len(no_wait) == 2
    assert stats.attempts == 3
    assert stats.waits == pytest.approx(no_wait.total)
    assert stats.stop_reason == ""


def test_permanent_failure_is_raised_after_one_call(no_wait: WaitRecorder) -> None:
    error = ValueError("bad input")
    fn = Flaky(error)
    stats = RetryStats()
    with pytest.raises(ValueError, match="bad input") as caught:
        call_with_retries(fn, FAST, operation="op", stats=stats)
    assert caught.value is error
    assert (fn.calls, len(no_wait), stats.stop_reason) == (1, 0, "permanent")


def test_a_permanent_error_after_transient_ones_stops_at_once(no_wait: WaitRecorder) -> None:
    fn = Flaky(Transient("a"), ValueError("b"), Transient("never reached"))
    stats = RetryStats()
    with pytest.raises(ValueError, match="b"):
        call_with_retries(fn, FAST, operation="op", stats=stats)
    assert (fn.calls, len(no_wait), stats.stop_reason) == (2, 1, "permanent")


def test_attempts_are_bounded(no_wait: WaitRecorder) -> None:
    fn = Flaky(*[Transient(str(i)) for i in range(10)])
    stats = RetryStats()
    with pytest.raises(Transient, match="3"):
        call_with_retries(fn, FAST, operation="op", stats=stats)
    assert fn.calls == FAST.attempts == 4
    assert len(no_wait) == 3
    assert stats.stop_reason == "attempts"


def test_a_single_attempt_policy_never_retries(no_wait: WaitRecorder) -> None:
    fn = Flaky(Transient("once"))
    stats = RetryStats()
    with pytest.raises(Transient):
        call_with_retries(fn, RetryPolicy(attempts=1), operation="op", stats=stats)
    assert (fn.calls, len(no_wait), stats.stop_reason) == (1, 0, "attempts")


def test_permanent_wins_over_any_classifier(no_wait: WaitRecorder) -> None:
    fn = Flaky(Permanent("stop"))
    with pytest.raises(Permanent):
        call_with_retries(fn, FAST, operation="op", classify=lambda _e: True)
    assert fn.calls == 1


def test_keyboard_interrupt_is_never_retried(no_wait: WaitRecorder) -> None:
    fn = Flaky(Transient("a"), KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        call_with_retries(fn, FAST, operation="op", classify=lambda _e: True)
    assert fn.calls == 2


def test_retry_after_attribute_lengthens_the_wait(no_wait: WaitRecorder) -> None:
    fn = Flaky(Busy(9.0))
    call_with_retries(fn, FAST, operation="op")
    assert no_wait.waits[0] >= 9.0


def test_a_wait_beyond_the_deadline_fails_at_once(
    no_wait: WaitRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    fn = Flaky(Busy(500.0))
    stats = RetryStats()
    with pytest.raises(Busy):
        call_with_retries(fn, FAST, operation="op", stats=stats)
    assert fn.calls == 1
    assert no_wait.waits == []
    assert stats.stop_reason == "deadline"
    assert stats.retry_after == 500.0
    assert "would cross the 60 s retry deadline" in caplog.text
    assert "Retry-After" in caplog.text


def test_nothing_multiplies_attempts(no_wait: WaitRecorder) -> None:
    """An error an inner loop gave up on is not retried by an outer one."""
    inner = Flaky(*[Transient(str(i)) for i in range(20)])

    def outer() -> object:
        return call_with_retries(inner, RetryPolicy(attempts=3), operation="inner")

    stats = RetryStats()
    with pytest.raises(Transient):
        call_with_retries(outer, RetryPolicy(attempts=3), operation="outer", stats=stats)
    assert inner.calls == 3  # not 9
    assert stats.stop_reason == "permanent"


def test_an_inner_single_attempt_leaves_retrying_to_the_outer_loop(no_wait: WaitRecorder) -> None:
    inner = Flaky(Transient("a"), Transient("b"))

    def outer() -> object:
        return call_with_retries(inner, RetryPolicy(attempts=1), operation="inner")

    assert call_with_retries(outer, RetryPolicy(attempts=3), operation="outer") == "done"
    assert inner.calls == 3


def test_each_retry_is_logged_with_attempt_and_wait(
    no_wait: WaitRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stalwart.retry")
    call_with_retries(Flaky(Transient("flap")), FAST, operation="sync_orders")
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 1
    message = retries[0].getMessage()
    assert message.startswith("sync_orders -> Transient: flap (attempt 1/4), retrying in ")
    assert retries[0].levelno == logging.WARNING
    assert retries[0].__dict__["retry_attempt"] == 1
    assert retries[0].__dict__["wait_s"] == pytest.approx(no_wait.waits[0], abs=1e-3)


def test_seeded_rng_makes_the_schedule_reproducible(no_wait: WaitRecorder) -> None:
    for _ in range(2):
        fn = Flaky(Transient("a"), Transient("b"), Transient("c"))
        call_with_retries(fn, FAST, operation="op", rng=random.Random(42))
    first, second = no_wait.waits[:3], no_wait.waits[3:]
    assert first == second
    expected = random.Random(42)
    assert first == [FAST.wait(n, expected) for n in (1, 2, 3)]


# -- property tests: the backoff schedule ------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 12),
    initial=st.floats(0.0, 5.0),
    maximum=st.floats(0.0, 20.0),
    multiplier=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 1.0),
    deadline=st.floats(0.0, 60.0),
)


def _always_failing(retry_after: float | None) -> Flaky:
    failures = [Busy(retry_after) if retry_after is not None else Transient("x")] * 20
    return Flaky(*failures)


@settings(max_examples=150, deadline=None)
@given(policy=policies, seed=st.integers(0, 2**32 - 1))
def test_schedule_is_bounded(policy: RetryPolicy, seed: int) -> None:
    fn = _always_failing(None)
    stats = RetryStats()
    with no_wait() as recorder, pytest.raises(Transient):
        call_with_retries(fn, policy, operation="op", stats=stats, rng=random.Random(seed))
    waits = recorder.waits
    assert len(waits) <= policy.attempts - 1
    assert fn.calls == len(waits) + 1
    assert all(0.0 <= w <= policy.maximum for w in waits)
    assert sum(waits) <= policy.deadline
    assert stats.stop_reason in ("attempts", "deadline")
    if stats.stop_reason == "attempts":
        assert fn.calls == policy.attempts


@settings(max_examples=150, deadline=None)
@given(
    policy=policies,
    seed=st.integers(0, 2**32 - 1),
    retry_after=st.floats(0.0, 30.0),
)
def test_retry_after_never_shortens_and_never_oversleeps(
    policy: RetryPolicy, seed: int, retry_after: float
) -> None:
    fn = _always_failing(retry_after)
    with no_wait() as recorder, pytest.raises(Busy):
        call_with_retries(fn, policy, operation="op", rng=random.Random(seed))
    waits = recorder.waits
    expected = random.Random(seed)
    assert len(waits) <= policy.attempts - 1
    assert sum(waits) <= policy.deadline
    for n, wait in enumerate(waits, start=1):
        backoff = policy.wait(n, expected)
        assert wait >= retry_after
        assert wait == max(backoff, retry_after)  # never shorter than the backoff either


# -- the @retry decorator ----------------------------------------------------------------------


def test_decorator_forms(no_wait: WaitRecorder) -> None:
    calls: list[str] = []

    @stalwart.retry
    def bare() -> str:
        calls.append("bare")
        if len(calls) < 2:
            raise Transient("again")
        return "ok"

    @stalwart.retry()
    def empty() -> str:
        calls.append("empty")
        return "ok"

    @stalwart.retry(RetryPolicy(attempts=2))
    def bounded() -> str:
        calls.append("bounded")
        raise ConnectionResetError("peer")

    assert bare() == "ok"
    assert empty() == "ok"
    with pytest.raises(ConnectionResetError):
        bounded()
    assert calls == ["bare", "bare", "empty", "bounded", "bounded"]
    assert bare.__name__ == "bare"  # functools.wraps


def test_decorator_rejects_a_non_policy() -> None:
    with pytest.raises(UsageError, match="RetryPolicy"):
        stalwart.retry(3)  # type: ignore[call-overload]


def test_value_error_inside_retry_fails_after_one_call(no_wait: WaitRecorder) -> None:
    calls = 0

    @stalwart.retry(FAST)
    def parse() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not a number: 'abc'")

    with pytest.raises(ValueError, match="not a number"):
        parse()
    assert calls == 1
    assert len(no_wait) == 0


def test_on_replaces_the_classifier(no_wait: WaitRecorder) -> None:
    calls = 0

    @stalwart.retry(FAST, on=lambda exc: isinstance(exc, KeyError))
    def lookup() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise KeyError("not yet")
        if calls == 3:
            raise TimeoutError("transient by default, not by this classifier")
        return "found"

    with pytest.raises(TimeoutError):
        lookup()
    assert calls == 3
    assert len(no_wait) == 2


def test_async_decorator_retries_with_async_sleep(no_wait: WaitRecorder) -> None:
    calls = 0

    @stalwart.retry(FAST)
    async def fetch(value: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls < 3:
            raise Transient("again")
        return value * 2

    assert asyncio.run(fetch(21)) == 42
    assert calls == 3
    assert len(no_wait) == 2
    assert asyncio.iscoroutinefunction(fetch)


def test_async_paths(no_wait: WaitRecorder) -> None:
    async def succeed() -> str:
        return "fine"

    async def permanent() -> str:
        raise ValueError("no")

    async def endless() -> str:
        raise Transient("down")

    stats = RetryStats()
    assert asyncio.run(acall_with_retries(succeed, FAST, operation="a", stats=stats)) == "fine"
    assert stats.attempts == 1
    with pytest.raises(ValueError, match="no"):
        asyncio.run(acall_with_retries(permanent, FAST, operation="a", stats=stats))
    assert (stats.attempts, stats.stop_reason) == (1, "permanent")
    with pytest.raises(Transient):
        asyncio.run(acall_with_retries(endless, FAST, operation="a", stats=stats))
    assert (stats.attempts, stats.stop_reason) == (4, "attempts")
    assert len(no_wait) == 3
    assert asyncio.run(acall_with_retries(succeed, FAST, operation="a", stats=stats)) == "fine"
    assert (stats.attempts, stats.stop_reason, stats.waits) == (1, "", 0.0)  # reset per call


def test_retries_inside_a_step_are_counted(root: Path, no_wait: WaitRecorder) -> None:
    metrics = MemoryMetrics()
    pipeline = stalwart.Pipeline("t", root=root, alerters=[RecordingAlerter()], metrics=[metrics])
    calls = 0

    @stalwart.retry(FAST)
    def flaky_source() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Transient("source busy")
        return 7

    @pipeline.step()
    def compute(ctx: stalwart.Context) -> None:
        value = flaky_source()
        assert calls == 3
        ctx.write_json("value.json", value)

    pipeline.run(run_id="r1")
    marker = pipeline.checkpoints("r1").read_marker("compute")
    assert marker is not None
    assert (marker.retries, marker.attempts) == (2, 3)
    scheduled = [e for e in metrics.events if isinstance(e, RetryScheduled)]
    assert [(e.step, e.attempt, e.reason) for e in scheduled] == [
        ("compute", 1, "transient"),
        ("compute", 2, "transient"),
    ]
    assert scheduled[0].operation.endswith("flaky_source")
    assert [e.wait_s for e in scheduled] == no_wait.waits


def test_async_retries_inside_a_step_are_counted(root: Path, no_wait: WaitRecorder) -> None:
    pipeline = stalwart.Pipeline("t", root=root, alerters=[RecordingAlerter()], metrics=[])
    calls = 0

    @stalwart.retry(FAST)
    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 2:
            raise TimeoutError("slow")
        return calls

    @pipeline.step()
    def gather(ctx: stalwart.Context) -> None:
        ctx.write_json("n.json", asyncio.run(flaky()))

    pipeline.run(run_id="r1")
    marker = pipeline.checkpoints("r1").read_marker("gather")
    assert marker is not None
    assert (marker.retries, marker.attempts) == (1, 2)


def test_retry_log_inside_a_step_names_the_step(
    root: Path, no_wait: WaitRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stalwart")
    pipeline = stalwart.Pipeline("t", root=root, alerters=[RecordingAlerter()], metrics=[])
    flaky = Flaky(Transient("flap"))

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        call_with_retries(flaky, FAST, operation="GET http://api/orders")

    pipeline.run(run_id="r1")
    assert "fetch: GET http://api/orders -> Transient: flap (attempt 1/4), retrying in" in (
        caplog.text
    )


def test_retry_takes_policy_as_a_keyword() -> None:
    calls: list[int] = []

    @stalwart.retry(policy=stalwart.RetryPolicy(attempts=3, initial=0.0, maximum=0.0))
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("blip")
        return "ok"

    with no_wait():
        assert flaky() == "ok"
    assert len(calls) == 3


def test_alert_counts_the_attempts_of_a_retried_function(root: Path) -> None:
    alerter = RecordingAlerter()
    pipeline = stalwart.Pipeline("a", root=root, alerters=[alerter])

    @stalwart.retry(stalwart.RetryPolicy(attempts=3))
    def always_down() -> None:
        raise TimeoutError("down")

    @pipeline.step()
    def fetch(ctx: stalwart.Context) -> None:
        always_down()

    with no_wait(), pytest.raises(TimeoutError):
        pipeline.run(run_id="r1")
    alert = alerter.last
    assert alert.attempts == 3
    assert alert.message == "down"
    assert alert.duration == alert.duration_s
