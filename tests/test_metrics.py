"""/metrics on METRICS_ADDR: values after scripted traffic, not only names (DESIGN §7)."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from conftest import Seeded, SeedImage
from harbor_emulator import HarborEmulator
from prometheus_client.parser import text_string_to_metric_families
from redis_topology import RedisTopology
from router_runner import RunningRouter
from support_tools import free_port

from harbor_router import metrics, routes

pytestmark = pytest.mark.integration

Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


def names(samples: Samples) -> set[str]:
    return {n for n, _, _ in samples}


def scrape(router: RunningRouter) -> tuple[Samples, str]:
    status, body = router.scrape()
    assert status == 200
    text = body.decode()
    return parse(text), text


def pull(router: RunningRouter, image: SeedImage, repo: str | None = None) -> int:
    status, _, _ = router.request(
        "GET",
        f"/v2/proxy/{repo or image.repo}/manifests/{image.tag}",
        {"Accept": image.media_type},
    )
    return status


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


P = "harbor_router_"


def test_cache_hits_and_one_fanout(
    make_router: Callable[..., RunningRouter], seeded: Seeded
) -> None:
    router = make_router()
    image = seeded.get("ghcr", "acme/tool")
    hits = 5
    for _ in range(hits + 1):
        assert pull(router, image) == 200
    samples, text = scrape(router)
    ok = {"method": "GET", "type": "manifest", "status": "2xx"}
    assert value(samples, P + "requests_total", **ok) == hits + 1
    assert value(samples, P + "requests_total", type="manifest") == hits + 1
    timed = {"method": "GET", "req_type": "manifest", "status_class": "2xx"}
    assert value(samples, P + "request_duration_seconds_count", **timed) == hits + 1
    assert value(samples, P + "request_duration_seconds_bucket", le="+Inf", **timed) == hits + 1
    assert value(samples, P + "cache_lookups_total", result="hit") == hits
    assert value(samples, P + "cache_lookups_total", result="miss") == 1
    assert value(samples, P + "cache_lookups_total", result="stale") == 0
    assert value(samples, P + "fanout_size_count") == 1
    assert value(samples, P + "fanout_size_sum") == 3  # dockerhub, ghcr, quay
    assert value(samples, P + "resolve_duration_seconds_count", result="found") == 1
    # the fan-out's 200 from ghcr and one request per hit over the raw pool
    assert value(samples, P + "upstream_requests_total", project="ghcr", status="200") == hits + 1
    assert value(samples, P + "upstream_project_duration_seconds_count", project="ghcr") >= hits
    assert value(samples, P + "response_bytes_total", req_type="manifest") >= (hits + 1) * len(
        image.manifest
    )
    assert value(samples, P + "inflight_requests") == 0
    assert value(samples, P + "cache_entries", backend="l1") == 1
    assert value(samples, P + "l1_cache_events_total", backend="l1", event="hit") >= hits
    assert value(samples, P + "discovered_projects") == 3
    assert value(samples, P + "discovery_last_success_timestamp_seconds") > time.time() - 600
    assert value(samples, P + "discovery_duration_seconds_count") >= 1
    assert value(samples, P + "circuit_breaker_state", project="ghcr") == 0
    assert value(samples, P + "singleflight_inflight") == 0
    assert value(samples, P + "build_info", version="0.1.0") == 1
    info = next(ls for n, ls, _ in samples if n == P + "build_info")
    assert info["speedups"].startswith("cache=") and info["commit"]
    assert "process_cpu_seconds_total" in names(samples)
    assert "process_resident_memory_bytes" in names(samples)
    # no image name, tag or digest anywhere, label values included
    assert image.repo not in text and "acme" not in text and image.digest not in text
    for _, labels, _ in samples:
        for label in labels.values():
            assert "/" not in label or label.startswith("cache=")


def test_negative_hit_and_singleflight_counters(
    make_router: Callable[..., RunningRouter], seeded: Seeded
) -> None:
    router = make_router(NEGATIVE_CACHE_TTL="30s")
    image = seeded.get("ghcr", "acme/tool")
    assert pull(router, image, "nobody/here") == 404
    assert pull(router, image, "nobody/here") == 404  # from the negative cache
    samples, text = scrape(router)
    assert value(samples, P + "negative_cache_hits_total") == 1
    assert value(samples, P + "cache_lookups_total", result="negative") == 1
    assert value(samples, P + "cache_lookups_total", result="miss") == 1
    assert value(samples, P + "requests_total", type="manifest", status="4xx") == 2
    assert value(samples, P + "resolve_duration_seconds_count", result="not_found") == 1
    assert value(samples, P + "upstream_requests_total", status="404") == 3  # one fan-out
    assert value(samples, P + "cache_entries", backend="l1_negative") == 1
    assert value(samples, P + "singleflight_dedup_total") == 0
    assert "nobody" not in text


def test_breaker_opening(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(CIRCUIT_BREAKER_THRESHOLD="2", CIRCUIT_BREAKER_TIMEOUT="60s")
    harbor.set_fault("quay", status=500)
    image = seeded.get("ghcr", "acme/tool")
    for repo in ("gone/one", "gone/two"):
        assert pull(router, image, repo) == 502  # 404, 404 and a 500: not a definite 404
    samples, text = scrape(router)
    assert value(samples, P + "circuit_breaker_state", project="quay") == 1  # open
    assert value(samples, P + "circuit_breaker_state", project="ghcr") == 0
    moves = {"project": "quay", "from": "closed", "to": "open"}
    assert value(samples, P + "circuit_breaker_transitions_total", **moves) == 1
    assert value(samples, P + "circuit_breaker_transitions_total") == 1
    assert value(samples, P + "upstream_requests_total", project="quay", status="500") == 2
    assert value(samples, P + "resolve_duration_seconds_count", result="error") == 2
    assert value(samples, P + "requests_total", type="manifest", status="5xx") == 2
    # the next fan-out skips quay: two projects asked
    assert pull(router, image, "gone/three") == 502
    samples, _ = scrape(router)
    assert value(samples, P + "fanout_size_count") == 3
    assert value(samples, P + "fanout_size_sum") == 3 + 3 + 2
    assert "gone" not in text


def test_rate_limit_rejections(make_router: Callable[..., RunningRouter]) -> None:
    router = make_router(RATE_LIMIT_PER_IP="1")
    statuses = [router.request("GET", "/v2/")[0] for _ in range(3)]
    assert statuses == [200, 429, 429]
    samples, _ = scrape(router)
    assert value(samples, P + "rate_limit_rejected_total") == 2
    assert value(samples, P + "requests_total", type="v2check", status="4xx") == 2
    assert value(samples, P + "requests_total", type="v2check", status="2xx") == 1
    assert value(samples, P + "cache_entries", backend="ratelimit") == 1


def test_connection_limit_and_timeout_counters(make_router: Callable[..., RunningRouter]) -> None:
    router = make_router(MAX_CONNECTIONS="2", HEADER_TIMEOUT="1s", KEEPALIVE_TIMEOUT="1s")
    good = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"

    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", router.port), timeout=5)

    def closed(sock: socket.socket) -> bytes:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    samples, _ = scrape(router)
    assert value(samples, P + "open_connections") == 0
    assert value(samples, P + "connections_rejected_total") == 0
    for reason in metrics.CLOSE_REASONS:  # every reason exported from the start
        assert (P + "connections_closed_total", {"reason": reason}, 0.0) in samples
    slow, idle = connect(), connect()
    with slow, idle:
        slow.sendall(b"GET /v2/ HTTP/1.1\r\nHost")  # a head that never completes
        idle.sendall(good)
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        assert wait_until(lambda: value(scrape(router)[0], P + "open_connections") == 2, 3)
        for _ in range(2):  # both slots taken: refused at accept
            with connect() as extra:
                assert closed(extra).startswith(b"HTTP/1.1 503")
        assert closed(slow).startswith(b"HTTP/1.1 408")  # HEADER_TIMEOUT
        assert closed(idle) == b""  # KEEPALIVE_TIMEOUT: a silent close
    with connect() as silent:  # connected, never sent a byte: HEADER_TIMEOUT, silently
        assert closed(silent) == b""
    assert wait_until(lambda: value(scrape(router)[0], P + "open_connections") == 0, 3)
    samples, _ = scrape(router)
    assert value(samples, P + "connections_rejected_total") == 2
    assert value(samples, P + "connections_closed_total", reason="header_timeout") == 2
    assert value(samples, P + "connections_closed_total", reason="keepalive_timeout") == 1
    # refused connections are not requests: only the one GET /v2/ and the 408 were answered
    assert value(samples, P + "requests_total", type="v2check") == 1
    assert value(samples, P + "requests_total", status="5xx") == 0


def test_redis_fallback_and_reconnection(
    make_router: Callable[..., RunningRouter], redis_sentinel: RedisTopology, seeded: Seeded
) -> None:
    sentinels = ",".join(f"{h}:{p}" for h, p in redis_sentinel.sentinel_addresses)
    router = make_router(REDIS_SENTINELS=sentinels, REDIS_TIMEOUT="200ms")
    shared = router.app.shared
    assert shared is not None
    assert wait_until(lambda: shared.available, 10)
    samples, _ = scrape(router)
    assert value(samples, P + "redis_up") == 1
    assert value(samples, P + "redis_fallback_total") == 0
    redis_sentinel.master.pause()  # SIGSTOP
    try:
        assert pull(router, seeded.get("quay", "coreos/etcd")) == 200  # Redis times out
        assert pull(router, seeded.get("ghcr", "acme/tool")) == 200  # Redis known down
        samples, _ = scrape(router)
        assert value(samples, P + "redis_up") == 0
        assert value(samples, P + "redis_fallback_total") > 0
        timeouts = {"operation": "get_mapping", "result": "timeout"}
        assert value(samples, P + "redis_operations_total", **timeouts) == 1
        assert value(samples, P + "redis_outages_total") == 1
    finally:
        redis_sentinel.master.resume()
    assert wait_until(lambda: shared.available, 15)
    samples, _ = scrape(router)
    assert value(samples, P + "redis_reconnections_total") == 1
    assert value(samples, P + "redis_up") == 1


def test_a_fast_path_hit_is_timed_from_its_start_to_its_end(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """A hit answered on the fast path reads the clock at its start (for its duration, the
    pool's idle check and the upstream request's duration) and at its end: both durations
    cover the time Harbor took to answer."""
    router = make_router()
    image = seeded.get("ghcr", "acme/tool")
    for _ in range(3):  # mapped, then hits: an idle pooled connection for the fast path
        assert pull(router, image) == 200
    handler = router.app.handler
    assert handler is not None
    starts = handler.fast_starts
    before, _ = scrape(router)
    harbor.set_fault("ghcr", delay=0.3, times=1)
    assert pull(router, image) == 200
    assert handler.fast_starts == starts + 1
    after, _ = scrape(router)
    timed = {"method": "GET", "req_type": "manifest", "status_class": "2xx"}
    for name, labels in (
        ("request_duration_seconds", timed),
        ("upstream_project_duration_seconds", {"project": "ghcr"}),
    ):
        count, took = (
            value(after, P + name + end, **labels) - value(before, P + name + end, **labels)
            for end in ("_count", "_sum")
        )
        assert count == 1 and 0.3 <= took < 5.0, (name, count, took)


def test_merge_sums_counters_and_ranks_gauges() -> None:
    one = metrics.Metrics()
    two = metrics.Metrics()
    one.request_done("GET", 1, 200, 0.002, 100)
    two.request_done("GET", 1, 200, 0.2, 50)
    two.request_done("HEAD", 2, 404, 0.02, 10)
    rows = [metrics.parse_snapshot(metrics.snapshot(m.collect())) for m in (one, two)]
    text = metrics.render(metrics.merge(rows)).decode()
    samples = parse(text)
    ok = {"method": "GET", "type": "manifest", "status": "2xx"}
    assert value(samples, P + "requests_total", **ok) == 2
    assert value(samples, P + "requests_total") == 3
    timed = {"method": "GET", "req_type": "manifest", "status_class": "2xx"}
    assert value(samples, P + "request_duration_seconds_bucket", le="0.0025", **timed) == 1
    assert value(samples, P + "request_duration_seconds_bucket", le="0.25", **timed) == 2
    assert value(samples, P + "request_duration_seconds_sum", **timed) == pytest.approx(0.202)
    assert value(samples, P + "response_bytes_total", req_type="manifest") == 150
    assert value(samples, P + "build_info") == 1  # max, not 2
    # breaker state over workers: any open one shows open, else half-open, else closed
    states = [
        [[P + "circuit_breaker_state", "gauge", "", [[P + "circuit_breaker_state", ls, v]]]]
        for ls, v in (({"project": "a"}, 1), ({"project": "a"}, 2), ({"project": "b"}, 2),
                     ({"project": "b"}, 0))
    ]  # fmt: skip
    merged = parse(metrics.render(metrics.merge(states)).decode())
    assert value(merged, P + "circuit_breaker_state", project="a") == 1
    assert value(merged, P + "circuit_breaker_state", project="b") == 2


def test_request_and_upstream_tables_expose_the_same_text() -> None:
    m = metrics.Metrics()
    m.request_done("GET", routes.MANIFEST, 200, 0.0002, 1000)
    m.request_done("GET", routes.MANIFEST, 200, 0.02, 500)
    m.request_done("BREW", -1, 499, 3.0, 0)  # any other method, an unparsed target
    m.upstream_answered("dockerhub", 200, 0.0001)
    m.upstream_answered("dockerhub", 503, 0.5)
    m.upstream_answered("dockerhub", 599, 40.0)  # not a code of its own: its class
    m.upstream_done("dockerhub", "timeout", 10.0)
    families = m._request_families()[:3]
    families += [f for f in m.collect() if f.name.startswith(P + "upstream_")]
    # the text as it was when the tables were Python dictionaries and lists (the compiled ones
    # keep C arrays: the exposition must not change)
    expected = (pathlib.Path(__file__).parent / "metrics_tables.txt").read_text()
    assert metrics.render(families).decode() == expected


def _get(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_two_workers_sum_in_one_endpoint(harbor: HarborEmulator) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HARBOR_URL": harbor.url,
        "HARBOR_USERNAME": harbor.username,
        "HARBOR_PASSWORD": harbor.password,
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "WORKERS": "2",
        "AUTH_MODE": "none",
        "LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "harbor_router"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url, murl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    try:
        probes = 0
        deadline = time.monotonic() + 20
        scraped: Samples = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, "router exited early"
            try:
                status, body = _get(murl + "/metrics")
                scraped = parse(body.decode()) if status == 200 else []
                if value(scraped, P + "workers_scraped") == 2:  # both answer the parent
                    probes += 1  # every probe counts, whichever worker and status
                    if _get(url + "/readyz")[0] == 200:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the workers never became ready")
        requests = 20
        for _ in range(requests):  # urllib: a fresh connection each time, spread by the kernel
            assert _get(url + "/v2/")[0] == 200
        samples = parse(_get(murl + "/metrics")[1].decode())
        assert value(samples, P + "workers_scraped") == 2
        assert value(samples, P + "requests_total", type="v2check", status="2xx") == requests
        assert value(samples, P + "requests_total", type="health") == probes
        assert value(samples, P + "requests_total") == requests + probes
        assert value(samples, P + "request_duration_seconds_count") == requests + probes
        assert value(samples, P + "discovered_projects") == 3  # max over workers, not 6
        assert value(samples, P + "build_info") == 1
        assert value(samples, "process_cpu_seconds_total") > 0
        # debug endpoints through the parent: GET from the first worker, DELETE on every one
        status, body = _get(murl + "/debug/projects")
        assert status == 200 and b'"quay"' in body
        status, body = _get(murl + "/debug/cache?name=acme/tool", method="DELETE")
        assert status == 200 and body.count(b'"l1"') == 3  # the sum and one per worker
        assert _get(murl + "/debug/cache?name=Bad..Name", method="DELETE")[0] == 400
        started = time.perf_counter()
        scrapes = 20
        for _ in range(scrapes):
            assert _get(murl + "/metrics")[0] == 200
        per_scrape = (time.perf_counter() - started) / scrapes
        assert per_scrape < 1.0  # a bound, not a benchmark (see docs: measured ~ms)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


def test_per_request_counters_render_as_before() -> None:
    """The counters a request moves (compiled, C integers: ``metrics.Count``) read back as
    ints and render, and snapshot, as the dictionary's counts do."""
    m = metrics.Metrics()
    m.fast_hits += 3
    m.lookups[metrics.HIT] += 2
    m.inflight += 2
    m.inflight -= 1
    assert (m.fast_hits, m.inflight) == (3, 1)
    assert type(m.fast_hits) is int and type(m.inflight) is int
    text = metrics.render(m.collect()).decode()
    assert P + 'cache_lookups_total{result="hit"} 5.0\n' in text
    assert P + "inflight_requests 1.0\n" in text
    rows = metrics.parse_snapshot(metrics.snapshot(m.collect()))
    merged = metrics.render(metrics.merge([rows]))
    assert P.encode() + b'cache_lookups_total{result="hit"} 5.0\n' in merged
