"""Selects the compiled LRU cache or its pure-Python twin (DESIGN §9)."""

from typing import TYPE_CHECKING

from ._speedups_env import NO_EXTENSIONS, REQUIRE_EXTENSIONS

IMPLEMENTATION: str

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._cache_py import LRUCache

    IMPLEMENTATION = "py"
else:
    try:
        from ._cache_c import LRUCache

        IMPLEMENTATION = "c"
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        from ._cache_py import LRUCache

        IMPLEMENTATION = "py"

__all__ = ("IMPLEMENTATION", "LRUCache")
