"""Micro benchmarks of route parsing (the L1 cache has its own: ``test_cache_bench.py``).

Run with ``make bench`` (``pytest benchmarks/``).
"""

from __future__ import annotations

from typing import Any

import pytest

from harbor_router import errors
from harbor_router.routes import Router

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def router() -> Router:
    return Router("proxy")


@pytest.mark.benchmark(group="routes")
def test_parse_manifest_tag(benchmark: Any, router: Router) -> None:
    route = benchmark(router.parse, "GET", "/v2/proxy/library/nginx/manifests/1.25", "")
    assert (route.name, route.reference) == ("library/nginx", "1.25")


@pytest.mark.benchmark(group="routes")
def test_parse_blob_digest(benchmark: Any, router: Router) -> None:
    route = benchmark(router.parse, "GET", f"/v2/proxy/library/nginx/blobs/{DIGEST}", "")
    assert route.reference == DIGEST


@pytest.mark.benchmark(group="routes")
def test_parse_host_prefixed(benchmark: Any, router: Router) -> None:
    route = benchmark(router.parse, "GET", "/v2/proxy/ghcr.io/acme/tool/manifests/v1", "")
    assert (route.host, route.upstream) == ("ghcr.io", "acme/tool")


@pytest.mark.benchmark(group="routes")
def test_parse_ns_hint(benchmark: Any, router: Router) -> None:
    route = benchmark(router.parse, "GET", "/v2/proxy/library/nginx/manifests/1.25", "ns=docker.io")
    assert (route.host, route.key) == ("docker.io", "docker.io/library/nginx")


@pytest.mark.benchmark(group="routes")
def test_parse_invalid_name(benchmark: Any, router: Router) -> None:
    def parse() -> None:
        try:
            router.parse("GET", "/v2/proxy/Library/nginx/manifests/1.25", "")
        except errors.RegistryError:
            return
        raise AssertionError("an upper-case name must be refused")

    benchmark(parse)
