"""Per-client request rate limit (``RATE_LIMIT_PER_IP``) and who "the client" is.

Theory of operation: the limit protects Harbor and the router from one noisy or hostile client,
so it must be cheap enough to run on every request, must not be bypassed by a client that
writes its own ``X-Forwarded-For``, and must not become the memory leak an attacker spraying
addresses would like it to be.

- *Who the client is* (:class:`ClientAddress`): only a proxy listed in ``TRUSTED_PROXIES`` is
  believed about ``X-Forwarded-For``, and only about the hop it appended itself. Walking the list
  from the right, every trusted hop vouches for the entry left of it; the first untrusted entry
  is the furthest address anyone we trust has actually seen, so it is the client. Anything left
  of it was written by the client and is ignored. A malformed entry ends the walk: the hop that
  wrote it is unknown, so nothing left of it can be believed either.
- *How much it may do* (:class:`RateLimiter`): a token bucket per client, kept in its GCRA form
  (one float per client, the "theoretical arrival time": when its bucket is full again), which
  is the same bucket with less to store and nothing to allocate on a hit. A bucket that has
  refilled completely says nothing a fresh bucket would not say, so it may be forgotten: each
  bucket is an entry of the L1 TTL cache (``_cache``) whose lifetime is the time until it is
  full again. An expired entry reads as absent, i.e. as a full bucket, and a sweep once per
  refill period drops them all; that is what keeps memory proportional to the clients seen in
  the last refill period rather than to every client ever seen, and ``max_buckets`` bounds it.
- The limit is per worker process (``WORKERS``) and per replica; it is a guard rail, not a quota.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from . import errors
from ._cache import TTLCache

if TYPE_CHECKING:
    from .config import Config
    from .protocol import Request

__all__ = ["ClientAddress", "RateLimitGuard", "RateLimiter", "retry_after_header"]

_XFF = b"x-forwarded-for"
# Bound of each ClientAddress cache; when full it is cleared (cheaper than ordered eviction).
CACHE_ENTRIES = 1024
# A refusal must wait at least this long; below it float noise decides, so the request is allowed.
_EPSILON = 1e-9

# (address or None, trusted): (None, True) = empty list element, ignored; (None, False) = malformed.
_EntryInfo = tuple[str | None, bool]
_EMPTY: _EntryInfo = (None, True)
_MALFORMED: _EntryInfo = (None, False)

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> _IPAddress | None:
    """One ``X-Forwarded-For`` element as an address, or None when it is not one.

    Accepted: IPv4, IPv6 (compressed or not), ``[v6]``, ``[v6]:port`` and ``v4:port`` (some
    proxies append the port). IPv4-mapped IPv6 (``::ffff:1.2.3.4``) becomes the IPv4 address.
    Refused: names (``unknown``), obfuscated identifiers (``_hidden``), out-of-range octets,
    leading zeros, IPv6 zone ids (``fe80::1%eth0``: local to the machine that wrote them) and
    anything else :mod:`ipaddress` refuses. Never raises.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):
            return None
        text = text[1:end]
        if ":" not in text:  # [1.2.3.4] is not a form anyone writes
            return None
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not _is_port(port) or "." not in text:
            return None
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= 65535


class ClientAddress:
    """Turns the TCP peer and its ``X-Forwarded-For`` values into the client's address.

    ``trusted_proxies`` are CIDR strings (``Config.trusted_proxies``). With none, :meth:`resolve`
    returns the peer untouched without looking at anything.
    """

    __slots__ = ("_entries", "_peers", "_v4", "_v6", "enabled")

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        networks = [ipaddress.ip_network(text, strict=False) for text in trusted_proxies]
        # (network address, netmask) as integers: one AND and one compare per network.
        self._v4 = tuple(
            (int(n.network_address), int(n.netmask)) for n in networks if n.version == 4
        )
        self._v6 = tuple(
            (int(n.network_address), int(n.netmask)) for n in networks if n.version == 6
        )
        self.enabled = bool(networks)
        self._peers: dict[str, tuple[str, bool]] = {}
        self._entries: dict[bytes, _EntryInfo] = {}

    def is_trusted(self, address: _IPAddress) -> bool:
        value = int(address)
        networks = self._v4 if address.version == 4 else self._v6
        return any(value & mask == network for network, mask in networks)

    def resolve(self, peer: str, forwarded: Sequence[bytes]) -> str:
        """The client's address: ``peer`` unless a trusted peer says otherwise.

        ``forwarded`` holds the raw ``X-Forwarded-For`` values in arrival order; each may be a
        comma list. The result is normalised (``ipaddress`` compressed form, IPv4-mapped IPv6 as
        IPv4) whenever proxies are configured; a peer that is not an IP address (a Unix socket)
        comes back as it is.
        """
        if not self.enabled:
            return peer
        peer_info = self._peers.get(peer)
        if peer_info is None:
            peer_info = self._peer_info(peer)
        client = peer_info[0]
        if not peer_info[1] or not forwarded:
            return client
        # Several header lines are one comma list (RFC 9110 §5.3), read right to left.
        raws = forwarded[0].split(b",") if len(forwarded) == 1 else b",".join(forwarded).split(b",")
        entries = self._entries
        i = len(raws)
        while i:
            i -= 1
            raw = raws[i]
            info = entries.get(raw) or self._entry_info(raw)
            address = info[0]
            if address is None:
                if info[1]:  # an empty list element (RFC 9110 §5.6.1): not a hop
                    continue
                return client  # malformed: the hop that wrote it is unknown
            if not info[1]:
                return address
            client = address
        # Every hop trusted: the left-most one is the client.
        return client

    def _peer_info(self, peer: str) -> tuple[str, bool]:
        address = parse_address(peer)
        info = (peer, False) if address is None else (address.compressed, self.is_trusted(address))
        if len(self._peers) >= CACHE_ENTRIES:
            self._peers.clear()
        self._peers[peer] = info
        return info

    def _entry_info(self, raw: bytes) -> _EntryInfo:
        text = raw.decode("latin-1").strip()
        address = parse_address(text) if text else None
        info: _EntryInfo
        if address is not None:
            info = (address.compressed, self.is_trusted(address))
        else:
            info = _MALFORMED if text else _EMPTY
        if len(self._entries) >= CACHE_ENTRIES:
            self._entries.clear()
        self._entries[raw] = info
        return info


