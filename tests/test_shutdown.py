"""Graceful shutdown of the process (``serve()``): SIGTERM during a slow blob download.

Readiness goes 503 at once, the port stops accepting, idle keep-alive connections are closed,
the download in flight finishes byte-exact, and the process exits 0.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from support_tools import free_port, read_response
from test_streaming import BLOB_SIZE, CHUNK, DIGEST, BigBlobHarbor

pytestmark = pytest.mark.integration


@pytest.fixture
def big_upstream() -> Iterator[BigBlobHarbor]:
    upstream = BigBlobHarbor().start()
    yield upstream
    upstream.close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length body."""
    head, body = read_response(sock)
    return head + b"\r\n\r\n" + body


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode()
        try:
            with _connect(port) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                if _response(sock).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("router never became ready")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_a_download_and_exits_zero(big_upstream: BigBlobHarbor) -> None:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HARBOR_URL": f"http://127.0.0.1:{big_upstream.port}",
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "AUTH_MODE": "none",
        "SHUTDOWN_GRACE": "20s",
    }
    if "HARBOR_ROUTER_NO_EXTENSIONS" in os.environ:
        env["HARBOR_ROUTER_NO_EXTENSIONS"] = os.environ["HARBOR_ROUTER_NO_EXTENSIONS"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "harbor_router"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(port, proc)
        idle = _connect(port)  # a keep-alive connection that answered once, now idle
        idle.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(idle).startswith(b"HTTP/1.1 200")
        arriving = _connect(port)  # a request head on its way when SIGTERM comes
        arriving.sendall(b"GET /readyz HTTP/1.1\r\n")
        download = _connect(port)
        download.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        download.sendall(f"GET /v2/proxy/big/blobs/{DIGEST} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += download.recv(65536)
        head, _, first = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % BLOB_SIZE in head

        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not _refused(port):
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        idle.settimeout(5)
        assert idle.recv(65536) == b"", "the idle keep-alive connection is closed"
        arriving.sendall(b"Host: x\r\n\r\n")
        ready = _response(arriving)
        assert ready.startswith(b"HTTP/1.1 503"), ready
        assert b"shutting down" in ready and b"Connection: close" in ready
        assert proc.poll() is None, "exited with a download in flight"

        digest = hashlib.sha256(first)
        received = len(first)
        while received < BLOB_SIZE:  # the rest, still throttled for a while
            chunk = download.recv(1 << 20)
            assert chunk, f"closed after {received} of {BLOB_SIZE} bytes"
            digest.update(chunk)
            received += len(chunk)
            if received < BLOB_SIZE // 8:
                time.sleep(0.01)
        assert download.recv(65536) == b"", "closed after the response while draining"
        expected = hashlib.sha256(big_upstream.chunk * (BLOB_SIZE // CHUNK)).hexdigest()
        assert digest.hexdigest() == expected
        assert proc.wait(timeout=15) == 0
        for sock in (idle, arriving, download):
            sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.communicate(timeout=5)
