"""Every request has a total deadline (wall clock, body included) and a maximum body size:
a real server that drips one byte every 0.2 s, and one that sends an endless body, fail
the call with an error naming both limits instead of holding it (or the memory) forever."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

import pytest

from hostile_http import serve
from stalwart import HttpClient, HttpError, RetryPolicy
from stalwart.testing import FlakyServer, Reply

pytestmark = pytest.mark.timeout(60)  # before the fix, these ran for minutes or for ever

ONCE = RetryPolicy(attempts=1)
CHUNK = b"z" * 65536
ENDLESS_CAP = 512 * 1024 * 1024  # the test's own bound: the server stops after 512 MiB


def endless(handler: BaseHTTPRequestHandler, sent: list[int], stop: threading.Event) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    total = 0
    while total < ENDLESS_CAP and not stop.is_set():
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
        total += len(CHUNK)
        sent[0] = total
    handler.close_connection = True


def test_a_dripping_body_hits_the_total_deadline() -> None:
    with FlakyServer() as server:
        server.route("GET", "/drip", Reply(body="x" * 2000, drip=0.2))  # 400 s in all
        with HttpClient(total_timeout=1.0, retry=ONCE) as client, pytest.raises(HttpError) as e:
            client.get(server.url("/drip"))
    message = str(e.value)
    assert "no complete response within 1 s" in message
    assert "total_timeout" in message
    assert "max_body_size" in message
    assert e.value.transient


def test_an_endless_body_hits_the_size_limit() -> None:
    sent = [0]
    stop = threading.Event()
    with serve(lambda h: endless(h, sent, stop)) as (base, _seen):
        with (
            HttpClient(max_body_size=4 * 1024 * 1024, retry=ONCE) as client,
            pytest.raises(HttpError) as e,
        ):
            client.get(f"{base}/stream")
        stop.set()
    assert "passed the 4 MiB limit" in str(e.value)
    assert "max_body_size" in str(e.value)
    assert "total_timeout" in str(e.value)
    assert not e.value.transient
    assert sent[0] < ENDLESS_CAP  # the client hung up long before the test's bound


def test_an_announced_oversized_body_is_refused_before_reading() -> None:
    with FlakyServer() as server:
        server.route("GET", "/big", Reply(body=b"y" * 5000))
        with HttpClient(max_body_size=4096, retry=ONCE) as client, pytest.raises(HttpError) as e:
            client.get(server.url("/big"))
    assert "announces 5000 bytes, over the 4 KiB limit" in str(e.value)
    with FlakyServer() as server:
        server.route("GET", "/big", Reply(body=b"y" * 5000))
        with HttpClient(max_body_size=1000, retry=ONCE) as client, pytest.raises(HttpError) as e:
            client.get(server.url("/big"))
    assert "over the 1000 bytes limit" in str(e.value)


def test_the_limits_are_validated() -> None:
    for bad in ({"total_timeout": 0}, {"total_timeout": float("inf")}, {"max_body_size": 0}):
        with pytest.raises(ValueError, match=r"must be a positive|must be positive"):
            HttpClient(**bad)
    with pytest.raises(ValueError, match="max_body_size"):
        HttpClient(max_body_size=True)


def test_a_normal_body_within_the_limits_is_whole() -> None:
    with FlakyServer() as server:
        server.route("GET", "/ok", Reply(body=b"a" * 100_000))
        with HttpClient(max_body_size=100_000, total_timeout=30) as client:
            assert client.get(server.url("/ok")).content == b"a" * 100_000


def test_headers_dripped_one_byte_at_a_time_hit_the_total_deadline() -> None:
    stop = threading.Event()

    def drip_headers(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stop.wait(0.05):
            handler.wfile.write(b"a")
            handler.wfile.flush()

    with serve(drip_headers) as (base, _seen):
        with (
            HttpClient(total_timeout=1.0, timeout=5.0, retry=ONCE) as client,
            pytest.raises(HttpError) as e,
        ):
            client.get(f"{base}/slow-headers")
        stop.set()
    assert "no complete response within 1 s" in str(e.value)


def test_a_kept_alive_connection_that_turns_to_dripping_hits_the_deadline() -> None:
    with FlakyServer() as server:
        server.route("GET", "/a", [Reply(body=b"fine"), Reply(body="x" * 2000, drip=0.2)])
        with HttpClient(total_timeout=1.0, retry=ONCE) as client:
            assert client.get(server.url("/a")).content == b"fine"
            with pytest.raises(HttpError, match="no complete response within 1 s"):
                client.get(server.url("/a"))
