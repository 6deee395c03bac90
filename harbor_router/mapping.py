"""The repository → project mapping and the negative cache, on ``_cache`` (DESIGN §3.1).

Positive entries are per repository: one serves every tag, digest, blob and tag list of it.
An entry is *fresh* for ``CACHE_TTL``, then *stale* for ``STALE_WHILE_REVALIDATE`` more — still
used, while one background refresh runs — and gone after that. Negative entries are per
``(route kind, repository, reference)`` and only ever written when every project gave a
definite 404.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from ._cache import LRUCache

FRESH: Final = 1
STALE: Final = 2


class MappingCache:
    __slots__ = ("_clock", "_lru", "_negative", "_negative_ttl", "_stale_until", "_ttl")

    def __init__(
        self,
        max_entries: int,
        ttl: float,
        *,
        stale_while_revalidate: float = 0.0,
        negative_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lru = LRUCache(max_entries)
        self._negative = LRUCache(max_entries)
        self._ttl = ttl
        self._stale_until = ttl + stale_while_revalidate
        self._negative_ttl = negative_ttl
        self._clock = clock

    # positive entries
    def lookup(self, name: str) -> tuple[str, int] | None:
        """``(project, FRESH or STALE)``, or None when there is no usable entry."""
        entry = self._lru.get(name)
        if entry is None:
            return None
        project, stored_at = entry
        age = self._clock() - stored_at
        if age <= self._ttl:
            return project, FRESH
        if age <= self._stale_until:
            return project, STALE
        self._lru.delete(name)
        return None

    def get(self, name: str) -> str | None:
        found = self.lookup(name)
        return None if found is None else found[0]

    def set(self, name: str, project: str) -> None:
        self._lru.set(name, project, self._clock())

    def forget(self, name: str, project: str | None = None) -> None:
        """Drop the mapping (only if it still points at ``project``, when one is given)."""
        if project is not None:
            entry = self._lru.get(name)
            if entry is None or entry[0] != project:
                return
        self._lru.delete(name)

    def __len__(self) -> int:
        return len(self._lru)

    # negative entries
    def is_negative(self, kind: int, name: str, reference: str) -> bool:
        if not self._negative_ttl:
            return False
        key = f"{kind}:{name}:{reference}"
        entry = self._negative.get(key)
        if entry is None:
            return False
        if self._clock() - entry[1] <= self._negative_ttl:
            return True
        self._negative.delete(key)
        return False

    def set_negative(self, kind: int, name: str, reference: str) -> None:
        if self._negative_ttl:
            self._negative.set(f"{kind}:{name}:{reference}", "", self._clock())

    @property
    def negative_count(self) -> int:
        return len(self._negative)
