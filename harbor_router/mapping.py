"""The repository → project mapping and the negative cache, on ``_cache`` (DESIGN §3.1).

Positive entries are per repository: one serves every tag, digest, blob and tag list of it.
An entry is *fresh* for ``CACHE_TTL``, then *stale* for ``STALE_WHILE_REVALIDATE`` more — still
used, while one background refresh runs — and gone after that: the cache keeps it for
``CACHE_TTL + STALE_WHILE_REVALIDATE`` and its stored-at time tells fresh from stale. Negative
entries are per ``(route kind, repository, reference)``, live ``NEGATIVE_CACHE_TTL`` (0 = off)
and are only ever written when every project gave a definite 404. They sit in a cache of their
own, so a flood of lookups for things that do not exist cannot evict the positive mappings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ._cache import TTLCache
from ._wire import Seconds

FRESH: Final = 1
STALE: Final = 2


class MappingCache:
    """Both caches hold at most ``max_entries`` each; ``clock`` (monotonic seconds) is for tests."""

    __slots__ = ("_lifetime", "_lru", "_negative", "_negative_ttl", "_ttl")

    def __init__(
        self,
        max_entries: int,
        ttl: float,
        *,
        stale_while_revalidate: float = 0.0,
        negative_ttl: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        # values are (project, stored_at): an entry learnt from Redis keeps its original age
        self._lru: TTLCache[tuple[str, float]] = TTLCache(
            max_entries, ttl + stale_while_revalidate, clock=clock
        )
        self._lifetime = ttl + stale_while_revalidate
        self._negative: TTLCache[bool] = TTLCache(max_entries, negative_ttl or 1.0, clock=clock)
        self._ttl: Seconds = ttl
        self._negative_ttl: Seconds = negative_ttl  # (compiled, its truth test a C one)

    @property
    def positive(self) -> TTLCache[tuple[str, float]]:
        """The positive cache, for its counters."""
        return self._lru

    @property
    def negative(self) -> TTLCache[bool]:
        """The negative cache, for its counters."""
        return self._negative

    @property
    def ttl(self) -> float:
        """``CACHE_TTL``: an entry older than this is stale."""
        return self._ttl

    # positive entries
    def lookup(self, name: str) -> tuple[str, int] | None:
        """``(project, FRESH or STALE)``, or None when there is no usable entry."""
        found = self._lru.get_timed(name)
        if found is None:
            return None
        stored_at: Seconds  # (C doubles compiled: the age is judged with no float made)
        now: Seconds
        (project, stored_at), now = found
        return project, FRESH if now - stored_at <= self._ttl else STALE

    def fresh(self, name: str) -> str | None:
        """The project of a fresh entry for ``name``, else None: :meth:`lookup` for the fast
        path, which takes only fresh ones (a stale entry is looked up and counted the same)."""
        found = self._lru.get_timed(name)
        if found is None:
            return None
        stored_at: Seconds  # (as in lookup)
        now: Seconds
        (project, stored_at), now = found
        return project if now - stored_at <= self._ttl else None

    def get(self, name: str) -> str | None:
        found = self.lookup(name)
        return None if found is None else found[0]

    def now(self) -> float:
        """The caches' clock (monotonic seconds)."""
        return self._lru.now()

    def set(self, name: str, project: str, stored_at: float | None = None) -> None:
        """Map ``name``; ``stored_at`` (this clock) keeps the age of an entry learnt elsewhere."""
        lru = self._lru
        if stored_at is None:
            lru.set(name, (project, lru.now()))
            return
        remaining = self._lifetime - (lru.now() - stored_at)
        if remaining > 0:
            lru.set(name, (project, stored_at), remaining)

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
        negative = self._negative
        if not self._negative_ttl or not len(negative):
            return False
        return negative.get(f"{kind}:{name}:{reference}") is not None

    def set_negative(self, kind: int, name: str, reference: str) -> None:
        if self._negative_ttl:
            self._negative.set(f"{kind}:{name}:{reference}", True)

    @property
    def negative_count(self) -> int:
        return len(self._negative)
