"""The mapping tiers: L1 in-process (``mapping.py``) in front of L2 Redis (``shared.py``).

Reads try L1, then Redis, then the caller fans out (DESIGN §3.1); what Redis knew is copied into
L1 with its original age, so stale-while-revalidate is the same on every pod. Writes go to L1 at
once and to Redis in the background: a slow or absent Redis never delays a response by more
than one read's timeout, and a cache hit in L1 never waits on Redis at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from .mapping import MappingCache
from .shared import SharedStore, wall_to_monotonic

MAX_BACKGROUND_WRITES = 1024


class Tiers:
    def __init__(self, l1: MappingCache, shared: SharedStore | None) -> None:
        self.l1 = l1
        self.shared = shared
        self._writes: set[asyncio.Task[Any]] = set()
        self.dropped_writes = 0
        #: Redis reads and writes skipped because the store was down: the request used L1 (or
        #: fanned out) instead. With ``SharedStore.fallbacks`` this is redis_fallback_total.
        self.fallbacks = 0

    async def lookup(self, name: str) -> tuple[str, int] | None:
        """``(project, FRESH or STALE)`` from L1, else from Redis (then kept in L1)."""
        found = await self.lookup_from(name)
        return None if found is None else found[:2]

    async def lookup_from(self, name: str) -> tuple[str, int, bool] | None:
        """As :meth:`lookup`, plus whether the answer came from Redis."""
        found = self.l1.lookup(name)
        shared = self.shared
        if found is not None:
            if shared is not None:
                shared.touch(name)
            return found[0], found[1], False
        if shared is None:
            return None
        if not shared.available:
            self.fallbacks += 1
            return None
        remote = await shared.get_mapping(name)
        if remote is None:
            return None
        project, stored_at = remote
        self.l1.set(name, project, wall_to_monotonic(stored_at))
        shared.touch(name)
        found = self.l1.lookup(name)
        return None if found is None else (found[0], found[1], True)

    def is_negative(self, kind: int, name: str, reference: str) -> bool:
        """In L1's negative cache (no I/O: checked before every lookup)."""
        return self.l1.is_negative(kind, name, reference)

    async def is_negative_shared(self, kind: int, name: str, reference: str) -> bool:
        """In Redis's negative entries (asked only after both tiers missed the mapping)."""
        shared = self.shared
        if shared is None:
            return False
        if not shared.available:
            self.fallbacks += 1
            return False
        if await shared.is_negative(kind, name, reference):
            self.l1.set_negative(kind, name, reference)
            return True
        return False

    def record(self, name: str, project: str) -> None:
        self.l1.set(name, project)
        if self.shared is not None:
            self.shared.touch(name)
            self._write(self.shared.set_mapping(name, project))

    def forget(self, name: str, project: str | None = None) -> None:
        self.l1.forget(name, project)
        if self.shared is not None:
            self._write(self.shared.delete_mapping(name, project))

    def record_negative(self, kind: int, name: str, reference: str) -> None:
        self.l1.set_negative(kind, name, reference)
        if self.shared is not None:
            self._write(self.shared.set_negative(kind, name, reference))

    def _write(self, coro: Coroutine[Any, Any, object]) -> None:
        if (
            len(self._writes) >= MAX_BACKGROUND_WRITES
            or not self.shared
            or not self.shared.available
        ):
            coro.close()  # Redis is down or saturated: L1 has it, Redis will learn it later
            self.dropped_writes += 1
            if self.shared is not None and not self.shared.available:
                self.fallbacks += 1
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=1.0)
        for task in list(self._writes):
            task.cancel()
