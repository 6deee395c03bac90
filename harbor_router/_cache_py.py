"""Bounded LRU cache with a TTL per entry: the pure-Python twin of ``_cache_c``, and its spec.

Theory of operation. The L1 cache (DESIGN §3.1) backs the repository mapping, the negative
cache and the rate-limit buckets. All three want the same thing: a bounded map whose entries
die after a time that may differ per entry, read on every request, so every operation a
request makes is O(1) and nothing on a request walks the whole cache.

Contract (``TTLCache``; ``_cache_c.TTLCache`` behaves exactly the same):

- ``TTLCache(max_entries, ttl, *, clock=None)``: at most ``max_entries`` entries (1 to 2**30);
  ``ttl`` is the default lifetime in seconds (> 0; ``math.inf`` = never expires). ``clock``
  returns monotonic seconds; without one the cache reads the monotonic clock itself (the
  compiled cache: ``CLOCK_MONOTONIC_COARSE`` in C, a few ms resolution; this twin:
  :func:`time.monotonic`; both are the ``CLOCK_MONOTONIC`` time base). :meth:`now` is that
  clock, so callers compute ages and deadlines on the cache's own time base.
- Keys are ``str`` (the compiled cache raises ``TypeError`` for anything else, subclasses
  included; here the type checker enforces it). Values are any object except ``None``;
  ``TTLCache[V]`` types them (both classes can be subscripted).
- An entry stored at ``t`` with lifetime ``ttl`` is *live* while ``now() <= t + ttl`` and
  *expired* after. ``set(key, value, ttl=None)`` stores (or replaces) the entry with
  ``stored_at = now()`` and the given lifetime (the default when None) and makes it the most
  recently used; a lifetime ``<= 0`` stores nothing and removes any entry for ``key``; NaN is
  a ``ValueError``. Storing a new key into a full cache first removes the least recently used
  entry: that is an *eviction*, or an *expiration* if that entry had already expired.
- ``get(key)`` is the live value (and makes it the most recently used; a *hit*) or None (a
  *miss*). ``get_entry(key)`` is the same lookup returning ``(value, stored_at)``.
- Expiry is lazy: an expired entry stays (and counts in ``len``) until a lookup finds it — it
  is then removed, counted in ``expirations``, and the lookup is a miss — or it reaches the
  least recently used end and is the next to go, or :meth:`purge` runs. No timer, no scan on
  a request. ``purge()`` (O(n), for periodic housekeeping) removes every expired entry.
- ``delete(key)`` removes the entry; True only if it was live (an expired one is removed as an
  expiration and gives False). ``key in cache`` is True for a live entry and changes nothing:
  no LRU refresh, no counter, no removal. ``clear()`` drops every entry; counters are
  cumulative and survive it. ``keys()`` lists stored keys, least recently used first (O(n),
  for tests and debugging; may include expired entries not yet removed).
- Counters ``hits``, ``misses``, ``evictions``, ``expirations`` only ever grow.

``Memo`` (``_cache_c.Memo`` behaves the same) is a bounded ``str`` → value map for values that
can always be made again (the router's routes by request target): no time, no order, no
counters, O(1) per operation.

- ``Memo(max_entries)``: at most ``max_entries`` entries (1 to 2**30). Keys are ``str`` (the
  compiled memo raises ``TypeError`` for anything else); values are any object except None
  (``TypeError``). ``Memo[V]`` types them.
- ``get(key)`` is the value last ``set`` for ``key``, or None when it has none. ``set(key,
  value)`` keeps ``value`` for ``key``; a new key into a full memo empties it first. ``clear()``
  forgets everything; ``len`` counts the entries.
- A memo may keep less than it was given, never more: the compiled one does not keep a new key
  whose run of slots is taken (a flood of keys chosen to collide goes unmemoized; ``get`` is
  then None, as for a key never set), so a caller must be as right without an entry as with it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ("MAX_ENTRIES_LIMIT", "Memo", "TTLCache")

MAX_ENTRIES_LIMIT = 1 << 30

V = TypeVar("V")


class TTLCache(Generic[V]):
    """``TTLCache[V]``: values of type ``V`` (generic for the type checker only)."""

    __slots__ = (
        "_clock",
        "_data",
        "_evictions",
        "_expirations",
        "_hits",
        "_max_entries",
        "_misses",
        "_ttl",
    )

    def __init__(
        self, max_entries: int, ttl: float, *, clock: Callable[[], float] | None = None
    ) -> None:
        if not 1 <= max_entries <= MAX_ENTRIES_LIMIT:
            raise ValueError(f"max_entries must be between 1 and {MAX_ENTRIES_LIMIT}")
        if not ttl > 0:  # also refuses NaN
            raise ValueError("ttl must be a positive number of seconds")
        self._max_entries = max_entries
        self._ttl = float(ttl)
        self._clock = time.monotonic if clock is None else clock
        self._data: OrderedDict[str, tuple[V, float, float]] = OrderedDict()
        self._hits = self._misses = self._evictions = self._expirations = 0

    @property
    def max_entries(self) -> int:
        return self._max_entries

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses

    @property
    def evictions(self) -> int:
        return self._evictions

    @property
    def expirations(self) -> int:
        return self._expirations

    def now(self) -> float:
        return self._clock()

    def get(self, key: str) -> V | None:
        entry = self._lookup(key)
        return None if entry is None else entry[0]

    def get_timed(self, key: str) -> tuple[V, float] | None:
        """``(value, now)``: :meth:`get`'s value and the clock reading it was judged live by."""
        now = self._clock()
        entry = self._lookup(key, now)
        return None if entry is None else (entry[0], now)

    def get_entry(self, key: str) -> tuple[V, float] | None:
        entry = self._lookup(key)
        return None if entry is None else (entry[0], entry[1])

    def _lookup(self, key: str, now: float | None = None) -> tuple[V, float, float] | None:
        data = self._data
        entry = data.get(key)
        if entry is None:
            self._misses += 1
            return None
        if (self._clock() if now is None else now) > entry[2]:
            del data[key]
            self._expirations += 1
            self._misses += 1
            return None
        data.move_to_end(key)
        self._hits += 1
        return entry

    def set(self, key: str, value: V, ttl: float | None = None) -> None:
        if ttl is None:
            ttl = self._ttl
        elif math.isnan(ttl):
            raise ValueError("ttl must be a number of seconds, not NaN")
        data = self._data
        if ttl <= 0:
            data.pop(key, None)
            return
        now = self._clock()
        if key in data:
            data.move_to_end(key)
        elif len(data) >= self._max_entries:
            # Held until the method returns: a value's __del__ then finds the cache consistent.
            evicted = data.popitem(last=False)
            if now > evicted[1][2]:
                self._expirations += 1
            else:
                self._evictions += 1
        data[key] = (value, now, now + ttl)

    def delete(self, key: str) -> bool:
        entry = self._data.pop(key, None)
        if entry is None:
            return False
        if self._clock() > entry[2]:
            self._expirations += 1
            return False
        return True

    def purge(self) -> int:
        """Remove every expired entry now; the number removed. O(n): housekeeping only."""
        now = self._clock()
        data = self._data
        expired = [key for key, entry in data.items() if now > entry[2]]
        for key in expired:
            del data[key]
        self._expirations += len(expired)
        return len(expired)

    def clear(self) -> None:
        self._data.clear()

    def keys(self) -> list[str]:
        return list(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        entry = self._data.get(key)  # type: ignore[call-overload]
        return entry is not None and self._clock() <= entry[2]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__qualname__} {len(self)}/{self._max_entries} ttl={self._ttl}"
            f" hits={self._hits} misses={self._misses}>"
        )


class Memo(Generic[V]):
    """``Memo[V]``: values of type ``V`` (generic for the type checker only)."""

    __slots__ = ("_data", "_max_entries")

    def __init__(self, max_entries: int) -> None:
        if not 1 <= max_entries <= MAX_ENTRIES_LIMIT:
            raise ValueError(f"max_entries must be between 1 and {MAX_ENTRIES_LIMIT}")
        self._max_entries = max_entries
        self._data: dict[str, V] = {}

    @property
    def max_entries(self) -> int:
        return self._max_entries

    def get(self, key: str) -> V | None:
        return self._data.get(key)

    def set(self, key: str, value: V) -> None:
        if value is None:
            raise TypeError("a memo's values are not None")
        data = self._data
        if key not in data and len(data) >= self._max_entries:
            data.clear()
        data[key] = value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {len(self)}/{self._max_entries}>"
