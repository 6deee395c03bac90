"""Prometheus metrics (DESIGN §7): plain counters on the hot path, exported at scrape time.

Theory of operation: a cache hit must not pay for prometheus-client objects (a ``.labels()``
lookup takes a lock and hashes the label values on every call). So every per-request number is
plain data in :class:`Metrics`, found without building or hashing a tuple per request: the
request histograms and bytes sent in a ``_wire.RequestTable`` indexed by method, route kind and
status class, and the requests to Harbor in a ``_wire.UpstreamTable`` (a record a project: its
counts by status label and its duration histogram). A histogram is bucket counts (plus the sum
in its last slot); the tables' are C arrays in the compiled build, counted into by one C call
per request (``_wire.count_request``, ``count_answer``), and lists in the twin, like the other
histograms here, which ``_wire.observe`` counts into (the twin uses :func:`bisect.bisect_left`).
Label values are derived from those tables only when ``/metrics`` is scraped:
:meth:`Metrics.collect` turns the data, and the counters other services already keep (TTL
caches, the Redis store, breakers, discovery), into metric families.

Label values are bounded by construction: methods are what httptools parses (a fixed set), route
kinds and status classes are tables here, projects come from discovery, and upstream statuses
are a fixed set of codes (others collapse into their class). No repository name, tag or digest
ever becomes a label value.

With ``WORKERS`` > 1 each worker serves :func:`snapshot` (its families as JSON) on a private
unix socket, and the parent sums them with :func:`merge`: counters and histograms add up, and
gauges add up unless :data:`MERGE` says otherwise (``max``, ``min``, or the breaker ranking).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from . import __commit__, __version__, routes
from ._wire import (
    RequestTable,
    Seconds,
    UpstreamTable,
    count_answer,
    count_request,
    count_upstream,
    observe,
)

if TYPE_CHECKING:
    from ._cache import TTLCache
    from .breaker import Breakers
    from .discovery import Discovery
    from .mapping import MappingCache
    from .responses import Status
    from .shared import SharedStore
    from .tiers import Tiers

PREFIX: Final = "harbor_router_"

# Histogram bounds (seconds unless said otherwise).
REQUEST_BOUNDS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
RESOLVE_BOUNDS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UPSTREAM_BOUNDS: Final = REQUEST_BOUNDS
BLOB_BOUNDS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FANOUT_BOUNDS: Final = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0)
DISCOVERY_BOUNDS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Route kind (routes.*; -1 = not parsed) → the ``type`` label.
KIND_TYPES: Final = {
    routes.BASE: "v2check",
    routes.MANIFEST: "manifest",
    routes.BLOB: "blob",
    routes.TAGS: "tags",
    routes.REFERRERS: "referrers",
    routes.PASSTHROUGH: "other",
    routes.HEALTHZ: "health",
    routes.READYZ: "health",
    -1: "other",
}
TYPE_LABELS: Final = ("manifest", "blob", "tags", "referrers", "v2check", "health", "other")
OTHER_KIND: Final = -1
#: A counter moved per request: compiled, a C long long where the source annotates one so
#: (``_speedups/dataplane.py``), else an int.
Count: TypeAlias = int
OTHER_METHOD: Final = "OTHER"  # the method label of any other
# the request table's methods, commonest first (it compares them in turn); the last: any other
_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", OTHER_METHOD)
# Status classes a request table row holds: a status has three digits (0xx-9xx).
_STATUS_CLASSES: Final = 10
#: A request that ended without a response (the client left first), as nginx counts it.
CLIENT_CLOSED: Final = 499
# Upstream statuses kept as codes; any other becomes its class ("5xx").
_UPSTREAM_CODES: Final = frozenset(
    {200, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 412, 416, 429, 500, 502, 503, 504}
)
BREAKER_STATES: Final = {"closed": 0, "open": 1, "half_open": 2}  # the gauge's values

# Cache lookup results (cache_lookups_total{result}).
HIT, STALE, REDIS_HIT, MISS, NEGATIVE = "hit", "stale", "redis_hit", "miss", "negative"
LOOKUP_RESULTS: Final = (HIT, STALE, REDIS_HIT, MISS, NEGATIVE)

# Why the router closed a client connection on its own (connections_closed_total{reason}).
HEADER_TIMEOUT, KEEPALIVE_TIMEOUT = "header_timeout", "keepalive_timeout"
SEND_TIMEOUT = "send_timeout"
CLOSE_REASONS: Final = (HEADER_TIMEOUT, KEEPALIVE_TIMEOUT, SEND_TIMEOUT)

Histogram = list[float]


def new_histogram(bounds: Sequence[float]) -> Histogram:
    """Bucket counts (the last one is +Inf) followed by the sum."""
    return [0.0] * (len(bounds) + 2)


class Metrics:
    """One process's numbers. Everything here is written on the event loop thread."""

    def __init__(self) -> None:
        self.inflight: Count = 0
        # method (any other: OTHER_METHOD) → [route kind (the last: unparsed, -1)][status
        # class] → request duration histogram, whose count is requests_total; bytes by kind
        kinds = len(routes.KIND_NAMES) + 1
        self.requests = RequestTable(_METHODS, kinds, _STATUS_CLASSES, REQUEST_BOUNDS)
        self.rate_limited = 0
        self.lookups: dict[str, int] = dict.fromkeys(LOOKUP_RESULTS, 0)
        self.fast_hits: Count = 0  # HIT lookups of handler.fast, kept apart from the dict (one add)
        self.stale_serves = 0
        self.resolves: dict[tuple[bool, str], Histogram] = {}  # (tags?, result)
        self.fanout = new_histogram(FANOUT_BOUNDS)
        self.dedup = 0
        self.upstream = UpstreamTable(_UPSTREAM_CODES, UPSTREAM_BOUNDS)  # requests to Harbor
        self.connection_errors: dict[str, int] = {}
        self.blob: dict[str, Histogram] = {}
        self.discovery_duration = new_histogram(DISCOVERY_BOUNDS)
        self.discovery_errors = 0
        self.discovery_last_success = 0.0
        self.transitions: dict[tuple[str, str, str], int] = {}
        # client connections: refused at MAX_CONNECTIONS, closed by a timeout (not per request)
        self.connections_rejected = 0
        self.connections_closed = dict.fromkeys(CLOSE_REASONS, 0)
        self.sources = Sources()

    # -- the request boundary (protocol.py) -------------------------------------------------

    def request_done(
        self, method: str, kind: int, status: Status, duration: Seconds, sent: Count
    ) -> None:
        count_request(self.requests, method, kind, status, duration, sent)

    # -- the control plane -----------------------------------------------------------------

    def resolved(self, tags: bool, result: str, duration: float) -> None:
        key = (tags, result)
        hist = self.resolves.get(key)
        if hist is None:
            hist = self.resolves[key] = new_histogram(RESOLVE_BOUNDS)
        observe(hist, RESOLVE_BOUNDS, duration)

    def observe_fanout(self, size: int) -> None:
        observe(self.fanout, FANOUT_BOUNDS, size)

    def upstream_done(self, project: str, status: str, duration: float) -> None:
        count_upstream(self.upstream, project, status, duration)

    def upstream_counts(self) -> dict[tuple[str, str], int]:
        """Requests to Harbor by (project, status label)."""
        return self.upstream.counts()

    def upstream_answered(self, project: str, status: Status, duration: Seconds) -> None:
        """:meth:`upstream_done` of a request Harbor answered with ``status`` (its label: the
        code for one of a fixed set, else its class, ``"5xx"``)."""
        count_answer(self.upstream, project, status, duration)

    def connection_error(self, reason: str) -> None:
        self.connection_errors[reason] = self.connection_errors.get(reason, 0) + 1

    def blob_done(self, result: str, duration: float) -> None:
        hist = self.blob.get(result)
        if hist is None:
            hist = self.blob[result] = new_histogram(BLOB_BOUNDS)
        observe(hist, BLOB_BOUNDS, duration)

    def discovered(self, ok: bool, duration: float) -> None:
        observe(self.discovery_duration, DISCOVERY_BOUNDS, duration)
        if ok:
            self.discovery_last_success = time.time()
        else:
            self.discovery_errors += 1

    def transition(self, project: str, old: str, new: str) -> None:
        key = (project, old, new)
        self.transitions[key] = self.transitions.get(key, 0) + 1

    # -- scrape time -----------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        """Every family of this process (call on the loop thread: it reads live dicts)."""
        out: list[Metric] = []
        out += self._request_families()
        src = self.sources

        lookups = _counter("cache_lookups", "Mapping lookups by result", ["result"])
        for result, count in self.lookups.items():
            lookups.add_metric([result], count + self.fast_hits if result == HIT else count)
        out.append(lookups)
        out.append(
            _single(
                _counter,
                "negative_cache_hits",
                "Requests answered from the negative cache",
                self.lookups[NEGATIVE],
            )
        )
        out.append(
            _single(
                _counter,
                "cache_stale_serves",
                "Stale mappings served (a refresh runs in the background)",
                self.stale_serves,
            )
        )
        out.append(
            _single(
                _counter,
                "rate_limit_rejected",
                "Requests refused by RATE_LIMIT_PER_IP",
                self.rate_limited,
            )
        )

        for tags, name, doc in (
            (
                False,
                "resolve_duration_seconds",
                "Fan-out resolutions (manifests, blobs, referrers) by result",
            ),
            (True, "tags_resolve_duration_seconds", "Fan-out resolutions of tags/list by result"),
        ):
            family = _histogram(name, doc, ["result"])
            for (is_tags, result), hist in sorted(self.resolves.items()):
                if is_tags is tags:
                    _add_histogram(family, [result], hist, RESOLVE_BOUNDS)
            out.append(family)
        fanout = _histogram("fanout_size", "Projects asked per fan-out", [])
        _add_histogram(fanout, [], self.fanout, FANOUT_BOUNDS)
        out.append(fanout)
        out.append(
            _single(
                _counter,
                "singleflight_dedup",
                "Misses that joined a fan-out already in flight",
                self.dedup,
            )
        )
        inflight = src.singleflight_inflight() if src.singleflight_inflight else 0
        out.append(
            _single(
                _gauge,
                "singleflight_inflight",
                "Fan-outs in flight that identical misses may join",
                inflight,
            )
        )

        upstream = _counter(
            "upstream_requests",
            "Requests to Harbor by project and status (timeout/error: no response)",
            ["project", "status"],
        )
        for (project, status), count in sorted(self.upstream_counts().items()):
            upstream.add_metric([project, status], count)
        out.append(upstream)
        durations = _histogram(
            "upstream_project_duration_seconds",
            "Requests to one project, until its response ended (hit path) or was read (fan-out)",
            ["project"],
        )
        for project, hist in sorted(self.upstream.durations().items()):
            _add_histogram(durations, [project], hist, UPSTREAM_BOUNDS)
        out.append(durations)
        errors = _counter(
            "upstream_connection_errors", "Failed connections to Harbor by reason", ["reason"]
        )
        for reason, count in sorted(self.connection_errors.items()):
            errors.add_metric([reason], count)
        out.append(errors)
        blob = _histogram(
            "blob_proxy_duration_seconds",
            "Blob GETs, whole response, by result (splice, copy, redirect, not_modified, error)",
            ["result"],
        )
        for result, hist in sorted(self.blob.items()):
            _add_histogram(blob, [result], hist, BLOB_BOUNDS)
        out.append(blob)

        discovery = src.discovery
        count = len(discovery.projects) if discovery is not None else 0
        out.append(_single(_gauge, "discovered_projects", "Proxy-cache projects known", count))
        out.append(
            _single(_counter, "discovery_errors", "Failed discovery passes", self.discovery_errors)
        )
        out.append(
            _single(
                _gauge,
                "discovery_last_success_timestamp_seconds",
                "When discovery last succeeded (epoch seconds, 0: never)",
                self.discovery_last_success,
            )
        )
        duration = _histogram("discovery_duration_seconds", "Discovery passes", [])
        _add_histogram(duration, [], self.discovery_duration, DISCOVERY_BOUNDS)
        out.append(duration)

        state = _gauge("circuit_breaker_state", "0 closed, 1 open, 2 half-open", ["project"])
        if src.breakers is not None:
            names = discovery.projects.names() if discovery is not None else ()
            for project, value in sorted(src.breakers.states(_known(src.breakers, names)).items()):
                state.add_metric([project], BREAKER_STATES.get(value, 0))
        out.append(state)
        moves = _counter(
            "circuit_breaker_transitions", "Breaker state changes", ["project", "from", "to"]
        )
        for key, count in sorted(self.transitions.items()):
            moves.add_metric(list(key), count)
        out.append(moves)

        out += _redis_families(src.shared, src.tiers.fallbacks if src.tiers is not None else 0)
        out += self._cache_families()
        info = _gauge(
            "build_info",
            "Version, commit and speedups of this build",
            ["version", "commit", "speedups"],
        )
        info.add_metric([__version__, __commit__, src.speedups], 1)
        out.append(info)
        out += ProcessCollector(registry=None).collect()
        return out

    def _request_families(self) -> list[Metric]:
        total = _counter(
            "requests",
            "Requests answered, by method, route type and status class",
            ["method", "type", "status"],
        )
        duration = _histogram(
            "request_duration_seconds",
            "Time from request to the end of its response",
            ["method", "req_type", "status_class"],
        )
        merged: dict[tuple[str, str, str], Histogram] = {}
        for method, kind, cls, hist in self._request_histograms():
            key = (method, KIND_TYPES[kind], f"{cls}xx")
            into = merged.get(key)
            if into is None:
                merged[key] = list(hist)
            else:
                for i, value in enumerate(hist):
                    into[i] += value
        for key, hist in sorted(merged.items()):
            total.add_metric(list(key), sum(hist[:-1]))
            _add_histogram(duration, list(key), hist, REQUEST_BOUNDS)
        sent = _counter(
            "response_bytes", "Bytes written to clients (heads and bodies)", ["req_type"]
        )
        by_type = dict.fromkeys(TYPE_LABELS, 0)
        by_kind = self.requests.sent()
        for kind, label in KIND_TYPES.items():
            by_type[label] += by_kind[kind]
        for label, count in by_type.items():
            sent.add_metric([label], count)
        inflight = _single(_gauge, "inflight_requests", "Requests being answered", self.inflight)
        return [total, duration, sent, inflight, *self._connection_families()]

    def _request_histograms(self) -> list[tuple[str, int, int, Histogram]]:
        """(method label, route kind, status class, histogram) of every one counted into."""
        out: list[tuple[str, int, int, Histogram]] = []
        for method in self.requests.methods:
            rows = self.requests.rows(method)
            out += [
                (method, kind, cls, hist)
                for kind in KIND_TYPES
                for cls, hist in enumerate(rows[kind])
                if hist is not None
            ]
        return out

    def _connection_families(self) -> list[Metric]:
        src = self.sources
        open_now = src.open_connections() if src.open_connections is not None else 0
        opened = _single(_gauge, "open_connections", "Client connections open", open_now)
        rejected = _single(
            _counter,
            "connections_rejected",
            "Client connections refused with 503 at MAX_CONNECTIONS",
            self.connections_rejected,
        )
        closed = _counter(
            "connections_closed",
            "Client connections the router closed by a timeout, by reason",
            ["reason"],
        )
        for reason, count in self.connections_closed.items():
            closed.add_metric([reason], count)
        return [opened, rejected, closed]

    def _cache_families(self) -> list[Metric]:
        src = self.sources
        caches: list[tuple[str, TTLCache[Any]]] = []
        if src.mapping is not None:
            caches += [("l1", src.mapping.positive), ("l1_negative", src.mapping.negative)]
        if src.ratelimit is not None:
            caches.append(("ratelimit", src.ratelimit))
        entries = _gauge("cache_entries", "Entries held, by cache", ["backend"])
        events = _counter(
            "l1_cache_events",
            "TTL cache counters: hit, miss, eviction, expiration",
            ["backend", "event"],
        )
        for backend, cache in caches:
            entries.add_metric([backend], len(cache))
            for event, value in (
                ("hit", cache.hits),
                ("miss", cache.misses),
                ("eviction", cache.evictions),
                ("expiration", cache.expirations),
            ):
                events.add_metric([backend, event], value)
        return [entries, events]


