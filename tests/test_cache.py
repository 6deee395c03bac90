"""The LRU cache twins: every case runs against the compiled module and the pure-Python one."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from harbor_router import _cache, _cache_py
from harbor_router.mapping import MappingCache


def _implementations() -> list[object]:
    params: list[object] = [pytest.param(_cache_py, id="py")]
    try:
        compiled = importlib.import_module("harbor_router._cache_c")
    except ImportError:
        marks = [] if os.environ.get("CI") == "true" else [pytest.mark.skip(reason="not built")]
        params.append(pytest.param(None, id="c", marks=marks))
    else:
        params.append(pytest.param(compiled, id="c"))
    return params


@pytest.fixture(params=_implementations())
def impl(request: pytest.FixtureRequest) -> ModuleType:
    if request.param is None:
        pytest.fail("harbor_router._cache_c is not built (CI=true)")
    return request.param  # type: ignore[no-any-return]


def test_compiled_module_loaded_when_required() -> None:
    if os.environ.get("HARBOR_ROUTER_REQUIRE_EXTENSIONS", "") in ("", "0"):
        pytest.skip("HARBOR_ROUTER_REQUIRE_EXTENSIONS is not set")
    assert _cache.IMPLEMENTATION == "c"
    assert _cache.LRUCache.__module__ == "harbor_router._cache_c"


def test_get_set_and_stored_at(impl: ModuleType) -> None:
    cache = impl.LRUCache(4)
    assert cache.get("a") is None
    cache.set("a", "dockerhub", 1.5)
    assert cache.get("a") == ("dockerhub", 1.5)
    assert "a" in cache and len(cache) == 1


def test_evicts_least_recently_used(impl: ModuleType) -> None:
    cache = impl.LRUCache(2)
    cache.set("a", "p1", 0.0)
    cache.set("b", "p2", 0.0)
    assert cache.get("a") is not None  # a is now the most recent
    cache.set("c", "p3", 0.0)
    assert cache.get("b") is None
    assert cache.get("a") == ("p1", 0.0)
    assert cache.get("c") == ("p3", 0.0)
    assert len(cache) == 2


def test_overwrite_moves_to_front_and_keeps_size(impl: ModuleType) -> None:
    cache = impl.LRUCache(2)
    cache.set("a", "p1", 0.0)
    cache.set("b", "p2", 0.0)
    cache.set("a", "p9", 3.0)
    cache.set("c", "p3", 0.0)
    assert cache.get("a") == ("p9", 3.0)
    assert cache.get("b") is None
    assert len(cache) == 2


def test_delete_and_clear(impl: ModuleType) -> None:
    cache = impl.LRUCache(3)
    cache.set("a", "p1", 0.0)
    cache.set("b", "p2", 0.0)
    cache.delete("a")
    cache.delete("missing")
    assert cache.get("a") is None and len(cache) == 1
    cache.clear()
    assert len(cache) == 0 and cache.get("b") is None


def test_refuses_zero_capacity(impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        impl.LRUCache(0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_mapping_expires_after_ttl() -> None:
    clock = Clock()
    mapping = MappingCache(10, ttl=300, clock=clock)
    mapping.set("library/nginx", "dockerhub")
    clock.now += 299
    assert mapping.get("library/nginx") == "dockerhub"
    clock.now += 2
    assert mapping.get("library/nginx") is None
    assert len(mapping) == 0


def test_mapping_forget_only_if_still_pointing_at_project() -> None:
    mapping = MappingCache(10, ttl=300, clock=Clock())
    mapping.set("acme/tool", "ghcr")
    mapping.forget("acme/tool", "quay")
    assert mapping.get("acme/tool") == "ghcr"
    mapping.forget("acme/tool", "ghcr")
    assert mapping.get("acme/tool") is None


def test_stale_while_revalidate_window() -> None:
    from harbor_router.mapping import FRESH, STALE

    clock = Clock()
    mapping = MappingCache(10, ttl=10, stale_while_revalidate=5, clock=clock)
    mapping.set("acme/tool", "ghcr")
    assert mapping.lookup("acme/tool") == ("ghcr", FRESH)
    clock.now += 12
    assert mapping.lookup("acme/tool") == ("ghcr", STALE)
    clock.now += 4
    assert mapping.lookup("acme/tool") is None
    assert len(mapping) == 0


def test_negative_entries_expire_and_are_per_reference() -> None:
    clock = Clock()
    mapping = MappingCache(10, ttl=10, negative_ttl=30, clock=clock)
    mapping.set_negative(1, "library/nginx", "9.9")
    assert mapping.is_negative(1, "library/nginx", "9.9")
    assert not mapping.is_negative(1, "library/nginx", "1.25")
    assert not mapping.is_negative(2, "library/nginx", "9.9")
    clock.now += 31
    assert not mapping.is_negative(1, "library/nginx", "9.9")
    assert mapping.negative_count == 0


def test_negative_cache_off_with_zero_ttl() -> None:
    mapping = MappingCache(10, ttl=10, negative_ttl=0, clock=Clock())
    mapping.set_negative(1, "a", "b")
    assert not mapping.is_negative(1, "a", "b")
