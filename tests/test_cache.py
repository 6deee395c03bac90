"""The TTL/LRU cache twins: every case runs against the compiled module and the pure-Python one."""

from __future__ import annotations

import gc
import math
import os
import time
from types import ModuleType
from typing import Any

import pytest
from twins import implementations, selected

from harbor_router import _cache, _cache_py
from harbor_router.mapping import MappingCache


@pytest.fixture(params=implementations(_cache_py, "harbor_router._cache_c"))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return selected(request)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_compiled_module_loaded_when_required() -> None:
    if os.environ.get("HARBOR_ROUTER_REQUIRE_EXTENSIONS", "") in ("", "0"):
        pytest.skip("HARBOR_ROUTER_REQUIRE_EXTENSIONS is not set")
    assert _cache.IMPLEMENTATION == "c"
    assert _cache.TTLCache.__module__ == "harbor_router._cache_c"
    assert _cache.Memo.__module__ == "harbor_router._cache_c"


# ---------------------------------------------------------------------------------------------
# TTLCache


def test_get_set_and_stored_at(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(4, 10, clock=clock)
    assert cache.get("a") is None and cache.get_entry("a") is None
    cache.set("a", "dockerhub")
    assert cache.get("a") == "dockerhub"
    assert cache.get_entry("a") == ("dockerhub", 100.0)
    assert "a" in cache and "b" not in cache and len(cache) == 1
    assert cache.max_entries == 4 and cache.ttl == 10.0 and cache.now() == 100.0


def test_get_timed_is_get_with_the_clock_reading_it_used(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(2, 10, clock=clock)
    assert cache.get_timed("a") is None
    cache.set("a", "dockerhub")
    cache.set("b", "ghcr")
    clock.now = 107.5
    assert cache.get_timed("a") == ("dockerhub", 107.5)  # and "a" is now the most recent
    cache.set("c", "quay")  # evicts the least recently used: "b"
    assert cache.get("b") is None and cache.get("a") == "dockerhub"
    clock.now = 110.5
    assert cache.get_timed("a") is None  # expired at 110
    assert (cache.hits, cache.misses) == (2, 3)


def test_ttl_expiry_is_inclusive_then_lazy(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(4, 10, clock=clock)
    cache.set("a", 1)
    clock.now += 10
    assert cache.get("a") == 1  # live while now <= stored_at + ttl
    clock.now += 0.001
    assert "a" not in cache
    assert len(cache) == 1  # expired, not yet collected: membership changes nothing
    assert cache.get("a") is None
    assert len(cache) == 0
    assert (cache.hits, cache.misses, cache.expirations) == (1, 1, 1)


def test_per_entry_ttl(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(4, 10, clock=clock)
    cache.set("short", 1, 1.0)
    cache.set("long", 2, 100)
    cache.set("default", 3)
    cache.set("forever", 4, math.inf)
    clock.now += 5
    assert cache.get("short") is None
    assert cache.get("default") == 3
    clock.now += 50
    assert cache.get("default") is None
    assert cache.get("long") == 2
    clock.now += 1e9
    assert cache.get("long") is None and cache.get("forever") == 4


def test_overwrite_restarts_the_lifetime(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(4, 10, clock=clock)
    cache.set("a", 1)
    clock.now += 8
    cache.set("a", 2)
    clock.now += 8
    assert cache.get_entry("a") == (2, 108.0)


def test_non_positive_ttl_stores_nothing_and_deletes(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(4, 10, clock=clock)
    cache.set("a", 1)
    cache.set("a", 2, 0)
    cache.set("b", 3, -1.0)
    assert len(cache) == 0 and cache.get("a") is None
    with pytest.raises(ValueError):
        cache.set("a", 1, math.nan)


def test_evicts_least_recently_used(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(3, 10, clock=clock)
    for key in "abc":
        cache.set(key, key)
    assert cache.get("a") == "a"  # a is now the most recent
    cache.set("b", "B")  # so is b
    cache.set("d", "d")  # c goes
    assert cache.keys() == ["a", "b", "d"]
    assert cache.get("c") is None
    assert len(cache) == 3 and cache.evictions == 1 and cache.expirations == 0
    assert "a" in cache
    cache.set("e", "e")  # membership did not refresh a: it goes
    assert cache.keys() == ["b", "d", "e"]


def test_size_bound_under_churn(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(100, 10, clock=clock)
    for i in range(10_000):
        cache.set(f"k{i}", i)
        assert len(cache) <= 100
    assert len(cache) == 100 and cache.evictions == 9_900
    assert cache.keys() == [f"k{i}" for i in range(9_900, 10_000)]
    assert all(cache.get(f"k{i}") == i for i in range(9_900, 10_000))


def test_expired_entry_at_the_end_goes_as_an_expiration(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(2, 10, clock=clock)
    cache.set("old", 1, 1)
    cache.set("live", 2)
    clock.now += 2
    cache.set("new", 3)
    assert cache.keys() == ["live", "new"]
    assert (cache.evictions, cache.expirations) == (0, 1)


def test_delete(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(3, 10, clock=clock)
    cache.set("a", 1)
    cache.set("b", 2, 1)
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert cache.delete("missing") is False
    clock.now += 2
    assert cache.delete("b") is False  # it had expired
    assert len(cache) == 0 and cache.expirations == 1


def test_clear_keeps_counters(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(3, 10, clock=clock)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")
    cache.get("x")
    cache.clear()
    assert len(cache) == 0 and cache.keys() == [] and cache.get("a") is None
    assert (cache.hits, cache.misses) == (1, 2)
    cache.set("c", 3)  # usable again after clear
    assert cache.get("c") == 3


def test_purge_removes_every_expired_entry(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(10_000, 10, clock=clock)
    for i in range(10_000):
        cache.set(f"k{i}", i, 1 if i % 100 else 20)
    clock.now += 5
    assert cache.purge() == 9_900
    assert len(cache) == 100 and cache.expirations == 9_900
    assert cache.keys() == [f"k{i}" for i in range(0, 10_000, 100)]
    assert all(cache.get(f"k{i}") == i for i in range(0, 10_000, 100))
    for i in range(5_000):  # it grows again after shrinking
        cache.set(f"n{i}", i)
    assert len(cache) == 5_100 and cache.get("n4999") == 4999 and cache.get("k0") == 0


def test_counters(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(2, 10, clock=clock)
    cache.set("a", 1)
    cache.get("a")
    cache.get_entry("a")
    cache.get("b")
    cache.set("b", 2)
    cache.set("c", 3)
    assert (cache.hits, cache.misses, cache.evictions, cache.expirations) == (2, 1, 1, 0)


def test_values_may_be_any_object_and_are_released(impl: ModuleType, clock: Clock) -> None:
    class Value:
        pass

    cache = impl.TTLCache(2, 10, clock=clock)
    value = Value()
    cache.set("a", value)
    assert cache.get("a") is value
    released = []
    import weakref

    ref = weakref.ref(value, lambda _: released.append(True))
    del value
    cache.set("a", "other")
    gc.collect()
    assert released == [True] and ref() is None


class Reentrant:
    """A value whose finaliser uses the cache (or memo) that held it."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __del__(self) -> None:
        self.store.set("from-del", 1)
        self.store.get("a")


def test_a_value_finaliser_may_use_the_cache(impl: ModuleType, clock: Clock) -> None:
    cache = impl.TTLCache(2, 10, clock=clock)
    cache.set("a", Reentrant(cache))
    cache.set("a", 2)  # replacing drops the old value
    cache.set("b", Reentrant(cache))
    cache.set("c", 3)  # evicts a ...
    cache.set("d", 4)  # ... and b, whose __del__ writes
    assert len(cache) <= 2
    assert cache.get("d") == 4


@pytest.mark.parametrize(
    ("max_entries", "ttl"), [(0, 1), (-1, 1), (2**30 + 1, 1), (1, 0), (1, -1), (1, math.nan)]
)
def test_refuses_bad_arguments(impl: ModuleType, max_entries: int, ttl: float) -> None:
    with pytest.raises(ValueError):
        impl.TTLCache(max_entries, ttl)


def test_default_clock_is_monotonic_seconds(impl: ModuleType) -> None:
    cache = impl.TTLCache(2, 10)
    # CLOCK_MONOTONIC_COARSE lags time.monotonic() by at most a tick (a few ms).
    assert abs(cache.now() - time.monotonic()) < 0.05
    cache.set("a", 1)
    stored = cache.get_entry("a")
    assert stored is not None and abs(stored[1] - time.monotonic()) < 0.05


def test_compiled_cache_refuses_non_str_keys() -> None:
    compiled = pytest.importorskip("harbor_router._cache_c")
    cache = compiled.TTLCache(2, 10)
    for key in (1, b"a", None):
        with pytest.raises(TypeError):
            cache.set(key, 1)
        with pytest.raises(TypeError):
            cache.get(key)
        assert key not in cache


def test_subscriptable_for_annotations(impl: ModuleType) -> None:
    assert impl.TTLCache[float] is not None


# ---------------------------------------------------------------------------------------------
# Memo


def test_memo_get_set_replace_clear(impl: ModuleType) -> None:
    memo = impl.Memo(4)
    assert memo.get("a") is None and len(memo) == 0 and memo.max_entries == 4
    memo.set("a", 1)
    memo.set("b", 2)
    memo.set("a", 3)
    assert (memo.get("a"), memo.get("b"), memo.get("c"), len(memo)) == (3, 2, None, 2)
    memo.clear()
    assert memo.get("a") is None and len(memo) == 0
    memo.set("a", 4)
    assert memo.get("a") == 4 and len(memo) == 1


def test_memo_finds_keys_by_value_whatever_their_length_and_kind(impl: ModuleType) -> None:
    """Every length a word-at-a-time hash treats apart (empty, under 4, under 8, whole words,
    a word and a tail), keys that differ only in their last character, and str of wider
    kinds: each found by an equal str made afresh, none mistaken for another."""
    memo = impl.Memo(1000)
    keys = ["".join(["/v2/proxy/", "x" * n])[:n] for n in range(26)]
    keys += [k[:-1] + "z" for k in keys if k] + ["é" * 5, "é" * 9, "\u20ac" * 9, "\U0001f600" * 3]
    for i, key in enumerate(keys):
        memo.set(key, i)
    assert len(memo) == len(set(keys)) == len(keys)
    for i, key in enumerate(keys):
        assert memo.get("".join(list(key))) == i, repr(key)
    assert memo.get("x" * 26) is None and memo.get("é" * 4) is None


def test_memo_stays_bounded_and_empties_when_full(impl: ModuleType) -> None:
    memo = impl.Memo(8)
    for i in range(8):
        memo.set(f"k{i}", i)
    memo.set("k3", 33)  # a key it has: replaced, nothing dropped
    assert len(memo) == 8 and memo.get("k0") == 0 and memo.get("k3") == 33
    memo.set("new", 9)  # a new key into a full memo: emptied first
    assert len(memo) == 1 and memo.get("new") == 9 and memo.get("k0") is None
    for i in range(10_000):
        memo.set(f"churn/{i}", i)
        assert len(memo) <= 8
    assert memo.get("churn/9999") == 9999


def test_memo_releases_values_and_a_finaliser_may_use_it(impl: ModuleType) -> None:
    import weakref

    class Value:
        pass

    memo = impl.Memo(2)
    released: list[str] = []
    first, second = Value(), Value()
    refs = [weakref.ref(first, lambda _: released.append("replaced")),
            weakref.ref(second, lambda _: released.append("cleared"))]  # fmt: skip
    memo.set("a", first)
    memo.set("b", second)
    del first, second
    memo.set("a", "other")
    memo.clear()
    gc.collect()
    assert released == ["replaced", "cleared"] and refs[0]() is None
    memo.set("a", Reentrant(memo))
    memo.set("a", 2)  # replacing drops the old value
    memo.set("b", Reentrant(memo))
    memo.set("c", 3)  # a full memo empties: b's __del__ writes
    assert len(memo) <= 2 and memo.get("c") in (3, None)


def test_memo_refuses_bad_arguments(impl: ModuleType) -> None:
    for max_entries in (0, -1, 2**30 + 1):
        with pytest.raises(ValueError):
            impl.Memo(max_entries)
    with pytest.raises(TypeError):
        impl.Memo(2).set("a", None)
    assert impl.Memo[int] is not None


def test_compiled_memo_refuses_non_str_keys() -> None:
    compiled = pytest.importorskip("harbor_router._cache_c")

    class Text(str):
        pass

    memo = compiled.Memo(2)
    for key in (1, b"a", None, Text("a")):
        with pytest.raises(TypeError):
            memo.set(key, 1)
        with pytest.raises(TypeError):
            memo.get(key)


# ---------------------------------------------------------------------------------------------
# MappingCache (on whichever implementation _cache selected)


def test_mapping_expires_after_ttl(clock: Clock) -> None:
    mapping = MappingCache(10, ttl=300, clock=clock)
    mapping.set("library/nginx", "dockerhub")
    clock.now += 299
    assert mapping.get("library/nginx") == "dockerhub"
    clock.now += 2
    assert mapping.get("library/nginx") is None
    assert len(mapping) == 0


def test_mapping_forget_only_if_still_pointing_at_project(clock: Clock) -> None:
    mapping = MappingCache(10, ttl=300, clock=clock)
    mapping.set("acme/tool", "ghcr")
    mapping.forget("acme/tool", "quay")
    assert mapping.get("acme/tool") == "ghcr"
    mapping.forget("acme/tool", "ghcr")
    assert mapping.get("acme/tool") is None
    mapping.set("acme/tool", "ghcr")
    mapping.forget("acme/tool")
    assert mapping.get("acme/tool") is None


def test_stale_while_revalidate_window(clock: Clock) -> None:
    from harbor_router.mapping import FRESH, STALE

    mapping = MappingCache(10, ttl=10, stale_while_revalidate=5, clock=clock)
    mapping.set("acme/tool", "ghcr")
    assert mapping.lookup("acme/tool") == ("ghcr", FRESH)
    clock.now += 10
    assert mapping.lookup("acme/tool") == ("ghcr", FRESH)
    clock.now += 2
    assert mapping.lookup("acme/tool") == ("ghcr", STALE)
    clock.now += 3
    assert mapping.lookup("acme/tool") == ("ghcr", STALE)
    clock.now += 1
    assert mapping.lookup("acme/tool") is None
    assert len(mapping) == 0


def test_fresh_is_the_project_of_a_fresh_entry_only(clock: Clock) -> None:
    """What the fast path asks: the project while the entry is fresh, None once it is stale
    or gone; it looks the entry up (and counts it) just as lookup does."""
    mapping = MappingCache(10, ttl=10, stale_while_revalidate=5, clock=clock)
    assert mapping.fresh("acme/tool") is None
    mapping.set("acme/tool", "ghcr")
    mapping.set("old/tool", "quay", clock.now - 11)  # learnt elsewhere, stale already
    assert mapping.fresh("acme/tool") == "ghcr"
    assert mapping.fresh("old/tool") is None and mapping.lookup("old/tool") is not None
    clock.now += 10
    assert mapping.fresh("acme/tool") == "ghcr"
    clock.now += 1
    assert mapping.fresh("acme/tool") is None
    assert mapping.lookup("acme/tool") is not None  # stale, still there
    clock.now += 5
    assert mapping.fresh("acme/tool") is None and len(mapping) == 1
    positive = mapping.positive
    assert (positive.hits, positive.misses, positive.expirations) == (6, 2, 1)


def test_mapping_is_bounded_lru(clock: Clock) -> None:
    mapping = MappingCache(2, ttl=10, clock=clock)
    mapping.set("a/a", "p1")
    mapping.set("b/b", "p2")
    mapping.get("a/a")
    mapping.set("c/c", "p3")
    assert mapping.get("b/b") is None and mapping.get("a/a") == "p1" and len(mapping) == 2
    assert mapping.positive.evictions == 1


def test_negative_entries_expire_and_are_per_reference(clock: Clock) -> None:
    mapping = MappingCache(10, ttl=10, negative_ttl=30, clock=clock)
    mapping.set_negative(1, "library/nginx", "9.9")
    assert mapping.is_negative(1, "library/nginx", "9.9")
    assert not mapping.is_negative(1, "library/nginx", "1.25")
    assert not mapping.is_negative(2, "library/nginx", "9.9")
    clock.now += 30
    assert mapping.is_negative(1, "library/nginx", "9.9")
    clock.now += 1
    assert not mapping.is_negative(1, "library/nginx", "9.9")
    assert mapping.negative_count == 0


def test_negative_entries_do_not_evict_positive_ones(clock: Clock) -> None:
    mapping = MappingCache(2, ttl=10, negative_ttl=30, clock=clock)
    mapping.set("library/nginx", "dockerhub")
    for i in range(100):
        mapping.set_negative(1, "library/nginx", f"v{i}")
    assert mapping.get("library/nginx") == "dockerhub"
    assert mapping.negative_count == 2


def test_negative_cache_off_with_zero_ttl(clock: Clock) -> None:
    mapping = MappingCache(10, ttl=10, negative_ttl=0, clock=clock)
    mapping.set_negative(1, "a", "b")
    assert not mapping.is_negative(1, "a", "b")
    assert mapping.negative_count == 0
