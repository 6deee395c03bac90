"""Blob streaming with back-pressure: a stalled client stalls Harbor, nothing piles up.

The upstream here is a scripted HTTP/1.1 server (not the emulator) so the test can count how
many body bytes the router has taken from it while the client reads nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from router_runner import RunningRouter, router_config
from support_tools import free_port, kernel_tcp_buffering

CHUNK = 64 * 1024
BOUND = kernel_tcp_buffering(extra=256 * 1024)  # the client's rcvbuf
BLOB_SIZE = max(48 << 20, BOUND + (16 << 20)) // CHUNK * CHUNK
DIGEST = "sha256:" + "b" * 64


class BigBlobHarbor:
    """Serves one proxy project and one large blob; counts body bytes handed to the socket."""

    def __init__(self) -> None:
        self.sent = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self.chunk = bytes(range(256)) * (CHUNK // 256)

    def start(self) -> BigBlobHarbor:
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        self.port = fut.result(5)
        return self

    async def _start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target = head.split(b" ", 2)[:2]
                if target.startswith(b"/api/v2.0/projects?"):
                    body = json.dumps([{"project_id": 1, "name": "hub", "registry_id": 1}])
                    self._json(writer, body.encode())
                elif target.endswith(b"/summary"):
                    self._json(writer, b'{"registry": {"type": "docker-hub"}}')
                elif b"/blobs/" in target:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        b"Content-Length: %d\r\n\r\n" % BLOB_SIZE
                    )
                    if method == b"GET":
                        for _ in range(BLOB_SIZE // CHUNK):
                            writer.write(self.chunk)
                            await writer.drain()
                            self.sent += CHUNK
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _json(writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (len(body), body)
        )

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
def big_harbor() -> Iterator[BigBlobHarbor]:
    harbor = BigBlobHarbor().start()
    yield harbor
    harbor.close()


def test_stalled_client_stalls_upstream_then_gets_every_byte(big_harbor: BigBlobHarbor) -> None:
    config = router_config(f"http://127.0.0.1:{big_harbor.port}", "robot$x", "pw", free_port())
    router = RunningRouter(config).start()
    try:
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            sock.sendall(f"GET /v2/proxy/big/blobs/{DIGEST} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
            # Read nothing while the router relays: the upstream must stop being drained.
            deadline = time.monotonic() + 3
            previous = -1
            while time.monotonic() < deadline and big_harbor.sent != previous:
                previous = big_harbor.sent
                time.sleep(0.3)
            stalled_at = big_harbor.sent
            # only what the kernel buffers (autotuned, up to tcp_rmem's max) may leave Harbor
            assert stalled_at < BOUND, f"router buffered {stalled_at} bytes"
            digest = hashlib.sha256()
            received = 0
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            head, _, rest = head.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert b"Content-Length: %d" % BLOB_SIZE in head
            digest.update(rest)
            received += len(rest)
            while received < BLOB_SIZE:
                data = sock.recv(1 << 20)
                assert data, "connection closed early"
                digest.update(data)
                received += len(data)
        expected = hashlib.sha256(big_harbor.chunk * (BLOB_SIZE // CHUNK)).hexdigest()
        assert received == BLOB_SIZE
        assert digest.hexdigest() == expected
        assert big_harbor.sent == BLOB_SIZE
    finally:
        router.close()


def _router_for(big_harbor: BigBlobHarbor, path: str, **env: str) -> RunningRouter:
    """A router on ``big_harbor``; for the hit paths the blob is mapped first (a HEAD), and
    ``hit-copy`` has splicing off."""
    config = router_config(
        f"http://127.0.0.1:{big_harbor.port}", "robot$x", "pw", free_port(), **env
    )
    router = RunningRouter(config).start()
    try:
        if path != "miss":
            assert router.request("HEAD", f"/v2/proxy/big/blobs/{DIGEST}")[0] == 200  # mapped
        if path == "hit-copy":
            assert router.app.forwarder is not None
            router.app.forwarder.splice_min_bytes = None
    except BaseException:
        router.close()
        raise
    return router


def _finish_blob(sock: socket.socket, data: bytes, expected: str) -> None:
    """Reads the rest of the blob response ``data`` began: a 200 head, then every byte of
    the body, whose sha256 is ``expected``."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before the head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    digest = hashlib.sha256(rest)
    received = len(rest)
    while received < BLOB_SIZE:
        chunk = sock.recv(1 << 20)
        assert chunk, f"cut off after {received} of {BLOB_SIZE} bytes"
        digest.update(chunk)
        received += len(chunk)
    assert received == BLOB_SIZE and digest.hexdigest() == expected


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[int, bool]:
    """Everything the router sent before it closed: (bytes, closed within ``limit`` s)."""
    received = 0
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:  # closed with unread data on its side
        pass
    except TimeoutError:
        return received, False
    return received, True


