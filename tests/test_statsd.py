"""StatsD: a real UDP socket on 127.0.0.1 receives what a run sends."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stalwart import Context, HttpClient, Pipeline, RetryPolicy
from stalwart.instrumentation._core import observations
from stalwart.instrumentation._events import RetryScheduled, RunFinished, StepSkipped, StepSucceeded
from stalwart.instrumentation._statsd import StatsD
from stalwart.testing import FlakyServer, MemoryMetrics, Reply, WaitRecorder


class Receiver:
    """A UDP socket bound on loopback. Datagrams sent to it on loopback are in its buffer by
    the time ``sendto`` returns, so reading until empty needs no waiting."""

    def __init__(self, family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1"):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def lines(self) -> list[str]:
        received = []
        while True:
            try:
                received.append(self.sock.recv(65536).decode("utf-8"))
            except BlockingIOError:
                return received


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    udp = Receiver()
    try:
        yield udp
    finally:
        udp.sock.close()


@pytest.fixture
def http() -> Iterator[HttpClient]:
    with HttpClient(retry=RetryPolicy(attempts=6)) as client:
        yield client


def counts(lines: list[str], name: str, **tags: str) -> int:
    """Sum of the counter ``name`` over the lines whose tags include ``tags``."""
    total = 0
    for line in lines:
        metric, _, rest = line.partition(":")
        number, kind, tag_part = rest.split("|")
        got = dict(tag.split(":", 1) for tag in tag_part.removeprefix("#").split(","))
        if metric == name and kind == "c" and all(got.get(k) == v for k, v in tags.items()):
            total += int(number)
    return total


def test_statsd_retries_equal_the_flaky_servers(
    root: Path, receiver: Receiver, http: HttpClient, no_wait: WaitRecorder
) -> None:
    memory = MemoryMetrics()
    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 3, then=Reply(json=[]))
        server.fail_then("GET", "/customers", 1, status=429)
        pipeline = Pipeline(
            "daily", root=root, http=http, metrics=[memory, StatsD("127.0.0.1", receiver.port)]
        )

        @pipeline.step
        def fetch(ctx: Context) -> None:
            ctx.http.get(server.url("/orders"))
            ctx.http.get(server.url("/customers"))

        pipeline.run(run_id="r1")
        retries_seen = server.count("GET", "/orders") + server.count("GET", "/customers") - 2

    lines = receiver.lines()
    assert retries_seen == 4
    assert counts(lines, "stalwart.retries", pipeline="daily", step="fetch") == retries_seen
    assert counts(lines, "stalwart.retries", reason="status_429") == 1
    assert counts(lines, "stalwart.step_runs", step="fetch", outcome="success") == 1
    duration_ms = memory.last_duration("fetch")
    assert duration_ms is not None
    assert f"stalwart.step_duration:{duration_ms * 1000:.3f}|ms|#pipeline:daily,step:fetch" in lines
    assert lines[-1] == (
        f"stalwart.last_success_timestamp:{memory.last_success:.3f}|g|#pipeline:daily"
    )


def test_statsd_lines_use_dogstatsd_tags_and_the_prefix(receiver: Receiver) -> None:
    sink = StatsD("127.0.0.1", receiver.port, prefix="acme.etl")
    common = {"pipeline": "daily", "run_id": "r1", "step": "fetch"}
    sink.handle(
        RetryScheduled(
            **common,
            operation="GET http://api/orders",
            reason="status_503",
            attempt=1,
            attempts=5,
            wait_s=0.25,
        )
    )
    sink.handle(StepSkipped(**common))
    sink.handle(StepSucceeded(**common, duration_s=1.5, attempts=2, retries=1))
    sink.close()
    sink.close()  # idempotent
    assert receiver.lines() == [
        "acme.etl.retries:1|c|#pipeline:daily,step:fetch,reason:status_503",
        "acme.etl.step_runs:1|c|#pipeline:daily,step:fetch,outcome:skipped",
        "acme.etl.step_runs:1|c|#pipeline:daily,step:fetch,outcome:success",
        "acme.etl.step_duration:1500|ms|#pipeline:daily,step:fetch",
    ]
    unprefixed = StatsD("127.0.0.1", receiver.port, prefix="")
    (seen,) = observations(StepSkipped(**common))
    assert unprefixed.line(seen) == "step_runs:1|c|#pipeline:daily,step:fetch,outcome:skipped"


def test_statsd_reopens_its_socket_for_the_next_run(root: Path, receiver: Receiver) -> None:
    pipeline = Pipeline("daily", root=root, metrics=[StatsD("127.0.0.1", receiver.port)])

    @pipeline.step
    def fetch(ctx: Context) -> None:
        pass

    pipeline.run(run_id="r1")
    pipeline.run(run_id="r2")
    lines = receiver.lines()
    assert counts(lines, "stalwart.step_runs", outcome="success") == 2
    assert sum(line.startswith("stalwart.last_success_timestamp:") for line in lines) == 2


def test_statsd_over_ipv6(root: Path) -> None:
    try:
        udp = Receiver(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with udp.sock:
        pipeline = Pipeline("daily", root=root, metrics=[StatsD("[::1]", udp.port)])

        @pipeline.step
        def fetch(ctx: Context) -> None:
            pass

        pipeline.run(run_id="r1")
        assert counts(udp.lines(), "stalwart.step_runs", step="fetch") == 1


def test_an_unresolvable_statsd_host_is_logged_once_and_the_run_goes_on(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = Pipeline("daily", root=root, metrics=[StatsD("statsd.stalwart-test.invalid", 8125)])
    ran = []
    for name in ("one", "two", "three"):

        @pipeline.step(name=name)
        def step(ctx: Context, name: str = name) -> None:
            ran.append(name)

    result = pipeline.run(run_id="r1")
    assert result.ran == ("one", "two", "three")
    assert ran == ["one", "two", "three"]
    warnings = [r for r in caplog.records if r.name == "stalwart.metrics"]
    assert len(warnings) == 1, "said once, not once per event"
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].exc_info is not None
    assert "statsd.stalwart-test.invalid:8125" in warnings[0].getMessage()


def test_a_statsd_send_error_is_logged_once_per_run(caplog: pytest.LogCaptureFixture) -> None:
    # Sending to the broadcast address without SO_BROADCAST fails with EACCES: a real
    # send error on every datagram.
    sink = StatsD("255.255.255.255", 8125)
    caplog.set_level(logging.DEBUG, logger="stalwart.metrics")
    skipped = StepSkipped(pipeline="daily", run_id="r1", step="fetch")
    finished = RunFinished(
        pipeline="daily",
        run_id="r1",
        outcome="success",
        duration_s=1.0,
        ran=0,
        skipped=3,
        failed=0,
        finished_at=1.0,
    )
    for _ in range(3):
        sink.handle(skipped)
    sink.handle(finished)
    sink.handle(skipped)  # next run: said again
    sink.close()
    levels = [r.levelno for r in caplog.records if r.name == "stalwart.metrics"]
    assert levels == [logging.WARNING] + [logging.DEBUG] * 3 + [logging.WARNING]
