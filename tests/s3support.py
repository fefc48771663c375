"""A real S3 API on 127.0.0.1 for the object-storage tests: moto's server, started once per
session in a thread of the test process, reached through the standard AWS variables.

Moto checks conditional writes (``If-None-Match``) without a lock, so two concurrent
create-only PUTs can both win there; real stores (AWS S3, MinIO, R2) decide them atomically.
The server therefore handles one request at a time (a lock around the WSGI app), which makes
each request atomic, as on a real store. ``ignoring_conditions=True`` serves a store that
drops ``If-None-Match`` (what stalwart must refuse).
"""

from __future__ import annotations

import email.utils
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import boto3
import pytest
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, make_server

from stalwart._errors import RunLockedError
from stalwart._lease import Lease
from stalwart._remote_state import open_store

Environ = dict[str, Any]
App = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]


class S3Server:
    """moto's S3 on a free port of 127.0.0.1, one request at a time."""

    def __init__(self, *, ignoring_conditions: bool = False) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        moto_app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        self.ahead = 0.0
        """Seconds the store's clock (its ``Date`` header) runs ahead of ours."""
        self.requests: list[tuple[str, str, str]] = []
        """Every request served: method, path (``/bucket/key``), query string."""

        server = self

        class Dated(WSGIRequestHandler):
            def date_time_string(self, timestamp: float | None = None) -> str:
                return email.utils.formatdate(time.time() + server.ahead, usegmt=True)

        def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
            if ignoring_conditions:
                environ.pop("HTTP_IF_NONE_MATCH", None)
            with lock:  # one request at a time: conditional writes become atomic
                request = (environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
                server.requests.append((*request, environ.get("QUERY_STRING", "")))
                return list(moto_app(environ, start_response))

        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Dated)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point botocore (and so s3fs) here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        name = f"test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


def wait_until(condition: Callable[[], object], *, timeout: float = 30) -> None:
    """Poll ``condition`` until it holds (for what only real time brings: a lease expiring
    on the store's clock); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting"
        pause.wait(0.05)


@pytest.fixture
def s3_root(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<a fresh bucket>/state``, the AWS variables set for this process and its
    children."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return f"s3://{s3_server.new_bucket()}/state"


def objects(server: S3Server, root: str) -> dict[str, bytes]:
    """Every object under ``root`` (``s3://bucket/prefix``): key below the prefix -> bytes."""
    bucket, _, prefix = root[len("s3://") :].partition("/")
    client = server.client()
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            found[key[len(prefix) + 1 :]] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return found


def contend(root: str, rounds: int, barrier: Any, results: Any) -> None:
    """One contender of the lease-exclusion test (run in a spawned process): in each round,
    wait for every contender, try the round's lease once, report whether it was won. Won
    leases are held to the end, so a late contender cannot win a round after its holder."""
    store = open_store(root)
    held = []
    for n in range(rounds):
        lease = Lease(store, f"rounds/{n:03d}/.lease", ttl=60)
        barrier.wait()
        try:
            lease.acquire()
        except RunLockedError:
            results.put((n, os.getpid(), False))
            continue
        held.append(lease)
        results.put((n, os.getpid(), True))
    barrier.wait()  # every round decided before anyone lets go
    for lease in held:
        lease.release()
