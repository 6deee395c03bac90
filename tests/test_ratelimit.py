"""Per-client rate limit: token bucket, memory bound, client address behind proxies, the guard."""

from __future__ import annotations

import pytest

from harbor_router import errors
from harbor_router.config import Config, load_config
from harbor_router.protocol import Request
from harbor_router.ratelimit import (
    CACHE_ENTRIES,
    ClientAddress,
    RateLimiter,
    RateLimitGuard,
    parse_address,
    retry_after_header,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---------------------------------------------------------------------------------------------
# Token bucket


def test_burst_of_rate_then_refusal_with_retry_after(clock: FakeClock) -> None:
    limiter = RateLimiter(4, clock=clock)
    assert [limiter.check("a") for _ in range(4)] == [0.0] * 4
    assert limiter.check("a") == pytest.approx(0.25)
    assert limiter.check("a") == pytest.approx(0.25)  # a refusal consumes nothing


def test_refill_over_time(clock: FakeClock) -> None:
    limiter = RateLimiter(4, clock=clock)
    for _ in range(4):
        limiter.check("a")
    clock.advance(0.1)
    assert limiter.check("a") == pytest.approx(0.15)
    clock.advance(0.15)
    assert limiter.check("a") == 0.0
    assert limiter.check("a") > 0
    clock.advance(0.5)  # two more tokens
    assert [limiter.check("a") > 0 for _ in range(3)] == [False, False, True]
    clock.advance(100)  # refill stops at the burst
    assert [limiter.check("a") for _ in range(4)] == [0.0] * 4
    assert limiter.check("a") == pytest.approx(0.25)


def test_steady_rate_is_allowed_forever(clock: FakeClock) -> None:
    limiter = RateLimiter(10, clock=clock)
    for _ in range(1000):
        assert limiter.check("a") == 0.0
        clock.advance(0.1)


@pytest.mark.parametrize(("rate", "retry"), [(0.5, 2.0), (0.25, 4.0), (0.1, 10.0)])
def test_fractional_rate_has_burst_one(clock: FakeClock, rate: float, retry: float) -> None:
    limiter = RateLimiter(rate, clock=clock)
    assert limiter.burst == 1.0
    assert limiter.check("a") == 0.0
    assert limiter.check("a") == pytest.approx(retry)
    clock.advance(retry / 2)
    assert limiter.check("a") == pytest.approx(retry / 2)
    clock.advance(retry / 2)
    assert limiter.check("a") == 0.0


def test_fractional_burst_above_one(clock: FakeClock) -> None:
    limiter = RateLimiter(2.5, clock=clock)
    assert [limiter.check("a") for _ in range(2)] == [0.0, 0.0]
    # 0.5 token left: one more needs 0.5 / 2.5 = 0.2 s.
    assert limiter.check("a") == pytest.approx(0.2)


def test_keys_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter(1, clock=clock)
    assert limiter.check("a") == 0.0
    assert limiter.check("a") > 0
    assert limiter.check("b") == 0.0
    assert limiter.check("b") > 0
    assert len(limiter) == 2


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate)


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (0.0, b"1"),
        (1e-9, b"1"),
        (0.25, b"1"),
        (1.0, b"1"),
        (1.01, b"2"),
        (2.0, b"2"),
        (59.5, b"60"),
    ],
)
def test_retry_after_header(seconds: float, header: bytes) -> None:
    assert retry_after_header(seconds) == header


# ---------------------------------------------------------------------------------------------
# Memory


def test_idle_buckets_are_forgotten(clock: FakeClock) -> None:
    limiter = RateLimiter(2, clock=clock)
    for i in range(100_000):
        assert limiter.check(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}") == 0.0
        clock.advance(1e-6)
    assert len(limiter) == 100_000  # all still carry information
    clock.advance(limiter.horizon + 0.01)
    for _ in range(10):
        limiter.check("192.0.2.1")
    assert len(limiter) <= 2


