"""Bounded LRU map of ``key -> (value, stored_at)``; the pure-Python twin of ``_cache_c``.

Freshness is the caller's business (``mapping.py``): the cache only remembers when an entry was
stored, evicts the least recently used entry past ``max_entries``, and forgets on request.
"""

from __future__ import annotations

from collections import OrderedDict


class LRUCache:
    __slots__ = ("_data", "_max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._data: OrderedDict[str, tuple[str, float]] = OrderedDict()

    @property
    def max_entries(self) -> int:
        return self._max_entries

    def get(self, key: str) -> tuple[str, float] | None:
        entry = self._data.get(key)
        if entry is not None:
            self._data.move_to_end(key)
        return entry

    def set(self, key: str, value: str, stored_at: float) -> None:
        data = self._data
        data[key] = (value, stored_at)
        data.move_to_end(key)
        if len(data) > self._max_entries:
            data.popitem(last=False)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
