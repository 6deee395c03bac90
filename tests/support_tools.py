"""Small helpers shared by the test fixtures: external tools and free loopback ports."""

from __future__ import annotations

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
