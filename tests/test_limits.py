"""Client-connection limits and timeouts: MAX_HEADERS, MAX_URL_BYTES, HEADER_TIMEOUT,
KEEPALIVE_TIMEOUT and MAX_CONNECTIONS, each over raw sockets with small values.

The timeouts are enforced by a coarse sweep (a few times per timeout, at most once a second), so
the waits below allow a generous margin but stay bounded.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable

import pytest
import support_tools
from conftest import Seeded
from harbor_emulator import HarborEmulator
from router_runner import RunningRouter

pytestmark = pytest.mark.integration

GOOD = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"


def connect(router: RunningRouter, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", router.port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body (every answer of the router to GET /v2/)."""
    head, body = support_tools.read_response(sock)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything until the router closes; fails if it has not closed within ``limit``."""
    start = time.monotonic()
    chunks = []
    sock.settimeout(limit)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(f"still open after {limit}s") from None
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - start


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


# -- MAX_HEADERS, MAX_URL_BYTES ------------------------------------------------------------------


def test_max_headers(make_router: Callable[..., RunningRouter], harbor: HarborEmulator) -> None:
    router = make_router(MAX_HEADERS="5")
    extra = b"".join(b"X-%d: v\r\n" % i for i in range(4))  # with Host: 5 headers
    with connect(router) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        assert read_response(sock)[0] == 200
    harbor.clear_log()
    with connect(router) as sock:
        sock.sendall(
            b"GET /v2/proxy/a/manifests/1 HTTP/1.1\r\nHost: x\r\n" + extra + b"X: 6\r\n\r\n"
        )
        data, _ = read_until_closed(sock, 3)
    assert status_of(data) == 431
    assert b"Connection: close" in data
    assert harbor.count(path_contains="/v2/") == 0


def test_max_url_bytes(make_router: Callable[..., RunningRouter], harbor: HarborEmulator) -> None:
    router = make_router(MAX_URL_BYTES="256")
    with connect(router) as sock:
        target = b"/v2/?" + b"q" * (256 - 5)  # exactly at the limit
        sock.sendall(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        assert read_response(sock)[0] == 200
    harbor.clear_log()
    with connect(router) as sock:
        sock.sendall(b"GET /v2/proxy/" + b"a" * 250 + b"/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        data, _ = read_until_closed(sock, 3)
    assert data.startswith(b"HTTP/1.1 414 URI Too Long\r\n"), data[:100]
    assert b"Connection: close" in data
    body = data.partition(b"\r\n\r\n")[2]
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert harbor.count(path_contains="/v2/") == 0


# -- HEADER_TIMEOUT ------------------------------------------------------------------------------


def test_slowloris_gets_408_and_close(make_router: Callable[..., RunningRouter]) -> None:
    router = make_router(HEADER_TIMEOUT="500ms")
    head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    with connect(router) as sock:
        start = time.monotonic()
        sent = 0
        answer = b""
        while sent < len(head) and time.monotonic() - start < 5:
            try:
                sock.sendall(head[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            sock.settimeout(0.05)  # one byte every 50 ms: far slower than the 500 ms allows
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            break
        rest, _ = read_until_closed(sock, 3)
        elapsed = time.monotonic() - start
    data = answer + rest
    assert status_of(data) == 408, data[:200]
    assert b"Connection: close" in data
    assert sent < len(head)
    assert 0.4 < elapsed < 2.5, elapsed


def test_head_in_pieces_within_the_timeout_is_served(
    make_router: Callable[..., RunningRouter],
) -> None:
    router = make_router(HEADER_TIMEOUT="500ms")
    with connect(router) as sock:
        for piece in (b"GET /v2/ HT", b"TP/1.1\r\nHo", b"st: x\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(0.1)
        assert read_response(sock)[0] == 200
        # the next head has its own 500 ms, counted from its first byte
        time.sleep(0.3)
        sock.sendall(GOOD)
        assert read_response(sock)[0] == 200


def test_whole_heads_pieces_and_pipelines_alternate_on_one_connection(
    make_router: Callable[..., RunningRouter],
) -> None:
    """Whole heads (read by the scan), a head in pieces and two pipelined heads (read by the
    parser), a whole one with a target the parser must judge, in turn on one connection:
    every one answered, in order."""
    router = make_router()
    with connect(router) as sock:
        sock.sendall(GOOD)
        assert read_response(sock)[0] == 200
        for piece in (b"GET /v2/ HT", b"TP/1.1\r\nHost: x\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        assert read_response(sock)[0] == 200
        sock.sendall(GOOD)
        assert read_response(sock)[0] == 200
        sock.sendall(GOOD.replace(b"/v2/", b"/v2/proxy/a/blobs/sha256:x") + GOOD)
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"{}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        first, second = data.split(b"HTTP/1.1 ")[1:]
        assert (first[:3], second[:3]) == (b"400", b"200")  # DIGEST_INVALID, then /v2/
        sock.sendall(b"GET /v2/nope/x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 404
        sock.sendall(b"GET /v2/#x HTTP/1.1\r\nHost: x\r\n\r\n")  # a fragment: parsed
        assert read_response(sock)[0] == 200


def test_silent_connection_is_closed_without_an_answer(
    make_router: Callable[..., RunningRouter],
) -> None:
    router = make_router(HEADER_TIMEOUT="500ms")
    with connect(router) as sock:
        data, elapsed = read_until_closed(sock, 3)
    assert data == b""
    assert 0.4 < elapsed < 2.5, elapsed


# -- KEEPALIVE_TIMEOUT ---------------------------------------------------------------------------


def test_idle_keepalive_connection_is_closed(make_router: Callable[..., RunningRouter]) -> None:
    router = make_router(KEEPALIVE_TIMEOUT="500ms")
    with connect(router) as sock:
        sock.sendall(GOOD)
        assert read_response(sock)[0] == 200
        data, elapsed = read_until_closed(sock, 3)
    assert data == b"", "an idle close sends nothing"
    assert 0.4 < elapsed < 2.5, elapsed


def test_busy_keepalive_connection_stays_open(make_router: Callable[..., RunningRouter]) -> None:
    router = make_router(KEEPALIVE_TIMEOUT="500ms")
    with connect(router) as sock:
        for _ in range(8):  # 1.6 s in all, never idle for 500 ms
            sock.sendall(GOOD)
            assert read_response(sock)[0] == 200
            time.sleep(0.2)


def test_slow_download_outlives_both_timeouts(
    make_router: Callable[..., RunningRouter], seeded: Seeded
) -> None:
    """A response in progress is never cut by HEADER_TIMEOUT or KEEPALIVE_TIMEOUT."""
    image = seeded.get("dockerhub", "library/big")
    layer = max(image.layers, key=lambda d: image.blob_sizes[d])
    size = image.blob_sizes[layer]
    router = make_router(HEADER_TIMEOUT="300ms", KEEPALIVE_TIMEOUT="300ms")
    with connect(router, timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(
            f"GET /v2/proxy/{image.repo}/blobs/{layer} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        digest = hashlib.sha256(body)
        received = len(body)
        start = time.monotonic()
        while received < size:
            chunk = sock.recv(min(size - received, 256 * 1024))
            assert chunk, f"closed after {received} of {size} bytes"
            digest.update(chunk)
            received += len(chunk)
            time.sleep(0.05)
        assert time.monotonic() - start > 0.6  # longer than both timeouts together
    assert "sha256:" + digest.hexdigest() == layer


# -- MAX_CONNECTIONS -----------------------------------------------------------------------------


def test_connections_beyond_the_limit_get_a_fast_503(
    make_router: Callable[..., RunningRouter],
) -> None:
    router = make_router(MAX_CONNECTIONS="3")
    held = [connect(router) for _ in range(3)]
    try:
        for sock in held:  # each is accepted and registered
            sock.sendall(GOOD)
            assert read_response(sock)[0] == 200
        with connect(router) as extra:
            data, elapsed = read_until_closed(extra, 3)
        assert status_of(data) == 503, data[:200]
        assert b"Connection: close" in data
        assert json.loads(data.partition(b"\r\n\r\n")[2])["errors"][0]["code"] == "UNAVAILABLE"
        assert elapsed < 1
        for sock in held:  # the held connections are unaffected
            sock.sendall(GOOD)
            assert read_response(sock)[0] == 200
    finally:
        held.pop().close()
    # one slot is free again once the router has seen the close
    deadline = time.monotonic() + 3
    while True:
        with connect(router) as sock:
            try:
                sock.sendall(GOOD)
                status = read_response(sock)[0]
            except (ConnectionResetError, BrokenPipeError):
                status = 0
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200
    for sock in held:
        sock.close()
