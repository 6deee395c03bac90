"""The repository → project mapping, on the bounded LRU cache of ``_cache`` (DESIGN §3.1)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ._cache import LRUCache


class MappingCache:
    """One positive entry per repository name serves every tag, digest, blob and tag list."""

    __slots__ = ("_clock", "_lru", "_ttl")

    def __init__(
        self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lru = LRUCache(max_entries)
        self._ttl = ttl
        self._clock = clock

    def get(self, name: str) -> str | None:
        entry = self._lru.get(name)
        if entry is None:
            return None
        project, stored_at = entry
        if self._clock() - stored_at > self._ttl:
            self._lru.delete(name)
            return None
        return project

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
