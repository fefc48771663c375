"""The deadline-aware network layer on real sockets: outside a deadline scope it changes
nothing; once the deadline has passed, connecting, reading and writing fail at once as
timeouts (which ``HttpClient`` reports as its total deadline)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpcore
import httpx
import pytest

from stalwart._deadline_network import (
    _DeadlineBackend,
    deadline_scope,
    install_deadline_network,
)
from stalwart.testing import FlakyServer, Reply


def test_past_the_deadline_every_operation_is_a_timeout() -> None:
    backend = _DeadlineBackend(httpcore.SyncBackend())
    with FlakyServer() as server:
        server.route("GET", "/", Reply(body=b"hi"))
        host, port = server.base_url.removeprefix("http://").split(":")
        stream = backend.connect_tcp(host, int(port), timeout=5.0)  # no scope: unchanged
        try:
            stream.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert stream.read(4096).startswith(b"HTTP/1.1 200")
            assert stream.get_extra_info("socket") is not None
            with deadline_scope(time.monotonic() - 1.0):
                with pytest.raises(httpcore.ReadTimeout):
                    stream.read(10)
                with pytest.raises(httpcore.WriteTimeout):
                    stream.write(b"x")
                with pytest.raises(httpcore.ConnectTimeout):
                    backend.connect_tcp(host, int(port))
        finally:
            stream.close()
    backend.sleep(0)


def test_unix_sockets_are_capped_too(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
    thread.start()
    backend = _DeadlineBackend(httpcore.SyncBackend())
    with deadline_scope(time.monotonic() + 30):
        stream = backend.connect_unix_socket(path)
    thread.join()
    try:
        with deadline_scope(time.monotonic() + 0.05), pytest.raises(httpcore.ReadTimeout):
            stream.read(1)  # the peer sends nothing: cut at the deadline, not at "no timeout"
    finally:
        stream.close()
        accepted[0].close()
        listener.close()


def test_installing_twice_is_harmless_and_foreign_transports_are_left_alone() -> None:
    transport = httpx.HTTPTransport()
    try:
        assert install_deadline_network(transport)
        assert install_deadline_network(transport)
        assert not install_deadline_network(httpx.MockTransport(lambda r: httpx.Response(200)))
    finally:
        transport.close()