class Sources:
    """Services whose own counters are read at scrape time; set by the wiring (server.py)."""

    def __init__(self) -> None:
        self.discovery: Discovery | None = None
        self.breakers: Breakers | None = None
        self.shared: SharedStore | None = None
        self.tiers: Tiers | None = None
        self.mapping: MappingCache | None = None
        self.ratelimit: TTLCache[Any] | None = None
        self.singleflight_inflight: Callable[[], int] | None = None
        self.open_connections: Callable[[], int] | None = None
        self.speedups = ""


def _known(breakers: Breakers, names: Iterable[str]) -> list[str]:
    """Projects with a breaker that discovery still knows (bounded by discovery)."""
    wanted = set(names)
    return [name for name in breakers.names() if name in wanted]


def _redis_families(shared: SharedStore | None, skipped: int) -> list[Metric]:
    ops = _counter(
        "redis_operations",
        "Redis calls by operation and result (ok, hit, miss, error, timeout, skipped)",
        ["operation", "result"],
    )
    fallback = _counter("redis_fallback", "Calls answered without Redis (it was down)", [])
    reconnect = _counter("redis_reconnections", "Times Redis came back after an outage", [])
    outages = _counter("redis_outages", "Times Redis went down", [])
    up = _gauge("redis_up", "1 while the shared tier is usable (absent: no Redis)", [])
    if shared is not None:
        for (op, result), count in sorted(shared.operations.items()):
            ops.add_metric([op, result], count)
        fallback.add_metric([], shared.fallbacks + skipped)
        reconnect.add_metric([], shared.reconnections)
        outages.add_metric([], shared.outages)
        up.add_metric([], 1 if shared.available else 0)
    else:
        for family in (fallback, reconnect, outages):
            family.add_metric([], 0)
    return [ops, fallback, reconnect, outages, up]


