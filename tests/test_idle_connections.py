"""Many client connections at once: 2000 idle keep-alive connections beside normal pulls, and a
small ``MAX_CONNECTIONS`` that is reached and then freed again.

Both sides of every connection live in this process (the router runs in-process), so the test
needs about two fds per connection: it raises its own ``RLIMIT_NOFILE`` soft limit, and skips
(fails under ``CI=true``) when the hard limit does not allow it. Latency bounds are generous
(a loaded 2-core machine); the timeouts are short so that each test stays well under 20 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import support_tools
from conftest import Seeded, SeedImage
from router_runner import RunningRouter
from test_metrics import P, parse, value

pytestmark = pytest.mark.integration

IDLE = 2000
KEEPALIVE = 8.0  # seconds; longer than opening the 2000 and the traffic beside them
GOOD = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
LATENCY_BOUND = 2.0  # seconds per request: a bound, not a benchmark


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Room for both ends of the idle connections in this process, and some to spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * IDLE + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        reason = f"RLIMIT_NOFILE hard limit {hard} < {wanted}: raise it (ulimit -Hn)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect(router: RunningRouter, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", router.port), timeout=timeout)


def read_response(sock: socket.socket, head_only: bool = False) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one response with a Content-Length body."""
    head, body = support_tools.read_response(sock, head_only)
    return int(head.split(b" ", 2)[1]), head, body