class RateLimiter:
    """A token bucket per key: ``rate`` tokens a second, burst ``max(rate, 1)``.

    Stored as GCRA in a :class:`TTLCache`: per key, the time at which its bucket would be full
    again ("theoretical arrival time"), kept exactly until then; a key without a live entry has
    a full bucket. Expired entries are swept at most once per refill period (``burst / rate``
    seconds), so every check is O(1) amortised. At ``max_buckets`` the least recently seen
    client is forgotten (an expired one, if that is what sits at the end; either way that
    client starts again with a full bucket: the memory bound wins over precision). ``clock``
    (monotonic seconds) is for tests; by default the cache's own clock is the time base.
    """

    __slots__ = (
        "_buckets",
        "_interval",
        "_next_sweep",
        "_tolerance",
        "burst",
        "horizon",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] | None = None,
        max_buckets: int = 1_000_000,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be a positive number of requests per second")
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self.rate = rate
        self.burst = max(rate, 1.0)
        self._interval = 1.0 / rate
        # A request is allowed while its bucket's full-again time is at most this far ahead,
        # i.e. while at least one token is left.
        self._tolerance = (self.burst - 1.0) * self._interval + _EPSILON
        self.horizon = self.burst * self._interval
        self._buckets: TTLCache[float] = TTLCache(max_buckets, self.horizon, clock=clock)
        self._next_sweep = self._buckets.now() + self.horizon

    @property
    def buckets(self) -> TTLCache[float]:
        """The bucket table, for its counters (metrics)."""
        return self._buckets

    def __len__(self) -> int:
        """Buckets stored: full ones linger until the next sweep."""
        return len(self._buckets)

    def check(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when allowed, else seconds until one is available."""
        buckets = self._buckets
        now = buckets.now()
        if now >= self._next_sweep:
            self._sweep(now)
        full_at = buckets.get(key)
        if full_at is None or full_at < now:
            full_at = now
        wait = full_at - now - self._tolerance
        if wait > 0.0:
            return wait + _EPSILON
        full_at += self._interval
        buckets.set(key, full_at, full_at - now)
        return 0.0

    def _sweep(self, now: float) -> None:
        self._buckets.purge()
        self._next_sweep = now + self.horizon


def retry_after_header(seconds: float) -> bytes:
    """``Retry-After`` value for a wait of ``seconds``: whole seconds, rounded up, at least 1."""
    return b"%d" % max(1, math.ceil(seconds))


class RateLimitGuard:
    """What the request handler calls: :meth:`check` raises 429 when the client is over its rate.

    The client is keyed by :class:`ClientAddress` (``TRUSTED_PROXIES``). Health endpoints
    (``/healthz``, ``/readyz``) are exempt: the handler does not call the guard for them, so a
    kubelet probing through a shared address never gets 429. Build it with :meth:`from_config`,
    which returns None when the limit is off (``RATE_LIMIT_PER_IP=0``).
    """

    __slots__ = ("addresses", "limiter", "rate")

    def __init__(
        self,
        rate: float,
        trusted_proxies: Iterable[str] = (),
        *,
        clock: Callable[[], float] | None = None,
        max_buckets: int = 1_000_000,
    ) -> None:
        self.rate = rate
        self.limiter = RateLimiter(rate, clock=clock, max_buckets=max_buckets)
        self.addresses = ClientAddress(trusted_proxies)

    @classmethod
    def from_config(
        cls, config: Config, *, clock: Callable[[], float] | None = None
    ) -> RateLimitGuard | None:
        if config.rate_limit_per_ip <= 0:
            return None
        return cls(config.rate_limit_per_ip, config.trusted_proxies, clock=clock)

    def client(self, request: Request) -> str:
        """The key the request is counted under."""
        addresses = self.addresses
        if not addresses.enabled:
            return request.client_ip
        forwarded = [value for name, value in request.headers if name == _XFF]
        return addresses.resolve(request.client_ip, forwarded)

    def check(self, request: Request) -> None:
        """Count the request; raise :class:`errors.TooManyRequests` if it is over the limit."""
        wait = self.limiter.check(self.client(request))
        if wait:
            raise errors.TooManyRequests(
                "too many requests from this client",
                {"limit_per_second": self.rate},
                headers=((b"Retry-After", retry_after_header(wait)),),
            )
