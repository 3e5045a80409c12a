"""kmlp.serving.connections: request heads over the limit however they arrive, bodies over the limit
answered to clients that send them whole, and idle and slow clients against the connection cap and
the timeouts (servers with small limits on the session's model; every socket operation has a
timeout)."""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from contextlib import contextmanager

import pytest
from serving_helpers import PREDICT, Served, exchange, generate, parse_answer, read_until_closed, running

from kmlp.serving.app import build_app
from kmlp.serving.limits import Limits

pytest_plugins = ["serving_fixtures"]


# ---------------------------------------------------------------------------------------------
# Request line and headers over the limit, however they arrive


def head_of(size: int) -> bytes:
    """A status request whose request line and headers, blank line included, are ``size`` bytes."""
    start = b"GET /v1/models/kmlp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Padding: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


HEAD_REFUSED = {"error": f"request line and headers over {Limits.max_header_bytes:,} bytes (the limit)"}


def test_a_head_over_the_limit_sent_whole_gets_400(server):
    """max_header_bytes to the byte, for a head that arrives in one piece (h11's own bound holds
    only for heads still incomplete): at the limit answered, one byte over or 40 KB refused."""
    limit = Limits.max_header_bytes
    status, _, body = exchange(server.port, head_of(limit))
    assert status == 200 and json.loads(body)["model_version_status"]
    for size in (limit + 1, 40_000):
        status, headers, body = exchange(server.port, head_of(size))
        assert (status, headers["content-type"], json.loads(body)) == (400, "application/json", HEAD_REFUSED)


def test_a_head_over_the_limit_sent_in_pieces_gets_400(server):
    """40 KB of head in 4 KiB pieces, until the server answers: the same 400, with the connection
    closed; the server answers others after."""
    request = head_of(40_000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for start in range(0, len(request), 4096):
            if select.select([sock], [], [], 0.2)[0]:  # answered
                break
            sock.sendall(request[start:start + 4096])
        raw, closed = read_until_closed(sock, within=10)
    assert closed is not None and start < 30_000 and parse_answer(raw) == (400, HEAD_REFUSED)
    assert server.ok("GET", "/v1/models/kmlp")["model_version_status"]


# ---------------------------------------------------------------------------------------------
# Request bodies over the limit: the rest is read and dropped, so that the client reads the answer


BODY_REFUSED = {"error": "request body over 1,048,576 bytes (the limit)"}


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
def test_a_chunked_body_over_the_limit_is_answered_to_a_client_that_sends_it_whole(server, close):
    """20 MB of chunked body sent whole before reading, as most clients send: 400 once the rest is
    read and dropped (closing with it unread would reset the connection, answer unread); then the
    connection answers the next request, or closes if the client asked."""
    chunk = b"a" * 65_536
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n{'Connection: close' if close else 'X-Keep: alive'}\r\n\r\n")
    body = (b"10000\r\n" + chunk + b"\r\n") * 320 + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, json.loads(response.read())) == (400, BODY_REFUSED)
        if close:  # closed cleanly, every byte read: a reset could have lost the answer before it was read
            assert sock.recv(1) == b""
        else:
            sock.sendall(b"GET /v1/models/kmlp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200 and json.loads(response.read())["model_version_status"]


def test_a_body_declared_beyond_what_is_dropped_is_answered_at_once_and_closed(server):
    """A refused body longer than max_discard_bytes is not read: 400 at once, the connection closed."""
    with limited(server, max_body_bytes=1000, max_discard_bytes=100_000) as port, connections(port) as (sock,):
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n{{}}"
                     .encode())
        raw, closed = read_until_closed(sock, within=3)
    assert closed is not None and parse_answer(raw) == (400, {"error": "request body over 1,000 bytes (the limit)"})


# ---------------------------------------------------------------------------------------------
# Idle and slow clients: the connection cap and the timeouts (servers with small limits on the
# session's model; every socket operation has a timeout)


@contextmanager
def limited(server, **limits):
    """Another server of the session's model, with ``Limits(**limits)``; yields its port."""
    small = Limits(**limits)
    with running(build_app(server.served, limits=small), small) as port:
        yield port


@contextmanager
def connections(port: int, count: int = 1):
    """``count`` raw TCP connections to ``port``, opened in turn; all closed on the way out."""
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def ask(port: int) -> tuple[int, object, float]:
    """(status, parsed JSON or text, seconds) of GET /v1/models/kmlp on a fresh connection."""
    started = time.monotonic()
    status, _, answer = Served(port, None, None, None).request("GET", "/v1/models/kmlp", timeout=5)
    return status, answer, time.monotonic() - started


def closed_among(socks, count: int, within: float) -> set[int]:
    """Indexes of the sockets the server closed: once ``count`` are closed (or ``within`` seconds
    have passed), 0.2 s more to see any other close."""
    closed = set()

    def poll(timeout):
        still_open = [s for i, s in enumerate(socks) if i not in closed]
        for sock in select.select(still_open, [], [], timeout)[0]:
            try:
                data = sock.recv(1)
            except ConnectionResetError:
                data = b""
            if not data:
                closed.add(socks.index(sock))

    deadline = time.monotonic() + within
    while len(closed) < count and time.monotonic() < deadline:
        poll(0.05)
    poll(0.2)
    return closed


def start_request_in_progress(sock, body: bytes) -> None:
    """Send a predict request's headers with ``Expect: 100-continue``, and wait for the 100 Continue:
    the application is then reading the body, the request in progress until the body is sent."""
    sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
    expected, got = b"HTTP/1.1 100 Continue\r\n\r\n", b""
    while len(got) < len(expected):
        chunk = sock.recv(len(expected) - len(got))
        assert chunk, f"closed after {got!r}"
        got += chunk
    assert got == expected


