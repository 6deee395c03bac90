"""Micro benchmarks of the hot path's pure parts: route parsing and the L1 LRU cache.

Run with ``make bench`` (``pytest benchmarks/``). The cache benchmarks compare the pure-Python
twin with whatever ``harbor_router._cache`` selected (the compiled one when it is built).
"""

from __future__ import annotations

from typing import Any

import pytest

from harbor_router import _cache, _cache_py, errors
from harbor_router.routes import Router

DIGEST = "sha256:" + "ab" * 32
ENTRIES = 10_000

CACHES = pytest.mark.parametrize(
    "cache_class",
    [
        pytest.param(_cache_py.LRUCache, id="py"),
        pytest.param(_cache.LRUCache, id=f"selected-{_cache.IMPLEMENTATION}"),
    ],
)


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
def test_parse_invalid_name(benchmark: Any, router: Router) -> None:
    def parse() -> None:
        try:
            router.parse("GET", "/v2/proxy/Library/nginx/manifests/1.25", "")
        except errors.RegistryError:
            return
        raise AssertionError("an upper-case name must be refused")

    benchmark(parse)


def _filled(cache_class: type[Any]) -> Any:
    cache = cache_class(ENTRIES)
    for i in range(ENTRIES):
        cache.set(f"library/image-{i}", "dockerhub", float(i))
    return cache


@CACHES
@pytest.mark.benchmark(group="cache-get-hit")
def test_cache_get_hit(benchmark: Any, cache_class: type[Any]) -> None:
    cache = _filled(cache_class)
    assert benchmark(cache.get, "library/image-5000") == ("dockerhub", 5000.0)


@CACHES
@pytest.mark.benchmark(group="cache-get-miss")
def test_cache_get_miss(benchmark: Any, cache_class: type[Any]) -> None:
    cache = _filled(cache_class)
    assert benchmark(cache.get, "library/absent") is None


@CACHES
@pytest.mark.benchmark(group="cache-set-evict")
def test_cache_set_evicting(benchmark: Any, cache_class: type[Any]) -> None:
    cache = _filled(cache_class)
    keys = [f"acme/tool-{i}" for i in range(1024)]
    counter = iter(range(10**9))

    def set_one() -> None:
        cache.set(keys[next(counter) & 1023], "ghcr", 1.0)

    benchmark(set_one)
    assert len(cache) == ENTRIES