@pytest.mark.parametrize("path", ["miss", "hit-splice", "hit-copy"])
def test_a_client_that_stops_reading_is_not_cut_off_by_the_upstream_read_timeout(
    path: str, big_harbor: BigBlobHarbor
) -> None:
    """UPSTREAM_READ_TIMEOUT=1s times Harbor, not the client: a client that reads nothing for
    3 s (Harbor held back by the router's back-pressure meanwhile) still gets every byte, on
    the fan-out's stream (a miss) and on the hit path, spliced or copied."""
    router = _router_for(big_harbor, path, UPSTREAM_READ_TIMEOUT="1s")
    target = f"GET /v2/proxy/big/blobs/{DIGEST} HTTP/1.1\r\nHost: r\r\n\r\n".encode()
    expected = hashlib.sha256(big_harbor.chunk * (BLOB_SIZE // CHUNK)).hexdigest()
    try:
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            sock.sendall(target)
            time.sleep(3.0)  # reads nothing: three read timeouts' worth
            _finish_blob(sock, b"", expected)
        assert "read_timeout" not in router.app.metrics.connection_errors
    finally:
        router.close()


@pytest.mark.parametrize("path", ["miss", "hit-splice", "hit-copy"])
def test_a_client_that_takes_nothing_is_cut_off_by_the_send_timeout(
    path: str, big_harbor: BigBlobHarbor
) -> None:
    """CLIENT_SEND_TIMEOUT=1s: a client that reads nothing of a blob is cut off, whichever
    path relays it; its upstream connection goes with it, the project's breaker counts
    nothing, and the router serves on."""
    router = _router_for(big_harbor, path, CLIENT_SEND_TIMEOUT="1s")
    metrics = router.app.metrics
    try:
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            sock.sendall(f"GET /v2/proxy/big/blobs/{DIGEST} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
            started = time.monotonic()
            while not metrics.connections_closed["send_timeout"]:
                assert time.monotonic() - started < 10, "never cut off"
                time.sleep(0.05)
            waited = time.monotonic() - started
            received, closed = _read_until_closed(sock, 5)
        assert closed, "the connection stayed open after the cut"
        assert 1.0 <= waited < 10
        assert received < BLOB_SIZE  # what the kernels held; the rest was never sent
        assert metrics.connections_closed["send_timeout"] == 1
        status, text = router.scrape()
        assert status == 200
        assert b'harbor_router_connections_closed_total{reason="send_timeout"} 1.0' in text
        sent = big_harbor.sent
        time.sleep(0.5)
        assert big_harbor.sent == sent < BLOB_SIZE  # the upstream connection was dropped
        assert router.app.breakers is not None
        assert router.app.breakers.get("hub").failures == 0
        assert router.app.breakers.states(["hub"]) == {"hub": "closed"}
        assert not set(metrics.connection_errors) - {"stale_keepalive"}
        assert router.request("HEAD", f"/v2/proxy/big/blobs/{DIGEST}")[0] == 200
    finally:
        router.close()


@pytest.mark.parametrize("path", ["hit-splice", "hit-copy"])
def test_a_slow_client_that_keeps_reading_is_not_cut_off(
    path: str, big_harbor: BigBlobHarbor
) -> None:
    """What the client takes starts CLIENT_SEND_TIMEOUT again: 256 KiB every 0.5 s for 5 s
    (two and a half timeouts of 2 s), then the rest at full speed, and every byte arrives.
    (TCP opens a closed window only once the client freed about half its receive buffer, so
    the router sees the client's steps in bursts, here about one a second.)"""
    router = _router_for(big_harbor, path, CLIENT_SEND_TIMEOUT="2s")
    expected = hashlib.sha256(big_harbor.chunk * (BLOB_SIZE // CHUNK)).hexdigest()
    try:
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            sock.sendall(f"GET /v2/proxy/big/blobs/{DIGEST} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
            time.sleep(0.9)  # the kernels' buffers fill: the client's turn from here on
            data = b""
            slow_until = time.monotonic() + 5
            while time.monotonic() < slow_until:
                step = len(data) + 256 * 1024
                while len(data) < step:
                    chunk = sock.recv(step - len(data))
                    assert chunk, f"cut off after {len(data)} bytes"
                    data += chunk
                time.sleep(0.5)
            _finish_blob(sock, data, expected)
        assert router.app.metrics.connections_closed["send_timeout"] == 0
    finally:
        router.close()