def finish_request(sock, body: bytes) -> tuple[int, dict]:
    """Send the body of a request in progress: (status, JSON) of its answer."""
    sock.sendall(body)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def test_idle_connections_cannot_crowd_out_a_request(server):
    """Three times max_connections connections that send nothing: each new one beyond the cap closes
    the one idle longest, so a client's request is answered at once."""
    with limited(server, max_connections=16) as port, connections(port, 48) as idle:
        status, answer, seconds = ask(port)
        assert status == 200 and answer["model_version_status"] and seconds < 2, (status, answer, seconds)
        # 49 connections, room for 16: the 33 idle longest were closed, the 15 newest kept
        assert closed_among(idle, 33, within=2) == set(range(33))


def test_a_request_in_progress_is_never_closed_for_the_cap(server):
    """Two requests in progress on a server with room for three, then nine idle connections and a
    client: only idle connections make room, and both requests in progress get their answers."""
    body = json.dumps(generate(count=2, seed=9)).encode()
    expected = {"outputs": server.lm.sample(2, seed=9)}
    with limited(server, max_connections=3) as port, connections(port, 2) as busy:
        for sock in busy:
            start_request_in_progress(sock, body)
        with connections(port, 9):
            assert ask(port)[0] == 200
        for sock in busy:
            assert finish_request(sock, body) == (200, expected)


def test_at_the_cap_with_no_idle_connection_a_request_gets_503(server):
    """Every place taken by a request in progress: a request on one more connection gets 503 and the
    connection is closed; the requests in progress get their answers, and then room is made again."""
    body = json.dumps(generate(count=2, seed=9)).encode()
    expected = {"outputs": server.lm.sample(2, seed=9)}
    with limited(server, max_connections=2) as port, connections(port, 2) as busy:
        for sock in busy:
            start_request_in_progress(sock, body)
        with connections(port) as (third,):
            third.sendall(b"GET /v1/models/kmlp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            raw, closed = read_until_closed(third, within=3)
        assert closed is not None, raw
        busy_error = "server busy: 2 connections open and none idle; try again"
        assert parse_answer(raw) == (503, {"error": busy_error})
        for sock in busy:
            assert finish_request(sock, body) == (200, expected)
        assert ask(port)[0] == 200  # both connections now idle: one is closed to make room


def test_a_slow_request_head_gets_408_after_the_head_timeout(server):
    """Headers sent one byte per 0.2 s (14 s for all of them): 408 and closed once head_timeout has
    passed since the request line; other clients are answered meanwhile and after."""
    headers = b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
    with limited(server, head_timeout=0.5) as port, connections(port) as (slow,):
        slow.sendall(b"GET /v1/models/kmlp HTTP/1.1\r\n")
        started = time.monotonic()
        for i in range(len(headers)):
            if select.select([slow], [], [], 0.2)[0]:  # answered (or closed)
                break
            try:
                slow.sendall(headers[i:i + 1])
            except OSError:  # closed while the byte was on its way
                break
            if i == 1:
                assert ask(port)[0] == 200
        raw, closed = read_until_closed(slow, within=2)
        assert closed is not None and 0.4 < closed - started < 2, raw
        assert parse_answer(raw) == (408, {"error": "request line and headers not received within 0.5 s"})
        assert ask(port)[0] == 200


SLOW_BODIES = [  # (id, limits, seconds between bytes sent or None, the error, seconds to it)
    ("stalled", {"body_idle_timeout": 0.5}, None, "no bytes of the request body for 0.5 s", 0.5),
    ("dripped", {"body_idle_timeout": 0.5, "body_timeout": 1.0}, 0.2,
     "request body not received within 1 s", 1.0),
]


@pytest.mark.parametrize("limits, drip, message, timeout", [b[1:] for b in SLOW_BODIES],
                         ids=[b[0] for b in SLOW_BODIES])
def test_a_slow_request_body_gets_408(server, limits, drip, message, timeout):
    """1,000 bytes of body declared and 10 sent: stalled there, 408 after body_idle_timeout; dripped
    a byte per 0.2 s (shorter pauses), 408 after body_timeout. The server answers others after."""
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n").encode()
    with limited(server, **limits) as port, connections(port) as (slow,):
        slow.sendall(head + b'{"inputs":')
        started = time.monotonic()
        while drip and time.monotonic() - started < 5 and not select.select([slow], [], [], drip)[0]:
            try:
                slow.sendall(b" ")
            except OSError:
                break
        raw, closed = read_until_closed(slow, within=3)
        assert closed is not None and timeout - 0.1 < closed - started < timeout + 1.5, raw
        assert parse_answer(raw) == (408, {"error": message})
        assert ask(port)[0] == 200


def test_idle_connections_are_closed_after_the_keep_alive_timeout(server):
    """keep_alive_timeout closes a connection idle since its answer, and one that never sent a byte."""
    with limited(server, keep_alive_timeout=0.5) as port:
        opened = time.monotonic()
        with connections(port, 2) as (answered, silent):
            answered.sendall(b"GET /v1/models/kmlp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = http.client.HTTPResponse(answered)
            response.begin()
            assert response.status == 200 and json.loads(response.read())["model_version_status"]
            answered_at = time.monotonic()
            leftover, closed = read_until_closed(answered, within=3)
            assert leftover == b"" and closed is not None and 0.3 < closed - answered_at < 2
            leftover, closed = read_until_closed(silent, within=3)
            assert leftover == b"" and closed is not None and 0.4 < closed - opened < 2
