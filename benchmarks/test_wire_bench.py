"""The per-request byte work, compiled twin vs pure-Python twin, side by side.

``make bench``; groups pair the two implementations of each function.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Any

import pytest

from harbor_router import _wire_py

HEADERS = [
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Thu, 03 Dec 2026 09:28:10 GMT"),
    (b"Content-Type", b"application/vnd.oci.image.manifest.v1+json"),
    (b"Content-Length", b"489"),
    (b"Connection", b"keep-alive"),
    (b"ETag", b'"sha256:' + b"a" * 64 + b'"'),
    (b"Docker-Content-Digest", b"sha256:" + b"a" * 64),
]


def _twins() -> list[Any]:
    params = [pytest.param(_wire_py, id="py")]
    with contextlib.suppress(ImportError):
        params.append(pytest.param(importlib.import_module("harbor_router._wire_c"), id="c"))
    return params


TWINS = pytest.mark.parametrize("wire", _twins())


@TWINS
@pytest.mark.benchmark(group="wire-valid-name")
def test_valid_name(benchmark: Any, wire: ModuleType) -> None:
    assert benchmark(wire.valid_name, "library/nginx-proxy_cache")


@TWINS
@pytest.mark.benchmark(group="wire-valid-digest")
def test_valid_digest(benchmark: Any, wire: ModuleType) -> None:
    assert benchmark(wire.valid_digest, "sha256:" + "ab" * 32)


@TWINS
@pytest.mark.benchmark(group="wire-end-to-end")
def test_end_to_end(benchmark: Any, wire: ModuleType) -> None:
    out, known = benchmark(wire.end_to_end, HEADERS, b"/v2/dockerhub/", b"/v2/proxy/")
    assert known == 489 and len(out) == 6


@TWINS
@pytest.mark.benchmark(group="wire-build-head")
def test_build_head(benchmark: Any, wire: ModuleType) -> None:
    out, _ = _wire_py.end_to_end(HEADERS, b"/v2/dockerhub/", b"/v2/proxy/")
    head = benchmark(wire.build_head, b"HTTP/1.1 200 OK\r\n", out, b"", -1, False)
    assert head.endswith(b"\r\n\r\n")
