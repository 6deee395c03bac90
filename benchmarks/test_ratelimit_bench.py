"""Micro benchmarks of the per-request rate limit: the bucket check and the client address.

Run with ``make bench`` (``pytest benchmarks/``). The limiter is filled with 100k clients so the
dict is the size a busy router has; the checked key is allowed on every call (a very high
rate), which is the common case. ``frozen-clock`` leaves the clock out (and keeps the 100k
buckets from being swept while the benchmark runs); ``monotonic`` is what the router pays.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from harbor_router.protocol import Request
from harbor_router.ratelimit import ClientAddress, RateLimiter, RateLimitGuard

CLIENTS = 100_000
FORWARDED = [b"198.51.100.7, 203.0.113.9", b"10.1.2.3"]


@pytest.mark.benchmark(group="ratelimit-check")
def test_limiter_check_allowed_frozen_clock(benchmark: Any) -> None:
    limiter = RateLimiter(1e9, clock=itertools.repeat(1000.0).__next__)
    for i in range(CLIENTS):
        limiter.check(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert benchmark(limiter.check, "10.0.19.136") == 0.0
    assert len(limiter) == CLIENTS


@pytest.mark.benchmark(group="ratelimit-check")
def test_limiter_check_allowed_monotonic(benchmark: Any) -> None:
    limiter = RateLimiter(1e9)
    for i in range(CLIENTS):
        limiter.check(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert benchmark(limiter.check, "10.0.19.136") == 0.0
    assert len(limiter) >= 1  # idle buckets are swept once a second of benchmarking passed


@pytest.mark.benchmark(group="ratelimit-check")
def test_limiter_check_refused(benchmark: Any) -> None:
    limiter = RateLimiter(0.001)
    limiter.check("203.0.113.9")
    assert benchmark(limiter.check, "203.0.113.9") > 0


@pytest.mark.benchmark(group="client-address")
def test_resolve_without_trusted_proxies(benchmark: Any) -> None:
    addresses = ClientAddress()
    assert benchmark(addresses.resolve, "203.0.113.9", FORWARDED) == "203.0.113.9"


@pytest.mark.benchmark(group="client-address")
def test_resolve_untrusted_peer(benchmark: Any) -> None:
    addresses = ClientAddress(["10.0.0.0/8", "fd00::/8"])
    assert benchmark(addresses.resolve, "203.0.113.9", FORWARDED) == "203.0.113.9"


@pytest.mark.benchmark(group="client-address")
def test_resolve_behind_trusted_proxies(benchmark: Any) -> None:
    addresses = ClientAddress(["10.0.0.0/8", "fd00::/8"])
    assert benchmark(addresses.resolve, "10.0.0.1", FORWARDED) == "203.0.113.9"


@pytest.mark.benchmark(group="guard")
@pytest.mark.parametrize("proxies", [pytest.param((), id="no-proxies"), ("10.0.0.0/8",)])
def test_guard_check(benchmark: Any, proxies: tuple[str, ...]) -> None:
    guard = RateLimitGuard(1e9, proxies)
    headers = [
        (b"host", b"registry.example.com"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"1.1.1.1"),
    ]
    request = Request(
        "GET", "/v2/", "", headers, http11=True, keep_alive=True, client_ip="10.0.0.1"
    )
    benchmark(guard.check, request)
    assert len(guard.limiter) == 1
