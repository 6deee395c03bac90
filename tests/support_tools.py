"""Small helpers shared by the test fixtures: external tools and free loopback ports."""

from __future__ import annotations

import collections
import os
import shutil
import socket

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
