"""Small helpers shared by the test fixtures: external tools and free loopback ports."""

from __future__ import annotations

import collections
import os
import shutil
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator

import pytest


def require_tool(name: str) -> str:
    """Return the path of an external tool, or skip (locally) / fail (in CI) without it."""
    path = shutil.which(name)
    if path is None:
        reason = f"required tool {name!r} is not installed (apt: see .ci/run)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=256)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and not one of the last 256 this
    process handed out (two ports asked for in a row, say LISTEN_ADDR and METRICS_ADDR, could
    otherwise be the same one: nothing holds the first until the router binds it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port


def kernel_tcp_buffering(extra: int = 0) -> int:
    """Bytes that loopback TCP can hold in flight with nobody reading: the largest autotuned
    receive buffer, two send buffers (sender and relay) and ``extra`` (a pipe, a set rcvbuf),
    plus 1 MiB of slack. A relay that stalls its upstream takes at most this much from it."""

    def largest(path: str, default: int) -> int:
        try:
            with open(path) as f:
                return int(f.read().split()[-1])
        except (OSError, ValueError, IndexError):
            return default

    rmem = largest("/proc/sys/net/ipv4/tcp_rmem", 6 << 20)
    wmem = largest("/proc/sys/net/ipv4/tcp_wmem", 4 << 20)
    return rmem + 2 * wmem + extra + (1 << 20)


def read_response(sock: socket.socket, head_only: bool = False) -> tuple[bytes, bytes]:
    """One whole response with a ``Content-Length`` body (0 without one, or for a HEAD:
    ``head_only``) off ``sock``: its head (up to the blank line, not included) and its body;
    nothing may follow it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and not head_only:
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "truncated body"
        body += chunk
    assert len(body) == length, "more bytes than the response had"
    return head, body


def request_heads(sock: socket.socket) -> Iterator[bytes]:
    """The request heads (no bodies) a client sends on ``sock``, each without its blank line,
    until it closes the connection."""
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        yield head


class LoopbackServer:
    """A threaded TCP server on a free loopback port (``port``) that hands every connection it
    accepts to ``serve`` on a thread of its own; :meth:`close` stops it."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
