"""Metrics: the events-to-metrics mapping (MemoryMetrics), and choosing sinks by environment."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stalwart import Context, HttpClient, Pipeline, RetryPolicy, UsageError
from stalwart.cli._main import run_cli
from stalwart.instrumentation import MetricsSink, sinks_from_env
from stalwart.instrumentation._core import (
    observations,
)
from stalwart.instrumentation._events import (
    DeadLettered,
    RetryScheduled,
    RunFinished,
    RunStarted,
    StepFailed,
    StepStarted,
    StepSucceeded,
)
from stalwart.instrumentation._prometheus import PrometheusTextfile, Pushgateway
from stalwart.instrumentation._statsd import StatsD
from stalwart.testing import FlakyServer, MemoryMetrics, Reply, WaitRecorder


@pytest.fixture
def http() -> Iterator[HttpClient]:
    with HttpClient(retry=RetryPolicy(attempts=6)) as client:
        yield client


def flaky_pipeline(
    root: Path,
    server: FlakyServer,
    metrics: list[MetricsSink],
    http: HttpClient,
    *,
    fail_report: bool = False,
) -> Pipeline:
    """fetch: GET /orders (retried); store: keeps one dead letter; report: may raise."""
    pipeline = Pipeline("daily", root=root, metrics=metrics, http=http)

    @pipeline.step
    def fetch(ctx: Context) -> None:
        ctx.http.get(server.url("/orders"))

    @pipeline.step
    def store(ctx: Context) -> None:
        ctx.dead_letter({"id": 7}, reason="row 7 has no customer")

    @pipeline.step
    def report(ctx: Context) -> None:
        if fail_report:
            raise RuntimeError("the report template is missing")

    return pipeline


def test_memory_metrics_count_what_the_run_did(
    root: Path, http: HttpClient, no_wait: WaitRecorder
) -> None:
    metrics = MemoryMetrics()
    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 3, then=Reply(json=[]))
        pipeline = flaky_pipeline(root, server, [metrics], http)
        pipeline.run(run_id="r1")
        pipeline.run(run_id="r1")  # every step done: all skipped
        calls = server.count("GET", "/orders")

    assert calls == 4
    assert metrics.retries() == calls - 1 == len(no_wait.waits)
    assert metrics.retries(step="fetch", reason="status_503") == 3
    assert metrics.retries(step="store") == 0
    assert metrics.step_runs("fetch", "success") == 1
    assert metrics.step_runs(outcome="skipped") == 3
    assert metrics.step_runs(outcome="failure") == 0
    assert metrics.dead_letters() == metrics.dead_letters("store") == 1
    finished = metrics.events_of(RunFinished)
    assert [f.outcome for f in finished] == ["success", "success"]
    assert metrics.last_success == finished[-1].finished_at
    fetched = metrics.events_of(StepSucceeded)[0]
    assert metrics.last_duration("fetch") == fetched.duration_s
    assert metrics.last_duration("nope") is None
    assert [type(e) for e in metrics.events[:2]] == [RunStarted, StepStarted]
    assert "events" in repr(metrics)
    metrics.clear()
    assert metrics.events == []
    assert metrics.last_success is None


def test_a_failed_run_counts_a_failure_and_no_success(
    root: Path, http: HttpClient, no_wait: WaitRecorder
) -> None:
    metrics = MemoryMetrics()
    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 0)
        pipeline = flaky_pipeline(root, server, [metrics], http, fail_report=True)
        with pytest.raises(RuntimeError):
            pipeline.run(run_id="r1")
    assert metrics.step_runs("report", "failure") == 1
    assert metrics.step_runs("fetch", "success") == 1
    assert metrics.last_success is None
    failed = metrics.events_of(StepFailed)
    assert len(failed) == 1
    assert metrics.last_duration("report") == failed[0].duration_s


def test_an_interrupted_step_counts_as_interrupted(root: Path) -> None:
    metrics = MemoryMetrics()
    pipeline = Pipeline("daily", root=root, metrics=[metrics])

    @pipeline.step
    def wait_forever(ctx: Context) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.run(run_id="r1")
    assert metrics.step_runs("wait_forever", "interrupted") == 1
    assert metrics.events_of(RunFinished)[0].outcome == "interrupted"
    assert metrics.last_success is None


def test_memory_metrics_is_thread_safe() -> None:
    metrics = MemoryMetrics()
    event = RetryScheduled(
        pipeline="p",
        run_id="r",
        step="s",
        operation="GET /",
        reason="timeout",
        attempt=1,
        attempts=3,
        wait_s=0.5,
    )
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(500):
            metrics.handle(event)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(metrics.events) == 4000
    assert metrics.retries(reason="timeout") == 4000
    assert metrics.retries(reason="connect") == 0


def test_only_a_successful_run_sets_last_success() -> None:
    def finished(outcome: str) -> RunFinished:
        return RunFinished(
            pipeline="p",
            run_id="r",
            outcome=outcome,  # type: ignore[arg-type]
            duration_s=1.0,
            ran=1,
            skipped=0,
            failed=0,
            finished_at=1234.5,
        )

    assert [o.value for o in observations(finished("success"))] == [1234.5]
    assert observations(finished("failure")) == []
    assert observations(finished("interrupted")) == []
    dead = DeadLettered(pipeline="p", run_id="r", step="s", envelope_id="x", reason="free text")
    # The dead letter's reason is free text: never a label (unbounded cardinality).
    assert [o.labels for o in observations(dead)] == [("p", "s")]


# -- choosing sinks by environment -----------------------------------------------------------


def test_no_variable_no_sink() -> None:
    assert sinks_from_env({}) == []
    assert sinks_from_env({"STALWART_STATSD": " ", "STALWART_PUSHGATEWAY": ""}) == []


def test_each_variable_names_its_sink(tmp_path: Path) -> None:
    sinks = sinks_from_env(
        {
            "STALWART_PROM_TEXTFILE": str(tmp_path / "stalwart.prom"),
            "STALWART_PUSHGATEWAY": "https://ops:s3cret-pass@push.example:9091/gw/",
            "STALWART_STATSD": "[::1]:8125",
        }
    )
    textfile, gateway, statsd = sinks
    assert isinstance(textfile, PrometheusTextfile)
    assert textfile.path == tmp_path / "stalwart.prom"
    assert isinstance(gateway, Pushgateway)
    assert gateway.job == "stalwart"
    assert gateway.timeout <= 10, "a dead gateway must not hold the run for long"
    assert "s3cret-pass" not in repr(gateway)
    assert "push.example:9091" in repr(gateway)
    assert isinstance(statsd, StatsD)
    assert (statsd.host, statsd.port) == ("::1", 8125)
    assert repr(statsd) == "StatsD('::1', 8125, prefix='stalwart')"
    assert repr(textfile) == f"PrometheusTextfile({str(tmp_path / 'stalwart.prom')!r})"


def test_the_default_environment_is_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STALWART_STATSD", "localhost:8125")
    (sink,) = sinks_from_env()
    assert isinstance(sink, StatsD)
    assert sink.host == "localhost"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("STALWART_STATSD", "nonsense", "host:port"),
        ("STALWART_STATSD", "statsd:", "host:port"),
        ("STALWART_STATSD", ":8125", "host:port"),
        ("STALWART_STATSD", "statsd:eighty", "host:port"),
        ("STALWART_STATSD", "statsd:70000", "1-65535"),
        ("STALWART_STATSD", "statsd:0", "1-65535"),
        ("STALWART_STATSD", "stats d:8125", "host name"),
        ("STALWART_PUSHGATEWAY", "pushgateway:9091", "http://"),
        ("STALWART_PUSHGATEWAY", "ftp://pushgateway:9091", "http://"),
        ("STALWART_PUSHGATEWAY", "http://", "http://"),
        ("STALWART_PUSHGATEWAY", "http://pushgateway:port", "numeric port"),
        ("STALWART_PUSHGATEWAY", "http://[::1", "http://"),
        ("STALWART_PUSHGATEWAY", "http://pushgateway:9091/?x=1", "no query"),
        ("STALWART_PROM_TEXTFILE", "/nonexistent-dir/stalwart.prom", "does not exist"),
        ("STALWART_PROM_TEXTFILE", "{tmp}/stalwart.txt", "must end in .prom"),
        ("STALWART_PROM_TEXTFILE", "{tmp}", "must end in .prom"),
    ],
)
def test_a_malformed_setting_is_a_usage_error_naming_the_variable(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    value = value.replace("{tmp}", str(tmp_path))
    with pytest.raises(UsageError) as caught:
        sinks_from_env({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    assert says in message


def test_a_malformed_gateway_url_never_shows_its_password() -> None:
    with pytest.raises(UsageError) as caught:
        sinks_from_env({"STALWART_PUSHGATEWAY": "ftp://ops:hunter2-secret@pushgateway:9091"})
    assert "hunter2-secret" not in str(caught.value)
    assert "STALWART_PUSHGATEWAY" in str(caught.value)


def test_prometheus_sinks_without_prometheus_client_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now fails
    for variable, value in [
        ("STALWART_PROM_TEXTFILE", str(tmp_path / "s.prom")),
        ("STALWART_PUSHGATEWAY", "http://pushgateway:9091"),
    ]:
        with pytest.raises(UsageError, match=r"pip install 'stalwart\[prometheus\]'") as caught:
            sinks_from_env({variable: value})
        assert str(caught.value).startswith(variable)
    # StatsD needs no dependency.
    assert len(sinks_from_env({"STALWART_STATSD": "localhost:8125"})) == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: StatsD("localhost", True),
        lambda: StatsD("", 8125),
        lambda: StatsD("localhost", 8125, prefix="my prefix"),
        lambda: StatsD("localhost", 8125, prefix="1abc"),
        lambda: Pushgateway("http://pushgateway:9091", job=""),
        lambda: Pushgateway("http://pushgateway:9091", timeout=0),
        lambda: Pushgateway("http://pushgateway:9091", timeout=float("inf")),
        lambda: Pushgateway(None),  # type: ignore[arg-type]
    ],
)
def test_sinks_made_in_code_check_their_options(make: object) -> None:
    with pytest.raises(UsageError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STALWART_STATSD", "nonsense"),
        ("STALWART_PUSHGATEWAY", "pushgateway.example:9091"),
        ("STALWART_PROM_TEXTFILE", "/nonexistent-dir/stalwart.prom"),
    ],
)
def test_the_cli_fails_fast_with_exit_2_and_runs_no_step(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
) -> None:
    ran: list[str] = []
    pipeline = Pipeline("daily", root=root)

    @pipeline.step
    def fetch(ctx: Context) -> None:
        ran.append("fetch")

    monkeypatch.setenv(variable, value)
    code = run_cli(["run", "--run-id", "r1", "--log-format", "text"], pipeline=pipeline)
    assert code == 2
    assert ran == []
    assert not pipeline.run_dir("r1").exists(), "nothing is touched before the check"
    assert f"error: {variable}=" in capsys.readouterr().err