def test_only_full_buckets_are_forgotten(clock: FakeClock) -> None:
    limiter = RateLimiter(1, clock=clock)
    limiter.check("idle")
    clock.advance(0.5)
    limiter.check("busy")
    clock.advance(0.6)  # "idle" is full again, "busy" is not
    limiter.check("other")
    assert len(limiter) == 2
    assert limiter.check("busy") == pytest.approx(0.4)  # remembered
    assert limiter.check("idle") == 0.0  # forgotten, and a full bucket says the same


def test_sweeps_are_amortised(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    sweeps = []
    sweep = RateLimiter._sweep

    def counting(self: RateLimiter, now: float) -> None:
        sweeps.append(now)
        sweep(self, now)

    monkeypatch.setattr(RateLimiter, "_sweep", counting)
    limiter = RateLimiter(2, clock=clock)
    for i in range(10_000):
        limiter.check(f"k{i % 500}")
        clock.advance(0.0005)  # 5 s in all; the idle horizon is 1 s
    assert 4 <= len(sweeps) <= 5
    limited = RateLimiter(2, clock=clock, max_buckets=1000)
    sweeps.clear()
    for i in range(100_000):
        limited.check(f"n{i}")
    assert len(sweeps) <= 100_000 // 100  # one per evicted batch (125), not one per check


def test_max_buckets_bounds_the_dict(clock: FakeClock) -> None:
    limiter = RateLimiter(2, clock=clock, max_buckets=1000)
    largest = 0
    for i in range(100_000):
        assert limiter.check(f"2001:db8::{i:x}") == 0.0
        largest = max(largest, len(limiter))
    assert largest <= 1000
    assert len(limiter) >= 800  # eviction drops a batch, not everything


def test_eviction_drops_oldest_first(clock: FakeClock) -> None:
    limiter = RateLimiter(1, clock=clock, max_buckets=8)
    for i in range(8):
        limiter.check(f"k{i}")
    limiter.check("new")  # evicts k0 (one eighth of 8)
    assert len(limiter) == 8
    assert limiter.check("k0") == 0.0  # forgotten: a fresh bucket
    assert limiter.check("k7") > 0  # remembered: still empty


def test_expired_buckets_go_before_live_ones_are_evicted(clock: FakeClock) -> None:
    limiter = RateLimiter(1, clock=clock, max_buckets=4)
    limiter.check("old")
    clock.advance(0.9)
    for key in ("a", "b", "c"):
        limiter.check(key)
    clock.advance(0.2)  # "old" is full again, the others are not
    limiter.check("d")
    assert limiter.check("a") > 0
    assert limiter.check("b") > 0
    assert limiter.check("c") > 0


# ---------------------------------------------------------------------------------------------
# Client address


PROXIES = ClientAddress(["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"])


def test_no_trusted_proxies_returns_the_peer_untouched() -> None:
    addresses = ClientAddress()
    assert not addresses.enabled
    assert addresses.resolve("203.0.113.9", [b"198.51.100.1"]) == "203.0.113.9"
    assert addresses.resolve("not even an address", [b"198.51.100.1"]) == "not even an address"


def test_untrusted_peer_ignores_x_forwarded_for() -> None:
    assert PROXIES.resolve("203.0.113.9", [b"198.51.100.1"]) == "203.0.113.9"
    assert PROXIES.resolve("203.0.113.9", [b"10.0.0.1, 10.0.0.2"]) == "203.0.113.9"


def test_trusted_peer_uses_right_most_untrusted_entry() -> None:
    # The client wrote "1.1.1.1, 2.2.2.2"; the first proxy appended what it saw (203.0.113.9).
    forwarded = [b"1.1.1.1, 2.2.2.2", b"203.0.113.9,10.1.2.3", b" 192.168.1.7 "]
    assert PROXIES.resolve("10.0.0.1", forwarded) == "203.0.113.9"


def test_header_lines_are_read_in_arrival_order() -> None:
    assert PROXIES.resolve("10.0.0.1", [b"198.51.100.1", b"203.0.113.9"]) == "203.0.113.9"
    assert PROXIES.resolve("10.0.0.1", [b"203.0.113.9", b"198.51.100.1"]) == "198.51.100.1"


def test_all_trusted_chain_uses_left_most_entry() -> None:
    assert PROXIES.resolve("10.0.0.1", [b"10.9.9.9, 10.0.0.2", b"192.168.1.7"]) == "10.9.9.9"


def test_trusted_peer_without_entries_is_the_client() -> None:
    assert PROXIES.resolve("10.0.0.1", []) == "10.0.0.1"
    assert PROXIES.resolve("10.0.0.1", [b""]) == "10.0.0.1"
    assert PROXIES.resolve("10.0.0.1", [b" , ,"]) == "10.0.0.1"


@pytest.mark.parametrize("junk", [b"unknown", b"1.2.3.999", b"_hidden", b"01.2.3.4", b"\xff\xfe"])
def test_malformed_entry_ends_the_walk(junk: bytes) -> None:
    # Left of a malformed entry everything is client-written: never a key.
    assert PROXIES.resolve("10.0.0.1", [b"198.51.100.1, " + junk]) == "10.0.0.1"
    assert PROXIES.resolve("10.0.0.1", [b"198.51.100.1, " + junk + b", 10.0.0.2"]) == "10.0.0.2"
    # Right of it, the untrusted entry is found first as usual.
    assert PROXIES.resolve("10.0.0.1", [junk + b", 198.51.100.1"]) == "198.51.100.1"


def test_empty_elements_are_ignored() -> None:
    assert PROXIES.resolve("10.0.0.1", [b"198.51.100.1,, ,", b""]) == "198.51.100.1"


def test_ipv4_mapped_ipv6_is_ipv4() -> None:
    assert PROXIES.resolve("::ffff:10.0.0.1", [b"::ffff:203.0.113.9"]) == "203.0.113.9"
    # ::ffff:10.0.0.1 is 10.0.0.1, a trusted proxy, so it is skipped.
    assert PROXIES.resolve("10.0.0.1", [b"198.51.100.1, ::ffff:10.0.0.1"]) == "198.51.100.1"
    assert PROXIES.resolve("::ffff:203.0.113.9", [b"198.51.100.1"]) == "203.0.113.9"


def test_ipv6_peer_and_entries() -> None:
    assert PROXIES.resolve("fd00::1", [b"2001:DB8:0:0::7, fd12::3"]) == "2001:db8::7"
    assert PROXIES.resolve("2001:db8::1", [b"198.51.100.1"]) == "2001:db8::1"
    assert PROXIES.resolve("fd00::1", [b"[2001:db8::7]:4431"]) == "2001:db8::7"
    assert PROXIES.resolve("fd00::1", [b"[2001:db8::7]"]) == "2001:db8::7"


def test_ipv4_with_port() -> None:
    assert PROXIES.resolve("10.0.0.1", [b"198.51.100.1:51234"]) == "198.51.100.1"


def test_ipv4_network_does_not_trust_ipv6_and_back() -> None:
    addresses = ClientAddress(["0.0.0.0/0"])
    assert addresses.resolve("::1", [b"198.51.100.1"]) == "::1"
    assert ClientAddress(["::/0"]).resolve("10.0.0.1", [b"198.51.100.1"]) == "10.0.0.1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4\t", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("2001:0db8::0001", "2001:db8::1"),
        ("[::1]:443", "::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("unknown", None),
        ("", None),
        ("1.2.3.999", None),
        ("1.2.3.4:", None),
        ("1.2.3.4:99999", None),
        ("1.2.3.4:\uff18\uff10", None),
        ("[1.2.3.4]", None),
        ("[::1", None),
        ("[::1]x", None),
        ("fe80::1%eth0", None),
        ("::1:80", "::1:80"),  # plain IPv6 has no port form; this is an address
        ("localhost:80", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (None if address is None else address.compressed) == expected


def test_caches_stay_bounded() -> None:
    addresses = ClientAddress(["10.0.0.0/8"])
    for i in range(3 * CACHE_ENTRIES):
        peer = f"10.0.{i >> 8}.{i & 255}"
        entry = f"198.51.{i >> 8}.{i & 255}"
        assert addresses.resolve(peer, [entry.encode()]) == entry
    assert len(addresses._peers) <= CACHE_ENTRIES
    assert len(addresses._entries) <= CACHE_ENTRIES


# ---------------------------------------------------------------------------------------------
# Guard


def request(client_ip: str, *headers: tuple[bytes, bytes], path: str = "/v2/") -> Request:
    return Request(
        "GET", path, "", list(headers), http11=True, keep_alive=True, client_ip=client_ip
    )


def config(rate: str, proxies: str = "10.0.0.0/8") -> Config:
    return load_config(
        {"HARBOR_URL": "http://h", "RATE_LIMIT_PER_IP": rate, "TRUSTED_PROXIES": proxies}
    )


def test_from_config_is_none_when_off() -> None:
    assert RateLimitGuard.from_config(load_config({"HARBOR_URL": "http://h"})) is None
    assert RateLimitGuard.from_config(config("0")) is None


def test_guard_raises_429_with_retry_after(clock: FakeClock) -> None:
    guard = RateLimitGuard.from_config(config("2"), clock=clock)
    assert guard is not None
    guard.check(request("203.0.113.9"))
    guard.check(request("203.0.113.9"))
    with pytest.raises(errors.TooManyRequests) as caught:
        guard.check(request("203.0.113.9"))
    error = caught.value
    assert error.status == 429
    assert error.code == "TOOMANYREQUESTS"
    assert error.message == "too many requests from this client"
    assert error.detail == {"limit_per_second": 2.0}
    assert error.headers == ((b"Retry-After", b"1"),)
    clock.advance(0.5)
    guard.check(request("203.0.113.9"))  # one token back


def test_guard_keys_by_forwarded_client_behind_trusted_proxy(clock: FakeClock) -> None:
    guard = RateLimitGuard.from_config(config("1"), clock=clock)
    assert guard is not None
    via_proxy = (b"x-forwarded-for", b"203.0.113.9")
    guard.check(request("10.0.0.1", via_proxy))
    guard.check(request("10.0.0.1", (b"x-forwarded-for", b"198.51.100.1")))  # another client
    with pytest.raises(errors.TooManyRequests):
        guard.check(request("10.0.0.2", (b"user-agent", b"x"), via_proxy))  # another proxy
    assert guard.client(request("10.0.0.1", (b"x-forwarded-for", b"1.1.1.1"), via_proxy)) == (
        "203.0.113.9"
    )


def test_guard_ignores_spoofed_forwarded_from_untrusted_peer(clock: FakeClock) -> None:
    guard = RateLimitGuard(1, ["10.0.0.0/8"], clock=clock)
    guard.check(request("203.0.113.9", (b"x-forwarded-for", b"1.1.1.1")))
    with pytest.raises(errors.TooManyRequests):
        guard.check(request("203.0.113.9", (b"x-forwarded-for", b"2.2.2.2")))


def test_guard_without_proxies_keys_by_peer(clock: FakeClock) -> None:
    guard = RateLimitGuard(0.5, clock=clock)
    guard.check(request("10.0.0.1", (b"x-forwarded-for", b"1.1.1.1")))
    with pytest.raises(errors.TooManyRequests) as caught:
        guard.check(request("10.0.0.1", (b"x-forwarded-for", b"2.2.2.2")))
    assert caught.value.headers == ((b"Retry-After", b"2"),)
    guard.check(request("10.0.0.2"))
