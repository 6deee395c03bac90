"""Stateful model test: both cache twins agree with a dict-and-list model of the contract.

Hypothesis drives the compiled cache (when built), the pure-Python twin and the model with the
same operations — set (default, per-entry and non-positive TTLs), get, get_entry, delete,
membership, purge, clear and a fake clock moving forward — and checks after every step that
all of them agree on results, LRU order, counters and the size bound. Times and TTLs are whole
seconds, so "expires exactly now" comes up often and float rounding never decides.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from harbor_router import _cache_py

KEYS = st.sampled_from("abcdefghijklmnop")
TTLS = st.one_of(st.none(), st.integers(min_value=-1, max_value=6).map(float))


def _implementations() -> dict[str, Any]:
    found: dict[str, Any] = {"py": _cache_py}
    try:
        found["c"] = importlib.import_module("harbor_router._cache_c")
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
    return found


IMPLEMENTATIONS = _implementations()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Model:
    """The contract in the plainest terms: ``entries[key] = (value, stored_at, expires_at)``,
    ``order`` least recently used first."""

    def __init__(self, max_entries: int, ttl: float, clock: Clock) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self.entries: dict[str, tuple[int, float, float]] = {}
        self.order: list[str] = []
        self.hits = self.misses = self.evictions = self.expirations = 0

    def _expired(self, key: str) -> bool:
        return self.clock.now > self.entries[key][2]

    def _remove(self, key: str) -> None:
        del self.entries[key]
        self.order.remove(key)

    def _touch(self, key: str) -> None:
        self.order.remove(key)
        self.order.append(key)

    def set(self, key: str, value: int, ttl: float | None) -> None:
        lifetime = self.ttl if ttl is None else ttl
        if lifetime <= 0:
            if key in self.entries:
                self._remove(key)
            return
        now = self.clock.now
        if key in self.entries:
            self._touch(key)
        else:
            if len(self.entries) >= self.max_entries:
                oldest = self.order[0]
                if self._expired(oldest):
                    self.expirations += 1
                else:
                    self.evictions += 1
                self._remove(oldest)
            self.order.append(key)
        self.entries[key] = (value, now, now + lifetime)

    def get_entry(self, key: str) -> tuple[int, float] | None:
        if key not in self.entries:
            self.misses += 1
            return None
        if self._expired(key):
            self._remove(key)
            self.expirations += 1
            self.misses += 1
            return None
        self.hits += 1
        self._touch(key)
        value, stored_at, _ = self.entries[key]
        return value, stored_at

    def get(self, key: str) -> int | None:
        entry = self.get_entry(key)
        return None if entry is None else entry[0]

    def delete(self, key: str) -> bool:
        if key not in self.entries:
            return False
        live = not self._expired(key)
        if not live:
            self.expirations += 1
        self._remove(key)
        return live

    def contains(self, key: str) -> bool:
        return key in self.entries and not self._expired(key)

    def purge(self) -> int:
        expired = [key for key in self.order if self._expired(key)]
        for key in expired:
            self._remove(key)
        self.expirations += len(expired)
        return len(expired)

    def clear(self) -> None:
        self.entries.clear()
        self.order.clear()


class CacheAgreement(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.model: Model | None = None
        self.caches: dict[str, Any] = {}

    # 12 entries: the compiled cache grows past its first 8 slots and shrinks back on purge.
    @initialize(max_entries=st.sampled_from([1, 2, 3, 5, 12]), ttl=st.integers(1, 5))
    def build(self, max_entries: int, ttl: int) -> None:
        self.model = Model(max_entries, float(ttl), self.clock)
        self.caches = {
            name: module.TTLCache(max_entries, float(ttl), clock=self.clock)
            for name, module in IMPLEMENTATIONS.items()
        }

    def _all(self, method: str, *args: Any) -> None:
        assert self.model is not None
        if method == "__contains__":
            expected = self.model.contains(*args)
        else:
            expected = getattr(self.model, method)(*args)
        for name, cache in self.caches.items():
            got = getattr(cache, method)(*args)
            assert got == expected, (name, method, args, got, expected)

    @rule(key=KEYS, value=st.integers(0, 99), ttl=TTLS)
    def set(self, key: str, value: int, ttl: float | None) -> None:
        self._all("set", key, value, ttl)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        self._all("get", key)

    @rule(key=KEYS)
    def get_entry(self, key: str) -> None:
        self._all("get_entry", key)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self._all("delete", key)

    @rule(key=KEYS)
    def contains(self, key: str) -> None:
        self._all("__contains__", key)

    @rule(seconds=st.integers(0, 4))
    def advance(self, seconds: int) -> None:
        self.clock.now += seconds

    @rule()
    def purge(self) -> None:
        self._all("purge")

    @precondition(lambda self: self.model is not None and len(self.model.entries) > 2)
    @rule()
    def clear(self) -> None:
        self._all("clear")

    @invariant()
    def agree(self) -> None:
        model = self.model
        if model is None:
            return
        for name, cache in self.caches.items():
            state = (
                cache.keys(),
                len(cache),
                cache.hits,
                cache.misses,
                cache.evictions,
                cache.expirations,
            )
            expected = (
                model.order,
                len(model.entries),
                model.hits,
                model.misses,
                model.evictions,
                model.expirations,
            )
            assert state == expected, (name, state, expected)
            assert len(cache) <= model.max_entries


CacheAgreement.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, derandomize=True, deadline=None
)
TestCacheAgreement = CacheAgreement.TestCase
