"""The L1 TTL cache side by side: compiled, pure-Python twin and ``cachetools.TTLCache``.

Run with ``pytest benchmarks/test_cache_bench.py`` (``-s`` shows the RSS lines), or
``python benchmarks/test_cache_bench.py`` for the RSS table alone. Every cache gets the same
``max_entries`` and TTL and its own default clock; the tracker's targets (reported, never
asserted) are: compiled get-hit >= 8x faster than cachetools and >= 2x faster than the twin;
one million entries <= 200 MB RSS.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from typing import Any

import pytest

MAX_ENTRIES = 100_000
TTL = 300.0
PROJECTS = ("dockerhub", "ghcr", "quay", "gcr")
RSS_ENTRIES = 1_000_000


def _key(i: int) -> str:
    return f"library/nginx-{i:06d}"


class _CachetoolsAdapter:
    """``cachetools.TTLCache`` behind the same ``get``/``set`` calls."""

    def __init__(self, max_entries: int, ttl: float) -> None:
        import cachetools

        self.cache: Any = cachetools.TTLCache(max_entries, ttl)
        self.get = self.cache.get
        self.set = self.cache.__setitem__


def _make(name: str, max_entries: int, ttl: float) -> Any:
    if name == "cachetools":
        return _CachetoolsAdapter(max_entries, ttl)
    if name == "c":
        from harbor_router import _cache_c

        return _cache_c.TTLCache(max_entries, ttl)
    from harbor_router import _cache_py

    return _cache_py.TTLCache(max_entries, ttl)


def _available() -> list[Any]:
    params = []
    try:
        import harbor_router._cache_c  # noqa: F401
    except ImportError:
        params.append(pytest.param("c", marks=pytest.mark.skip(reason="not built")))
    else:
        params.append(pytest.param("c"))
    params.append(pytest.param("py"))
    params.append(pytest.param("cachetools"))
    return params


IMPLEMENTATIONS = pytest.mark.parametrize("name", _available())


def _filled(name: str) -> Any:
    cache = _make(name, MAX_ENTRIES, TTL)
    for i in range(MAX_ENTRIES):
        cache.set(_key(i), PROJECTS[i & 3])
    return cache


@IMPLEMENTATIONS
@pytest.mark.benchmark(group="ttl-cache-get-hit")
def test_get_hit(benchmark: Any, name: str) -> None:
    cache = _filled(name)
    key = _key(50_000)
    assert benchmark(cache.get, key) == PROJECTS[0]


@IMPLEMENTATIONS
@pytest.mark.benchmark(group="ttl-cache-get-miss")
def test_get_miss(benchmark: Any, name: str) -> None:
    cache = _filled(name)
    assert benchmark(cache.get, "library/absent") is None


@IMPLEMENTATIONS
@pytest.mark.benchmark(group="ttl-cache-set-evicting")
def test_set_new_key_into_full_cache(benchmark: Any, name: str) -> None:
    cache = _filled(name)
    keys = [f"acme/tool-{i}" for i in range(1 << 16)]
    counter = itertools.count()
    set_ = cache.set

    def set_one() -> None:
        set_(keys[next(counter) & 0xFFFF], "ghcr")

    benchmark(set_one)


@IMPLEMENTATIONS
@pytest.mark.benchmark(group="ttl-cache-set-overwrite")
def test_set_existing_key(benchmark: Any, name: str) -> None:
    cache = _filled(name)
    benchmark(cache.set, _key(50_000), "ghcr")


# ---------------------------------------------------------------------------------------------
# Memory: one million entries, measured in a fresh interpreter each


_RSS_SCRIPT = r"""
import gc, os, sys
sys.path[:0] = [{root!r}, {here!r}]
from test_cache_bench import PROJECTS, TTL, _key, _make

def rss():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

name, n = sys.argv[1], int(sys.argv[2])
cache = _make(name, n, TTL)
gc.collect()
before = rss()
for i in range(n):
    cache.set(_key(i), PROJECTS[i & 3])
gc.collect()
after = rss()
assert len(cache.cache if name == "cachetools" else cache) == n
print(after - before)
"""


def measure_rss(name: str, entries: int = RSS_ENTRIES) -> int:
    """Bytes of RSS that ``entries`` entries (keys included) add, in a subprocess."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = _RSS_SCRIPT.format(root=os.path.dirname(here), here=here)
    out = subprocess.run(
        [sys.executable, "-c", script, name, str(entries)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return int(out.stdout.strip().splitlines()[-1])


@IMPLEMENTATIONS
def test_rss_of_one_million_entries(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    rss = measure_rss(name)
    with capsys.disabled():
        print(f"\nRSS of {RSS_ENTRIES:,} entries [{name}]: {rss / 1e6:.1f} MB")


if __name__ == "__main__":
    for impl in ("c", "py", "cachetools"):
        print(f"{impl:>10}: {measure_rss(impl) / 1e6:7.1f} MB for {RSS_ENTRIES:,} entries")
