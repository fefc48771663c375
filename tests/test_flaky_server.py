"""FlakyServer: a real loopback HTTP server whose misbehaviour is scripted per route."""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError
from typing import Any

import httpx
import pytest

from stalwart._flaky import FlakyServer, Reply, Request

WAIT = 10.0  # upper bound for waits on events; never reached when things work


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    with FlakyServer() as flaky:
        yield flaky


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=WAIT) as http:
        yield http


def raw_exchange(server: FlakyServer, data: bytes) -> bytes:
    """Send raw bytes, half-close, and read the server's answer until it closes."""
    with socket.create_connection(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1]))) as sock:
        sock.settimeout(WAIT)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@contextlib.contextmanager
def log_seen(fragment: str) -> Iterator[threading.Event]:
    """An Event set when stalwart.testing logs a message containing ``fragment``."""
    seen = threading.Event()

    class Watcher(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if fragment in record.getMessage():
                seen.set()

    logger = logging.getLogger("stalwart.testing")
    watcher, level = Watcher(logging.DEBUG), logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(level)


# --- Reply fields, end to end ------------------------------------------------------------


def test_status_text_body_and_headers(server: FlakyServer, client: httpx.Client) -> None:
    server.route(
        "GET", "/limited", Reply(status=429, body="slow down é", headers={"Retry-After": "3"})
    )

    response = client.get(server.url("/limited"))

    assert response.status_code == 429
    assert response.text == "slow down é"
    assert response.headers["retry-after"] == "3"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-length"] == str(len("slow down é".encode()))


def test_bytes_body_is_octet_stream(server: FlakyServer, client: httpx.Client) -> None:
    server.route("GET", "/blob", Reply(body=b"\x00\xff"))

    response = client.get(server.url("/blob"))

    assert response.content == b"\x00\xff"
    assert response.headers["content-type"] == "application/octet-stream"


def test_empty_body_has_zero_length_and_no_content_type(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("DELETE", "/orders/1", Reply(status=204))

    response = client.delete(server.url("/orders/1"))

    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers


@pytest.mark.parametrize("value", [{"orders": [1, 2]}, [], None, "text"])
def test_json_body(server: FlakyServer, client: httpx.Client, value: object) -> None:
    server.route("GET", "/data", Reply(json=value))

    response = client.get(server.url("/data"))

    assert response.headers["content-type"] == "application/json"
    assert response.json() == value


def test_content_type_header_replaces_the_default(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route(
        "GET", "/x", Reply(json={"a": 1}, headers={"content-type": "application/x-custom"})
    )

    response = client.get(server.url("/x"))

    assert response.headers.get_list("content-type") == ["application/x-custom"]
    assert response.json() == {"a": 1}


def test_json_is_encoded_when_the_reply_is_made(server: FlakyServer, client: httpx.Client) -> None:
    data: dict[str, Any] = {"n": 1}
    server.route("GET", "/snapshot", Reply(json=data))
    data["n"] = 2

    assert client.get(server.url("/snapshot")).json() == {"n": 1}


def test_head_announces_the_length_but_sends_no_body(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("HEAD", "/file", Reply(body=b"0123456789"))
    server.route("GET", "/file", Reply(body=b"after"))

    head = client.head(server.url("/file"))
    get = client.get(server.url("/file"))  # same keep-alive connection: framing stayed intact

    assert head.headers["content-length"] == "10"
    assert head.content == b""
    assert get.content == b"after"


def test_delay_trips_the_client_read_timeout(server: FlakyServer) -> None:
    server.route("GET", "/slow", Reply(delay=5.0, body="late"))

    with (
        httpx.Client(timeout=httpx.Timeout(WAIT, read=0.2)) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.get(server.url("/slow"))

    assert server.count("GET", "/slow") == 1


def test_short_delay_still_answers(server: FlakyServer, client: httpx.Client) -> None:
    server.route("GET", "/slowish", Reply(delay=0.01, body="ok"))

    assert client.get(server.url("/slowish")).text == "ok"


def test_reset_sends_nothing_and_resets_the_connection(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("POST", "/upload", [Reply(reset=True), Reply(status=201)])

    with pytest.raises(httpx.TransportError):
        client.post(server.url("/upload"), content=b"payload")
    retried = client.post(server.url("/upload"), content=b"payload")

    assert retried.status_code == 201
    assert [r.body for r in server.requests_for("POST", "/upload")] == [b"payload", b"payload"]


@pytest.mark.parametrize("after", [0, 4])
def test_reset_after_sends_headers_then_resets_mid_body(
    server: FlakyServer, client: httpx.Client, after: int
) -> None:
    server.route("GET", "/big", Reply(body=b"x" * 1000, reset_after=after))

    with client.stream("GET", server.url("/big")) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == "1000"
        with pytest.raises(httpx.TransportError):
            response.read()


def read_into(response: httpx.Response, received: list[bytes]) -> None:
    """Collect raw body chunks until the body ends or the transport fails."""
    for chunk in response.iter_raw():
        received.append(chunk)


def test_truncate_announces_the_full_length_and_closes_early(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("GET", "/cut", Reply(body=b"hello world", truncate=5))
    received: list[bytes] = []

    with client.stream("GET", server.url("/cut")) as response:
        assert response.headers["content-length"] == "11"
        with pytest.raises(httpx.RemoteProtocolError, match="received 5 bytes, expected 11"):
            read_into(response, received)

    assert b"".join(received) == b"hello"


def test_drip_delivers_the_whole_body_byte_by_byte(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("GET", "/drip", Reply(body=b"abcdef", drip=0.001))

    response = client.get(server.url("/drip"))

    assert response.content == b"abcdef"
    assert response.headers["content-length"] == "6"


def test_drip_combines_with_truncate(server: FlakyServer, client: httpx.Client) -> None:
    server.route("GET", "/drip-cut", Reply(json=[1, 2, 3], drip=0.001, truncate=3))

    with pytest.raises(httpx.RemoteProtocolError, match="received 3 bytes"):
        client.get(server.url("/drip-cut"))


# --- Reply validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": 199}, "final HTTP status"),
        ({"status": 600}, "final HTTP status"),
        ({"body": "x", "json": {}}, "not both"),
        ({"delay": -1.0}, "delay=-1.0"),
        ({"delay": float("inf")}, "delay=inf"),
        ({"drip": float("nan")}, "drip=nan"),
        ({"headers": {"Content-Length": "3"}}, "Content-Length"),
        ({"headers": {"transfer-encoding": "chunked"}}, "transfer-encoding"),
        ({"body": b"abc", "truncate": 1, "reset_after": 1}, "pick one"),
        ({"reset": True, "drip": 0.1}, "reset=True sends nothing"),
        ({"reset": True, "truncate": 0, "body": b"a"}, "reset=True sends nothing"),
        ({"reset": True, "reset_after": 0, "body": b"a"}, "reset=True sends nothing"),
        ({"body": b"abc", "truncate": 3}, "truncate=3 does not cut the 3-byte body short"),
        ({"body": b"abc", "truncate": -1}, "truncate=-1"),
        ({"reset_after": 0}, "reset_after=0 does not cut the 0-byte body short"),
    ],
)
def test_contradictory_replies_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Reply(**kwargs)


def test_json_that_cannot_be_encoded_is_rejected_at_construction() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        Reply(json=object())


def test_reply_is_frozen_hashable_and_copies_its_headers() -> None:
    headers = {"Retry-After": "1"}
    reply = Reply(status=503, headers=headers)
    headers["Retry-After"] = "99"

    assert reply.headers == {"Retry-After": "1"}
    assert reply == Reply(status=503, headers={"Retry-After": "1"})
    assert hash(reply) == hash(Reply(status=503, headers={"Retry-After": "1"}))
    assert "json=NO_JSON" in repr(Reply())
    with pytest.raises(FrozenInstanceError):
        reply.status = 200  # type: ignore[misc]
    with pytest.raises(TypeError):
        reply.headers["X"] = "y"  # type: ignore[index]


# --- scripts ------------------------------------------------------------------------------


def test_replies_are_consumed_in_order_then_the_last_repeats(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("GET", "/seq", [Reply(status=500), Reply(status=502), Reply(body="done")])

    statuses = [client.get(server.url("/seq")).status_code for _ in range(5)]

    assert statuses == [500, 502, 200, 200, 200]


def test_without_repeat_last_an_exhausted_script_answers_500(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("PUT", "/once", Reply(status=201), repeat_last=False)

    first = client.put(server.url("/once"))
    second = client.put(server.url("/once"))

    assert first.status_code == 201
    assert second.status_code == 500
    assert "ran out after 1 replies" in second.text


def test_routing_again_replaces_and_restarts_the_script(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("GET", "/r", [Reply(status=503), Reply(status=200)])
    assert client.get(server.url("/r")).status_code == 503

    server.route("GET", "/r", [Reply(status=418), Reply(status=200)])

    assert client.get(server.url("/r")).status_code == 418


def test_fail_then_defaults_to_503s_then_an_empty_200(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.fail_then("GET", "/flaky", 2)

    responses = [client.get(server.url("/flaky")) for _ in range(3)]

    assert [r.status_code for r in responses] == [503, 503, 200]
    assert responses[-1].content == b""


def test_fail_then_with_status_and_final_reply(server: FlakyServer, client: httpx.Client) -> None:
    server.fail_then("post", "/sink", 1, status=429, then=Reply(json={"ok": True}))

    first = client.post(server.url("/sink"))
    second = client.post(server.url("/sink"))

    assert first.status_code == 429
    assert second.json() == {"ok": True}


def test_fail_then_zero_failures_answers_at_once(server: FlakyServer, client: httpx.Client) -> None:
    server.fail_then("GET", "/fine", 0, then=Reply(body="ok"))

    assert client.get(server.url("/fine")).text == "ok"


@pytest.mark.parametrize(
    ("path", "replies", "message"),
    [
        ("/empty", [], "at least one Reply"),
        ("relative", [Reply()], "must start with '/'"),
        ("/q?a=1", [Reply()], "no query string"),
    ],
)
def test_invalid_routes_are_rejected(path: str, replies: list[Reply], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlakyServer().route("GET", path, replies)


def test_negative_failures_are_rejected() -> None:
    with pytest.raises(ValueError, match="failures=-1"):
        FlakyServer().fail_then("GET", "/x", -1)


def test_unknown_route_and_unscripted_method_answer_404(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("GET", "/known", Reply())

    unknown = client.get(server.url("/unknown"))
    wrong_method = client.post(server.url("/known"))

    assert unknown.status_code == 404
    assert unknown.text == "FlakyServer: no route for GET /unknown\n"
    assert wrong_method.status_code == 404
    assert server.count("GET", "/unknown") == 1  # unrouted requests are logged too


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_common_method_is_routed(
    server: FlakyServer, client: httpx.Client, method: str
) -> None:
    server.route(method, "/m", Reply(status=202, body="m"))

    response = client.request(method, server.url("/m"))

    assert response.status_code == 202
    assert server.count(method, "/m") == 1


# --- request log --------------------------------------------------------------------------


def test_request_log_records_method_path_query_headers_and_body(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("POST", "/orders", Reply(status=201))
    before = time.monotonic()

    client.post(
        server.url("/orders?date=2026-11-28&tag=a&tag=b&empty="),
        json={"id": 7},
        headers=[("X-Trace", "one"), ("x-trace", "two"), ("Idempotency-Key", "k1")],
    )

    (request,) = server.requests
    assert isinstance(request, Request)
    assert request.method == "POST"
    assert request.path == "/orders"
    assert request.query_string == "date=2026-11-28&tag=a&tag=b&empty="
    assert request.query == {"date": ["2026-11-28"], "tag": ["a", "b"], "empty": [""]}
    assert request.headers["idempotency-key"] == "k1"
    assert request.headers["x-trace"] == "one, two"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"id": 7}
    assert request.body == b'{"id":7}'
    assert before <= request.received_at <= time.monotonic()
    with pytest.raises(FrozenInstanceError):
        request.path = "/other"  # type: ignore[misc]


def test_requests_for_and_count_filter_by_method_and_path(
    server: FlakyServer, client: httpx.Client
) -> None:
    for path in ["/a", "/b", "/a?page=2"]:
        client.get(server.url(path))
    client.post(server.url("/a"))

    assert [r.query_string for r in server.requests_for("get", "/a")] == ["", "page=2"]
    assert server.count("GET", "/a") == 2
    assert server.count("POST", "/a") == 1
    assert server.count("GET", "/c") == 0
    assert [r.path for r in server.requests] == ["/a", "/b", "/a", "/a"]


def test_a_streamed_chunked_upload_is_read_whole(server: FlakyServer, client: httpx.Client) -> None:
    server.route("POST", "/stream", Reply(status=204))

    def parts() -> Iterator[bytes]:
        yield b"hello "
        yield b"world"

    response = client.post(server.url("/stream"), content=parts())

    assert response.status_code == 204
    (request,) = server.requests
    assert request.headers["transfer-encoding"] == "chunked"
    assert request.body == b"hello world"


def test_chunk_extensions_and_trailers_are_tolerated(server: FlakyServer) -> None:
    server.route("POST", "/c", Reply(body="got it"))

    answer = raw_exchange(
        server,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;name=value\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n",
    )

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"got it")
    assert server.requests[0].body == b"abc"


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: -5\r\n\r\n",
        b"Content-Length: lots\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_unreadable_request_bodies_get_400_and_are_not_logged(
    server: FlakyServer, framing: bytes
) -> None:
    answer = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\n" + framing)

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert server.requests == []


def test_keep_alive_serves_several_requests_on_one_connection(server: FlakyServer) -> None:
    server.route("GET", "/k", [Reply(body="one"), Reply(body="two")])
    connection = http.client.HTTPConnection("127.0.0.1", int(server.base_url.rsplit(":", 1)[1]))
    try:
        bodies = []
        sockets = []
        for _ in range(2):
            connection.request("GET", "/k")
            bodies.append(connection.getresponse().read())
            sockets.append(connection.sock)  # None if the server had closed the connection
    finally:
        connection.close()

    assert bodies == [b"one", b"two"]
    assert sockets[0] is not None
    assert sockets[0] is sockets[1]


def test_the_server_writes_nothing_to_stderr(
    server: FlakyServer, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    client.get(server.url("/missing"))
    raw_exchange(server, b"POST /x HTTP/1.1\r\nContent-Length: x\r\n\r\n")

    assert capfd.readouterr().err == ""


# --- waiting and concurrency --------------------------------------------------------------


def test_wait_for_requests_returns_once_enough_have_arrived(server: FlakyServer) -> None:
    def send() -> None:
        with httpx.Client(timeout=WAIT) as http:
            for _ in range(3):
                http.get(server.url("/bg"))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert server.wait_for_requests(3, timeout=WAIT)
    finally:
        sender.join()
    assert server.count("GET", "/bg") == 3
    assert not server.wait_for_requests(4, timeout=0.01)


def test_wait_for_requests_gives_up_when_the_server_stops() -> None:
    server = FlakyServer()
    server.start()
    server.stop()

    assert not server.wait_for_requests(1, timeout=60.0)  # returns at once, not after 60 s


def test_concurrent_clients_each_consume_exactly_one_reply(server: FlakyServer) -> None:
    total = 200
    server.route("GET", "/n", [Reply(body=str(i)) for i in range(total)], repeat_last=False)

    with (
        httpx.Client(timeout=WAIT, limits=httpx.Limits(max_connections=8)) as http,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        bodies = list(pool.map(lambda _: http.get(server.url("/n")).text, range(total)))
        extra = http.get(server.url("/n"))

    assert sorted(bodies, key=int) == [str(i) for i in range(total)]
    assert extra.status_code == 500
    assert server.count("GET", "/n") == total + 1


# --- lifecycle ----------------------------------------------------------------------------


def test_url_and_base_url(server: FlakyServer) -> None:
    port = int(server.base_url.rsplit(":", 1)[1])

    assert server.base_url == f"http://127.0.0.1:{port}"
    assert server.url() == f"http://127.0.0.1:{port}/"
    assert server.url("/orders") == f"http://127.0.0.1:{port}/orders"
    assert server.url("orders?x=1") == f"http://127.0.0.1:{port}/orders?x=1"
    assert port > 0


def test_start_stop_without_context_manager() -> None:
    server = FlakyServer()
    server.stop()  # never started: nothing to do
    with pytest.raises(RuntimeError, match="before asking for its URL"):
        server.url("/")

    server.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
        with httpx.Client(timeout=WAIT) as http:
            assert http.get(server.url("/")).status_code == 404
    finally:
        server.stop()
    server.stop()  # idempotent

    with pytest.raises(RuntimeError, match="already started"):
        server.start()
    with httpx.Client(timeout=WAIT) as http, pytest.raises(httpx.ConnectError):
        http.get(server.url("/"))


def stop_in_background(server: FlakyServer) -> threading.Event:
    stopped = threading.Event()

    def stop() -> None:
        server.stop()
        stopped.set()

    threading.Thread(target=stop, daemon=True).start()
    return stopped


def test_stop_interrupts_a_delayed_reply() -> None:
    server = FlakyServer()
    server.start()
    server.route("GET", "/hang", Reply(delay=3600.0))
    outcome: list[BaseException] = []
    answered = threading.Event()

    def call() -> None:
        with httpx.Client(timeout=WAIT) as http:
            try:
                http.get(server.url("/hang"))
            except httpx.TransportError as exc:
                outcome.append(exc)
        answered.set()

    threading.Thread(target=call, daemon=True).start()
    assert server.wait_for_requests(1, timeout=WAIT)

    stopped = stop_in_background(server)

    assert stopped.wait(WAIT)
    assert answered.wait(WAIT)  # long before the hour-long delay
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.RemoteProtocolError)


def test_stop_interrupts_a_drip() -> None:
    server = FlakyServer()
    server.start()
    server.route("GET", "/drip", Reply(body=b"abc", drip=3600.0))
    headers_seen = threading.Event()
    finished = threading.Event()
    outcome: list[BaseException] = []
    received: list[bytes] = []

    def call() -> None:
        with httpx.Client(timeout=WAIT) as http:
            try:
                with http.stream("GET", server.url("/drip")) as response:
                    headers_seen.set()
                    read_into(response, received)
            except httpx.TransportError as exc:
                outcome.append(exc)
        finished.set()

    threading.Thread(target=call, daemon=True).start()
    assert headers_seen.wait(WAIT)

    stopped = stop_in_background(server)

    assert stopped.wait(WAIT)
    assert finished.wait(WAIT)
    assert b"".join(received) == b"a"  # the first byte, then an hour-long pause, cut short
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.RemoteProtocolError)


def test_stop_closes_idle_keep_alive_connections() -> None:
    server = FlakyServer()
    server.start()
    try:
        with socket.create_connection(
            ("127.0.0.1", int(server.base_url.rsplit(":", 1)[1]))
        ) as sock:
            sock.settimeout(WAIT)
            sock.sendall(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"no route for GET /idle\n"):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 404 ")
            server.stop()
            assert sock.recv(65536) == b""  # EOF: the server hung up the idle connection
    finally:
        server.stop()


def test_a_client_leaving_mid_drip_is_logged_quietly(
    server: FlakyServer, client: httpx.Client
) -> None:
    server.route("GET", "/long", [Reply(body=b"x" * 5000, drip=0.001), Reply(body="next")])

    with log_seen("client left during GET /long") as left:
        with client.stream("GET", server.url("/long")) as response:
            assert response.status_code == 200  # then close without reading the body
        assert left.wait(WAIT)

    assert client.get(server.url("/long")).text == "next"


def test_a_client_resetting_mid_request_is_logged_quietly(
    server: FlakyServer, client: httpx.Client
) -> None:
    with log_seen("connection from") as failed:
        sock = socket.create_connection(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])))
        sock.sendall(b"GET /half HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        assert failed.wait(WAIT)

    assert server.requests == []
    assert client.get(server.url("/still-up")).status_code == 404