def ask(sock: socket.socket, method: str, path: str, accept: str = "") -> tuple[int, bytes, bytes]:
    lines = [f"{method} {path} HTTP/1.1", "Host: registry.test"]
    if accept:
        lines.append(f"Accept: {accept}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return read_response(sock, head_only=method == "HEAD")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pull(router: RunningRouter, image: SeedImage, sock: socket.socket | None = None) -> float:
    """Manifest and every blob of ``image`` (a new connection per request unless ``sock``),
    each checked byte for byte; returns the slowest request's seconds."""
    slowest = 0.0
    targets = [("manifests", image.tag, image.manifest, image.digest)]
    targets += [("blobs", blob, None, blob) for blob in image.blobs]
    for section, reference, expected, digest in targets:
        start = time.monotonic()
        if sock is None:
            with connect(router) as own:
                status, _, body = ask(
                    own, "GET", f"/v2/proxy/{image.repo}/{section}/{reference}", image.media_type
                )
        else:
            status, _, body = ask(
                sock, "GET", f"/v2/proxy/{image.repo}/{section}/{reference}", image.media_type
            )
        slowest = max(slowest, time.monotonic() - start)
        assert status == 200, (section, reference, status)
        if expected is not None:
            assert body == expected
        assert sha256(body) == digest
    return slowest


def closed_now(socks: list[socket.socket], timeout: float = 0.0) -> set[int]:
    """Indexes of the sockets the router has closed (EOF or reset readable)."""
    poller = select.poll()
    by_fd = {}
    for i, sock in enumerate(socks):
        poller.register(sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        by_fd[sock.fileno()] = i
    out = set()
    for fd, _ in poller.poll(timeout * 1000):
        sock = socks[by_fd[fd]]
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            data = b""
        assert data == b"", "an idle connection got unsolicited bytes"
        out.add(by_fd[fd])
    return out


def open_idle(router: RunningRouter, count: int) -> tuple[list[socket.socket], list[float]]:
    """``count`` keep-alive connections, each after one answered request: idle since then."""
    socks: list[socket.socket] = []
    answered: list[float] = []
    try:
        for batch in range(0, count, 100):
            new = [connect(router) for _ in range(min(100, count - batch))]
            socks += new
            for sock in new:
                sock.sendall(GOOD)
            for sock in new:
                assert read_response(sock)[0] == 200
                answered.append(time.monotonic())
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks, answered


def scrape(router: RunningRouter) -> list[tuple[str, dict[str, str], float]]:
    status, body = router.scrape()
    assert status == 200
    return parse(body.decode())


def test_2000_idle_connections_beside_normal_traffic(
    make_router: Callable[..., RunningRouter], seeded: Seeded, many_fds: None
) -> None:
    router = make_router(KEEPALIVE_TIMEOUT=f"{KEEPALIVE:g}s", HEADER_TIMEOUT="5s")
    nginx = seeded.get("dockerhub", "library/nginx")
    alpine = seeded.get("dockerhub", "library/alpine")
    pull(router, nginx)  # mapped before the crowd arrives: the traffic below is cache hits
    socks, answered = open_idle(router, IDLE)
    try:
        assert len(router.app.connections.active) >= IDLE
        assert value(scrape(router), P + "open_connections") >= IDLE

        # normal traffic while they are open: hits, a miss, keep-alive and new connections
        slowest = 0.0
        rounds = 0
        with connect(router) as busy:
            # until shortly before the first idle ones may go: the check below covers that span
            traffic_until = max(time.monotonic() + 3.0, answered[0] + KEEPALIVE - 2.5)
            while time.monotonic() < traffic_until or rounds < 3:
                slowest = max(slowest, pull(router, nginx), pull(router, nginx, busy))
                rounds += 1
            slowest = max(slowest, pull(router, alpine, busy))  # a fan-out among the crowd
        assert slowest < LATENCY_BOUND, f"slowest request took {slowest:.2f}s"

        # none of the idle ones was closed before its KEEPALIVE_TIMEOUT
        now = time.monotonic()
        closed = closed_now(socks)
        early = [i for i in closed if now - answered[i] < KEEPALIVE]
        assert early == [], f"{len(early)} closed before KEEPALIVE_TIMEOUT"
        young = sum(now - at < KEEPALIVE for at in answered)
        assert young >= IDLE // 2, f"only {young} checked within their timeout: setup too slow"
        assert len(closed) < IDLE

        # and every one of them is closed once it has run out, none before
        seen_closed = dict.fromkeys(closed, now)
        deadline = answered[-1] + KEEPALIVE + 6.0  # the sweep runs once a second
        while len(seen_closed) < IDLE and time.monotonic() < deadline:
            found = closed_now(socks, timeout=0.2)
            at = time.monotonic()
            for i in found - seen_closed.keys():
                seen_closed[i] = at
        assert len(seen_closed) == IDLE, f"{IDLE - len(seen_closed)} idle connections still open"
        assert min(at - answered[i] for i, at in seen_closed.items()) >= KEEPALIVE
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 5
    while router.app.connections.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not router.app.connections.active
    samples = scrape(router)
    assert value(samples, P + "open_connections") == 0
    assert value(samples, P + "connections_closed_total", reason="keepalive_timeout") >= IDLE
    assert value(samples, P + "connections_rejected_total") == 0
    assert value(samples, P + "requests_total", status="5xx") == 0


def test_max_connections_reached_then_freed(
    make_router: Callable[..., RunningRouter], seeded: Seeded
) -> None:
    limit = 50
    router = make_router(MAX_CONNECTIONS=str(limit))
    image = seeded.get("dockerhub", "library/nginx")
    pull(router, image)
    held, _ = open_idle(router, limit)
    rejected = 0
    try:
        # connection 51 (and the next ones): a fast 503 and close, before any request
        for _ in range(3):
            with connect(router) as extra:
                start = time.monotonic()
                extra.settimeout(LATENCY_BOUND)
                data = b""
                while chunk := extra.recv(65536):
                    data += chunk
                elapsed = time.monotonic() - start
            rejected += 1
            assert data.startswith(b"HTTP/1.1 503 "), data[:100]
            assert b"\r\nConnection: close\r\n" in data
            assert json.loads(data.partition(b"\r\n\r\n")[2])["errors"][0]["code"] == "UNAVAILABLE"
            assert elapsed < LATENCY_BOUND
        # the connections inside the limit still pull normally
        assert pull(router, image, held[0]) < LATENCY_BOUND
        assert pull(router, image, held[-1]) < LATENCY_BOUND
        assert len(router.app.connections.active) == limit

        # ten of them go: ten new clients are served, fully
        for sock in held[:10]:
            sock.close()
        deadline = time.monotonic() + 5
        while len(router.app.connections.active) > limit - 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(router.app.connections.active) == limit - 10
        fresh = [connect(router) for _ in range(10)]
        try:
            for sock in fresh:
                assert pull(router, image, sock) < LATENCY_BOUND
            with connect(router) as extra:  # full again: 503
                data = b""
                while chunk := extra.recv(65536):
                    data += chunk
                rejected += 1
            assert data.startswith(b"HTTP/1.1 503 ")
        finally:
            for sock in fresh:
                sock.close()
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while router.app.connections.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pull(router, image) < LATENCY_BOUND  # one new connection each: all accepted
    samples = scrape(router)
    assert value(samples, P + "connections_rejected_total") == rejected
    assert value(samples, P + "requests_total", status="5xx") == 0  # rejections are no requests
