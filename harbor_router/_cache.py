"""Selects the compiled TTL/LRU cache or its pure-Python twin (DESIGN §9).

``_cache_py`` is the specification (its docstring is the contract); ``IMPLEMENTATION`` says
which one runs: ``"c"`` or ``"py"``.
"""

from typing import TYPE_CHECKING

from ._speedups_env import NO_EXTENSIONS, REQUIRE_EXTENSIONS

IMPLEMENTATION: str

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._cache_py import Memo, TTLCache

    IMPLEMENTATION = "py"
else:
    try:
        from ._cache_c import Memo, TTLCache

        IMPLEMENTATION = "c"
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        from ._cache_py import Memo, TTLCache

        IMPLEMENTATION = "py"

__all__ = ("IMPLEMENTATION", "Memo", "TTLCache")
