"""Shared fixtures: a fresh state root per test, and a way to run pipelines as processes."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from stalwart import Pipeline

pytest_plugins = ["s3support"]  # s3_server, s3_root: a real S3 API on loopback

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "daily_report.py"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh state root (``Pipeline(..., root=root)``)."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's webhook, state root or metrics settings."""
    for name in (
        "SLACK_WEBHOOK_URL",
        "STALWART_ROOT",
        "STALWART_PUSHGATEWAY",
        "STALWART_STATSD",
        "STALWART_PROM_TEXTFILE",
    ):
        monkeypatch.delenv(name, raising=False)


def run_text(pipeline: Pipeline, *args: str) -> tuple[int, str]:
    """``run --run-id r1 --log-format text ARGS`` in this process: its exit code and stderr."""
    from stalwart.cli._main import run_cli  # noqa: PLC0415 - tests of lazy imports import conftest

    err = io.StringIO()
    code = run_cli(
        ["run", "--run-id", "r1", "--log-format", "text", *args], pipeline=pipeline, stderr=err
    )
    return code, err.getvalue()


def run_python(
    args: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    drop: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``python args...`` with this interpreter; capture text output. Variables starting
    with ``STALWART_``, ``SLACK_`` or one of ``drop`` are not passed on."""
    gone = ("STALWART_", "SLACK_", *drop)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(gone)}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def dask_cluster(env: dict[str, str] | None = None) -> Iterator[str]:
    """A real Dask cluster (a scheduler and two worker processes, ``scripts/dask_cluster.py``)
    with ``env`` as its environment (default: this one's): its ``tcp://127.0.0.1:PORT``."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "scripts" / "dask_cluster.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    address = process.stdout.readline().strip()  # the cluster is up when it prints
    try:
        assert address.startswith("tcp://127.0.0.1:"), f"the Dask cluster did not start: {address}"
        yield address
    finally:
        process.stdin.close()  # the cluster stops when its stdin closes
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.fixture(scope="session")
def dask_scheduler() -> Iterator[str]:
    """The address of a real Dask cluster, started once for the session, stopped at its end."""
    pytest.importorskip("distributed")
    with dask_cluster() as address:
        yield address