def _counter(name: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


def _histogram(name: str, doc: str, labels: Sequence[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(PREFIX + name, doc, labels=labels)


def _single(
    make: Callable[[str, str, Sequence[str]], CounterMetricFamily | GaugeMetricFamily],
    name: str,
    doc: str,
    value: float,
) -> Metric:
    family = make(name, doc, [])
    family.add_metric([], value)
    return family


def _add_histogram(
    family: HistogramMetricFamily, labels: list[str], hist: Histogram, bounds: Sequence[float]
) -> None:
    buckets = []
    running = 0.0
    for bound, count in zip((*bounds, float("inf")), hist[:-1], strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    family.add_metric(labels, buckets, hist[-1])


# -- rendering, snapshots and the sum over workers -----------------------------------------


class _Families:
    """A collector over families built beforehand (so rendering may run in another thread)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def render(families: list[Metric]) -> bytes:
    """Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def snapshot(families: list[Metric]) -> bytes:
    """A worker's families as JSON, for the parent to sum."""
    return json.dumps(
        [
            [f.name, f.type, f.documentation, [[s.name, s.labels, s.value] for s in f.samples]]
            for f in families
        ],
        separators=(",", ":"),
    ).encode()


def _breaker_worst(values: list[float]) -> float:
    rank = {0: 0, 2: 1, 1: 2}  # closed < half-open < open: any open worker shows open
    return max(values, key=lambda v: rank.get(int(v), 0))


#: How gauges that are not additive combine over workers (everything else is summed).
MERGE: Final[dict[str, Callable[[list[float]], float]]] = {
    PREFIX + "discovered_projects": max,
    PREFIX + "discovery_last_success_timestamp_seconds": max,
    PREFIX + "circuit_breaker_state": _breaker_worst,
    PREFIX + "build_info": max,
    PREFIX + "redis_up": min,
    "process_start_time_seconds": min,
    "process_max_fds": max,
}


def merge(snapshots: Iterable[Sequence[Any]]) -> list[Metric]:
    """Sum several processes' families (JSON snapshots or collected families)."""
    order: dict[str, tuple[str, str]] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for families in snapshots:
        for name, kind, doc, rows in families:
            if name not in order:
                order[name] = (kind, doc)
                samples[name] = {}
            into = samples[name]
            for sample_name, labels, value in rows:
                key = (sample_name, tuple(labels.items()))
                into.setdefault(key, []).append(float(value))
    out = []
    for name, (kind, doc) in order.items():
        combine = MERGE.get(name, sum) if kind == "gauge" else sum
        family = Metric(name, doc, kind)
        for (sample_name, labels), values in samples[name].items():
            family.add_sample(sample_name, dict(labels), combine(values))
        out.append(family)
    return out


def as_rows(families: list[Metric]) -> list[list[Any]]:
    """Collected families in the snapshot shape (for merging the parent's own families)."""
    return [
        [f.name, f.type, f.documentation, [[s.name, s.labels, s.value] for s in f.samples]]
        for f in families
    ]


def parse_snapshot(data: bytes) -> list[list[Any]]:
    rows = json.loads(data)
    if not isinstance(rows, list):
        raise ValueError("a metrics snapshot is a JSON list")
    return rows


def process_families() -> list[Metric]:
    return list(ProcessCollector(registry=None).collect())
