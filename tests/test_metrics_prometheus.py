"""Prometheus sinks against Prometheus' own tools: ``promtool check metrics`` validates the
textfile, and a real ``prometheus-pushgateway`` on a loopback port receives the pushes.

Both binaries come from Debian (``apt-get install prometheus prometheus-pushgateway``); where
they are missing these tests skip, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stalwart import Context, HttpClient, Pipeline, RetryPolicy
from stalwart.instrumentation import MetricsSink
from stalwart.instrumentation._prometheus import PrometheusTextfile, Pushgateway
from stalwart.testing import FlakyServer, MemoryMetrics, Reply, WaitRecorder

INSTALL = "apt-get install prometheus prometheus-pushgateway"

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def need(binary: str) -> str:
    """The path of ``binary``; skip (fail under ``CI=true``) if it is not installed."""
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed; on Debian/Ubuntu: {INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must have Prometheus' tools: {message}")
        pytest.skip(message)
    return path


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def series(text: str, **match: str) -> Series:
    """``(sample name, labels) -> value`` for the samples of ``text`` whose labels match."""
    found: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("stalwart_") and all(
                sample.labels.get(k) == v for k, v in match.items()
            ):
                labels = {k: v for k, v in sample.labels.items() if k not in ("job", "instance")}
                found[(sample.name, frozenset(labels.items()))] = sample.value
    return found


def value(found: Series, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


@pytest.fixture
def http() -> Iterator[HttpClient]:
    with HttpClient(retry=RetryPolicy(attempts=6)) as client:
        yield client


def pipeline_with(
    root: Path, sinks: list[MetricsSink], http: HttpClient, url: str, *, name: str = "daily"
) -> tuple[Pipeline, dict[str, bool]]:
    """fetch: GET ``url`` (retried); report: raises while ``switches["fail"]``."""
    switches = {"fail": False}
    pipeline = Pipeline(name, root=root, metrics=sinks, http=http)

    @pipeline.step
    def fetch(ctx: Context) -> None:
        ctx.http.get(url)

    @pipeline.step
    def report(ctx: Context) -> None:
        if switches["fail"]:
            raise RuntimeError("report template missing")

    return pipeline, switches


# -- node_exporter textfile ----------------------------------------------------------------


@pytest.fixture
def textfile(tmp_path: Path) -> Path:
    directory = tmp_path / "textfile_collector"
    directory.mkdir()
    return directory / "stalwart.prom"


def test_textfile_retries_equal_the_flaky_servers_and_promtool_accepts_it(
    root: Path, textfile: Path, http: HttpClient, no_wait: WaitRecorder
) -> None:
    memory = MemoryMetrics()
    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 3, then=Reply(json=[]))
        pipeline, _ = pipeline_with(
            root, [memory, PrometheusTextfile(textfile)], http, server.url("/orders")
        )
        pipeline.run(run_id="r1")
        retries_seen = server.count("GET", "/orders") - 1

    text = textfile.read_text()
    check = promtool_check(text)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout + check.stderr == "", "promtool lint found problems"
    found = series(text)
    assert retries_seen == 3
    assert (
        value(found, "stalwart_retries_total", pipeline="daily", step="fetch", reason="status_503")
        == retries_seen
    )
    assert (
        value(found, "stalwart_step_runs_total", pipeline="daily", step="fetch", outcome="success")
        == 1
    )
    assert value(found, "stalwart_step_duration_seconds", pipeline="daily", step="fetch") == (
        memory.last_duration("fetch")
    )
    assert value(found, "stalwart_last_success_timestamp_seconds", pipeline="daily") == (
        memory.last_success
    )
    assert sorted(p.name for p in textfile.parent.iterdir()) == [
        ".stalwart.prom.lock",
        "stalwart.prom",
    ], "no temp file left, nothing else node_exporter would read"


def test_textfile_counters_carry_over_and_a_failed_run_keeps_the_last_success(
    root: Path, textfile: Path, http: HttpClient, no_wait: WaitRecorder
) -> None:
    memory = MemoryMetrics()
    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 2)
        pipeline, switches = pipeline_with(
            root, [memory, PrometheusTextfile(textfile)], http, server.url("/orders")
        )
        pipeline.run(run_id="monday")
        succeeded_at = memory.last_success
        server.fail_then("GET", "/orders", 1)
        switches["fail"] = True
        with pytest.raises(RuntimeError):
            pipeline.run(run_id="tuesday")
        calls = server.count("GET", "/orders")

    text = textfile.read_text()
    assert promtool_check(text).returncode == 0
    found = series(text, pipeline="daily")
    assert (
        value(found, "stalwart_retries_total", pipeline="daily", step="fetch", reason="status_503")
        == (calls - 2)
        == 3
    )
    assert (
        value(found, "stalwart_step_runs_total", pipeline="daily", step="fetch", outcome="success")
        == 2
    )
    assert (
        value(found, "stalwart_step_runs_total", pipeline="daily", step="report", outcome="success")
        == 1
    )
    assert (
        value(found, "stalwart_step_runs_total", pipeline="daily", step="report", outcome="failure")
        == 1
    )
    assert succeeded_at is not None
    assert value(found, "stalwart_last_success_timestamp_seconds", pipeline="daily") == succeeded_at


def test_pipelines_sharing_a_textfile_keep_each_others_series(
    root: Path, textfile: Path, http: HttpClient, no_wait: WaitRecorder
) -> None:
    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 0)
        sink = PrometheusTextfile(textfile)
        for name in ("daily", "hourly", "daily"):
            pipeline, _ = pipeline_with(root, [sink], http, server.url("/orders"), name=name)
            pipeline.run(run_id="r1", force=True)
    found = series(textfile.read_text())
    runs = "stalwart_step_runs_total"
    assert value(found, runs, pipeline="daily", step="fetch", outcome="success") == 2
    assert value(found, runs, pipeline="hourly", step="fetch", outcome="success") == 1
    assert value(found, "stalwart_last_success_timestamp_seconds", pipeline="hourly") is not None


def test_an_unparseable_textfile_is_replaced_and_logged(
    root: Path, textfile: Path, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    textfile.write_text("this is {not prometheus\n")
    with FlakyServer() as server:
        pipeline, _ = pipeline_with(root, [PrometheusTextfile(textfile)], http, server.url("/ok"))
        server.fail_then("GET", "/ok", 0)
        pipeline.run(run_id="r1")
    assert promtool_check(textfile.read_text()).returncode == 0
    assert "is not Prometheus text" in caplog.text


def test_a_textfile_that_cannot_be_written_does_not_fail_the_run(
    root: Path, textfile: Path, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    sink = PrometheusTextfile(textfile)
    textfile.parent.rmdir()  # the collector directory went away after start
    with FlakyServer() as server:
        server.fail_then("GET", "/ok", 0)
        pipeline, _ = pipeline_with(root, [sink], http, server.url("/ok"))
        result = pipeline.run(run_id="r1")
    assert result.ran == ("fetch", "report")
    warnings = [r for r in caplog.records if r.name == "stalwart.metrics"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].exc_info is not None
    assert str(textfile) in warnings[0].getMessage()


# -- Pushgateway -----------------------------------------------------------------------------


class Gateway:
    """A real prometheus-pushgateway on 127.0.0.1, on a port of its own choosing."""

    def __init__(self, tmp_path: Path) -> None:
        self.process = subprocess.Popen(
            [
                need("prometheus-pushgateway"),
                "--web.listen-address=127.0.0.1:0",
                f"--persistence.file={tmp_path / 'pushgateway.data'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        self.log: list[str] = []
        for line in self.process.stderr:  # blocks until it listens (or exits)
            self.log.append(line)
            listening = re.search(r'msg="Listening on" address=127\.0\.0\.1:(\d+)', line)
            if listening:
                self.url = f"http://127.0.0.1:{listening.group(1)}"
                break
        else:
            raise RuntimeError("pushgateway did not start:\n" + "".join(self.log))
        self._drain = threading.Thread(target=self.log.extend, args=(self.process.stderr,))
        self._drain.start()

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:  # noqa: S310
            return str(response.read().decode("utf-8"))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._drain.join()
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    started = Gateway(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def test_pushgateway_retries_equal_the_flaky_servers(
    root: Path, gateway: Gateway, http: HttpClient, no_wait: WaitRecorder
) -> None:
    memory = MemoryMetrics()
    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 4, then=Reply(json=[]))
        pipeline, _ = pipeline_with(
            root, [memory, Pushgateway(gateway.url)], http, server.url("/orders")
        )
        pipeline.run(run_id="r1")
        retries_seen = server.count("GET", "/orders") - 1

    text = gateway.metrics()
    found = series(text, job="stalwart", pipeline="daily")
    assert retries_seen == 4
    assert (
        value(found, "stalwart_retries_total", pipeline="daily", step="fetch", reason="status_503")
        == retries_seen
    )
    assert (
        value(found, "stalwart_step_runs_total", pipeline="daily", step="report", outcome="success")
        == 1
    )
    assert value(found, "stalwart_last_success_timestamp_seconds", pipeline="daily") == (
        memory.last_success
    )
    assert re.search(r'push_time_seconds\{instance="",job="stalwart",pipeline="daily"\}', text)


def test_pushgateway_a_failed_run_pushes_its_failure_and_keeps_the_last_success(
    root: Path, gateway: Gateway, http: HttpClient, no_wait: WaitRecorder
) -> None:
    memory = MemoryMetrics()
    with FlakyServer() as server:
        server.fail_then("GET", "/orders", 1)
        pipeline, switches = pipeline_with(
            root, [memory, Pushgateway(gateway.url, job="etl")], http, server.url("/orders")
        )
        pipeline.run(run_id="monday")
        succeeded_at = memory.last_success
        switches["fail"] = True
        server.fail_then("GET", "/orders", 2)
        with pytest.raises(RuntimeError):
            pipeline.run(run_id="tuesday")

    found = series(gateway.metrics(), job="etl", pipeline="daily")
    runs = "stalwart_step_runs_total"
    assert value(found, runs, pipeline="daily", step="report", outcome="failure") == 1
    assert value(found, runs, pipeline="daily", step="report", outcome="success") == 1
    assert value(found, runs, pipeline="daily", step="fetch", outcome="success") == 2
    assert (
        value(found, "stalwart_retries_total", pipeline="daily", step="fetch", reason="status_503")
        == 3
    )
    assert succeeded_at is not None
    assert value(found, "stalwart_last_success_timestamp_seconds", pipeline="daily") == succeeded_at


def test_a_dead_pushgateway_does_not_fail_the_run_and_is_logged_once_without_secrets(
    root: Path, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = Pushgateway(f"http://ops:hunter2-secret@127.0.0.1:{port}", timeout=2)
    with FlakyServer() as server:
        server.fail_then("GET", "/ok", 0)
        pipeline, _ = pipeline_with(root, [sink], http, server.url("/ok"))
        result = pipeline.run(run_id="r1")
    assert result.ran == ("fetch", "report")
    warnings = [r for r in caplog.records if r.name == "stalwart.metrics"]
    assert len(warnings) == 1
    assert warnings[0].exc_info is not None
    assert f"http://***@127.0.0.1:{port}" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text


def test_pushgateway_credentials_become_basic_auth(root: Path, http: HttpClient) -> None:
    with FlakyServer() as gateway_stand_in, FlakyServer() as api:
        api.fail_then("GET", "/ok", 0)
        gateway_stand_in.route("GET", "/gw/metrics", Reply(body=""))
        gateway_stand_in.route("POST", "/gw/metrics/job/stalwart/pipeline/daily", Reply())
        url = gateway_stand_in.url("/gw/").replace("http://", "http://ops:p%40ss@")
        pipeline, _ = pipeline_with(root, [Pushgateway(url)], http, api.url("/ok"))
        pipeline.run(run_id="r1")
        requests = gateway_stand_in.requests
    assert [(r.method, r.path) for r in requests] == [
        ("GET", "/gw/metrics"),
        ("POST", "/gw/metrics/job/stalwart/pipeline/daily"),
    ]
    for request in requests:
        assert request.headers["authorization"] == "Basic b3BzOnBAc3M="  # ops:p@ss
    assert b"stalwart_step_runs_total" in requests[1].body


def test_an_unreadable_pushgateway_is_not_overwritten_with_partial_counters(
    root: Path, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    with FlakyServer() as gateway_stand_in, FlakyServer() as api:
        api.fail_then("GET", "/ok", 0)
        gateway_stand_in.route("GET", "/metrics", Reply(status=500))
        pipeline, _ = pipeline_with(
            root, [Pushgateway(gateway_stand_in.base_url)], http, api.url("/ok")
        )
        pipeline.run(run_id="r1")
        methods = [r.method for r in gateway_stand_in.requests]
    assert methods == ["GET"], "no push whose counters would go backwards"
    assert "could not push the metrics of daily" in caplog.text


def test_missing_tools_skip_with_how_to_install_but_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape(INSTALL)):
        need("promtool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=re.escape(INSTALL)):
        need("prometheus-pushgateway")
