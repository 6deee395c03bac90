"""Resolution seen from outside: mapping cache, fan-out, breakers, blobs, tags (DESIGN §3).

Black-box tests: the client side is plain HTTP to the router, the Harbor side is the emulator's
request log, so every "it costs one request" or "that project was never asked" claim is counted
on the wire. Waiting for a background effect is a bounded poll; time is only let pass where a
TTL or a breaker timeout has to expire, and those are configured short.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from conftest import Seeded, SeedImage
from harbor_emulator import HarborEmulator
from router_runner import RunningRouter

from harbor_router.projects import ProjectSet

pytestmark = pytest.mark.integration

PREFIX = "/v2/proxy"
PROXY_PROJECTS = ("dockerhub", "ghcr", "quay")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1"
ACCEPT_ALL = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"
UNKNOWN_DIGEST = "sha256:" + "0" * 64


# -- helpers ---------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_path(repo: str, reference: str) -> str:
    return f"{PREFIX}/{repo}/manifests/{reference}"


def blob_path(repo: str, digest: str) -> str:
    return f"{PREFIX}/{repo}/blobs/{digest}"


def accept(image: SeedImage) -> dict[str, str]:
    return {"Accept": image.media_type}


def error_entry(body: bytes) -> dict[str, object]:
    data = json.loads(body)
    assert isinstance(data, dict) and isinstance(data.get("errors"), list), body[:300]
    entry = data["errors"][0]
    assert isinstance(entry, dict)
    return entry


def error_code(body: bytes) -> object:
    return error_entry(body).get("code")


def asked(harbor: HarborEmulator, path_contains: str | None = None) -> dict[str, int]:
    """Requests per proxy project (``/v2/{project}/...`` only), optionally filtered by path."""
    return {p: harbor.count(p, path_contains) for p in PROXY_PROJECTS}


def v2_projects(harbor: HarborEmulator) -> list[str | None]:
    """The project of every ``/v2/...`` request Harbor got, in order."""
    return [r.project for r in harbor.requests() if r.path.startswith("/v2")]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def outcome_of(detail: object, project: str) -> str:
    """The part of an error ``detail`` that speaks about ``project`` (lower-cased text)."""
    if isinstance(detail, Mapping):
        assert project in detail, f"{project} missing from detail {detail!r}"
        return json.dumps(detail[project]).lower()
    if isinstance(detail, list):
        parts = [json.dumps(d) for d in detail if project in json.dumps(d)]
        assert parts, f"{project} missing from detail {detail!r}"
        return " ".join(parts).lower()
    text = json.dumps(detail)
    assert project in text, f"{project} missing from detail {detail!r}"
    return text.lower()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    elapsed: float  # seconds from the common start to the end of the response


def concurrently(
    router: RunningRouter,
    requests: Sequence[tuple[str, str, Mapping[str, str]]],
    timeout: float = 20.0,
) -> list[Answer]:
    """Open one connection per request, then send them all at once (a barrier), so they
    really overlap in the router; answers in request order."""
    barrier = threading.Barrier(len(requests))

    def one(item: tuple[str, str, Mapping[str, str]]) -> Answer:
        method, path, headers = item
        conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=timeout)
        try:
            conn.connect()
            barrier.wait(timeout)
            started = time.monotonic()
            conn.request(method, path, headers=dict(headers))
            resp = conn.getresponse()
            body = resp.read()
            return Answer(resp.status, resp.headers, body, time.monotonic() - started)
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(one, requests))


def break_quay(router: RunningRouter, harbor: HarborEmulator, failures: int, tag: str) -> int:
    """Send ``failures`` fan-outs for distinct unknown images while quay misbehaves; return how
    many requests quay got (one per fan-out; two when a reset connection is retried once, as
    RFC 9112 §9.3.1 allows for idempotent requests)."""
    for i in range(failures):
        status, _, body = router.request("GET", manifest_path(f"breaker/{tag}-{i}", "1"))
        assert status in (502, 503), (status, body[:300])
    sent = harbor.count("quay")
    most = 2 * failures if tag.startswith("reset") else failures
    assert failures <= sent <= most, f"{failures} failing fan-outs sent {sent} requests to quay"
    return sent


# -- 3.1 mapping cache: one positive entry per repository ------------------------------------


@pytest.mark.parametrize(
    ("project", "repo"),
    [("dockerhub", "library/alpine"), ("ghcr", "acme/tool"), ("quay", "coreos/etcd")],
)
def test_one_mapping_serves_every_route_of_the_repository(
    project: str, repo: str, router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    """After one manifest GET, each follow-up (tag, digest, blobs, tags/list, referrers; GET
    and HEAD) is exactly one request, to the mapped project only."""
    image = seeded.get(project, repo)
    status, _, body = router.request("GET", manifest_path(repo, image.tag), accept(image))
    assert status == 200, body[:300]
    assert router.app.mapping is not None
    assert router.app.mapping.get(repo) == project

    follow_ups: list[tuple[str, str, str]] = [
        ("GET", manifest_path(repo, image.tag), f"/manifests/{image.tag}"),
        ("HEAD", manifest_path(repo, image.tag), f"/manifests/{image.tag}"),
        ("GET", manifest_path(repo, image.digest), f"/manifests/{image.digest}"),
        ("HEAD", manifest_path(repo, image.digest), f"/manifests/{image.digest}"),
        *[("GET", blob_path(repo, d), f"/blobs/{d}") for d in image.blobs],
        ("GET", f"{PREFIX}/{repo}/tags/list", "/tags/list"),
        ("GET", f"{PREFIX}/{repo}/referrers/{image.digest}", f"/referrers/{image.digest}"),
    ]
    for method, path, suffix in follow_ups:
        harbor.clear_log()
        status, _, body = router.request(method, path, accept(image))
        assert status == 200, (method, path, body[:300])
        sent = [r for r in harbor.requests() if r.path.startswith("/v2")]
        assert [(r.project, r.method) for r in sent] == [(project, method)], (method, path)
        assert sent[0].path.startswith(f"/v2/{project}/{repo}/")
        assert sent[0].path.split("?")[0].endswith(suffix)

    # HEAD on a blob Harbor has cached (the GETs above cached it): still one request.
    config = image.config
    assert wait_until(lambda: harbor.is_blob_cached(project, config))
    harbor.clear_log()
    status, headers, _ = router.request("HEAD", blob_path(repo, config))
    assert status == 200
    assert headers["Docker-Content-Digest"] == config
    assert v2_projects(harbor) == [project]


# -- 3.1 negative cache ------------------------------------------------------------------------


def test_negative_entry_answers_without_asking_harbor_until_it_expires(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator
) -> None:
    router = make_router(NEGATIVE_CACHE_TTL="600ms")
    path = manifest_path("nobody/negative", "1")
    status, _, body = router.request("GET", path)
    assert status == 404, body[:300]
    assert error_code(body) == "MANIFEST_UNKNOWN"
    assert asked(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}

    harbor.clear_log()
    for _ in range(3):
        status, headers, body = router.request("GET", path)
        assert status == 404, body[:300]
        assert error_code(body) == "MANIFEST_UNKNOWN"
        assert headers["Content-Type"].startswith("application/json")
    assert v2_projects(harbor) == [], "a negative entry costs no upstream request"

    # The entry is per (name, reference): another tag of the same name is asked for.
    status, _, body = router.request("GET", manifest_path("nobody/negative", "2"))
    assert status == 404
    assert asked(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}

    time.sleep(0.7)  # past NEGATIVE_CACHE_TTL
    harbor.clear_log()
    status, _, body = router.request("GET", path)
    assert status == 404
    assert error_code(body) == "MANIFEST_UNKNOWN"
    assert asked(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}, "expired: a fresh fan-out"


FAULTS: dict[str, dict[str, object]] = {
    "timeout": {"delay": 3.0},
    "500": {"status": 500},
    "reset": {"reset": True},
    "429": {"status": 429},
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_negative_entry_unless_every_project_said_404(
    fault: str, make_router: Callable[..., RunningRouter], harbor: HarborEmulator
) -> None:
    router = make_router(RESOLVER_TIMEOUT="500ms", NEGATIVE_CACHE_TTL="30s")
    path = manifest_path("nobody/flaky", "1")
    harbor.set_fault("quay", **FAULTS[fault])  # type: ignore[arg-type]
    for attempt in range(2):
        harbor.clear_log()
        status, _, body = router.request("GET", path)
        assert status in (502, 503), (attempt, status, body[:300])
        assert error_code(body) != "MANIFEST_UNKNOWN"
        got = asked(harbor)
        assert got["dockerhub"] == 1 and got["ghcr"] == 1, (attempt, got)
        # A reset may be retried once on a new connection (RFC 9112 §9.3.1; aiohttp does so).
        assert 1 <= got["quay"] <= (2 if fault == "reset" else 1), (attempt, got)

    # Once every project gives a definite 404, the 404 is remembered.
    harbor.clear_faults()
    harbor.clear_log()
    status, _, body = router.request("GET", path)
    assert status == 404, body[:300]
    assert error_code(body) == "MANIFEST_UNKNOWN"
    assert asked(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}
    harbor.clear_log()
    status, _, _ = router.request("GET", path)
    assert status == 404
    assert v2_projects(harbor) == []


# -- 3.1 stale-while-revalidate ---------------------------------------------------------------


def test_stale_mapping_is_used_and_refreshed_once(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(CACHE_TTL="1s", STALE_WHILE_REVALIDATE="5s")
    image = seeded.get("quay", "coreos/etcd")
    path = manifest_path(image.repo, image.tag)
    status, _, _ = router.request("GET", path, accept(image))
    assert status == 200
    time.sleep(1.1)  # past CACHE_TTL, well within STALE_WHILE_REVALIDATE
    harbor.clear_log()

    answers = concurrently(router, [("GET", path, accept(image))] * 20)

    for answer in answers:
        assert answer.status == 200, answer.body[:300]
        assert answer.headers["Docker-Content-Digest"] == image.digest
        assert answer.body == image.manifest
    # The clients were served by the mapped project (plus, at most, one refresh request there).
    assert 20 <= harbor.count("quay", "/manifests/") <= 21
    # Exactly one background refresh: one request to each of the other projects, not 20.
    assert wait_until(lambda: harbor.count("dockerhub") >= 1 and harbor.count("ghcr") >= 1), (
        "no background refresh reached the other projects"
    )
    time.sleep(0.2)  # let any (wrong) extra refresh arrive before counting
    assert harbor.count("dockerhub") == 1
    assert harbor.count("ghcr") == 1
    assert router.app.mapping is not None
    assert router.app.mapping.get(image.repo) == "quay"

    # The refresh made the entry fresh again: no new fan-out.
    harbor.clear_log()
    status, _, _ = router.request("GET", path, accept(image))
    assert status == 200
    assert v2_projects(harbor) == ["quay"]


def test_mapping_past_the_stale_window_is_not_used(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(CACHE_TTL="300ms", STALE_WHILE_REVALIDATE="200ms")
    image = seeded.get("quay", "coreos/etcd")
    path = manifest_path(image.repo, image.tag)
    status, _, _ = router.request("GET", path, accept(image))
    assert status == 200
    time.sleep(0.65)  # past CACHE_TTL + STALE_WHILE_REVALIDATE
    harbor.clear_log()
    status, headers, _ = router.request("GET", path, accept(image))
    assert status == 200
    assert headers["Docker-Content-Digest"] == image.digest
    # A full fan-out answered it: every project once, quay not a second time for a refresh.
    assert wait_until(lambda: harbor.count("quay") >= 1)
    time.sleep(0.1)
    assert asked(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}


# -- 3.1 a mapped project that answers 404 ------------------------------------------------------


def test_mapped_404_asks_the_other_projects_and_moves_the_mapping(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(PROJECT_PRIORITY="ghcr")
    ghcr, quay = seeded.get("ghcr", "shared/app"), seeded.get("quay", "shared/app")
    assert ghcr.digest != quay.digest
    path = manifest_path("shared/app", "1")
    status, headers, _ = router.request("GET", path, accept(ghcr))
    assert status == 200
    assert headers["Docker-Content-Digest"] == ghcr.digest
    assert router.app.mapping is not None
    assert router.app.mapping.get("shared/app") == "ghcr"

    harbor.set_fault("ghcr", status=404)
    harbor.clear_log()
    status, headers, body = router.request("GET", path, accept(quay))
    assert status == 200, body[:300]
    assert headers["Docker-Content-Digest"] == quay.digest
    assert body == quay.manifest
    assert router.app.mapping.get("shared/app") == "quay"
    got = asked(harbor, "/manifests/")
    assert got["ghcr"] == 1, "the mapped project is asked once, not again in the fan-out"
    assert got["quay"] == 1

    harbor.clear_log()
    status, headers, _ = router.request("GET", path, accept(quay))
    assert status == 200
    assert headers["Docker-Content-Digest"] == quay.digest
    assert v2_projects(harbor) == ["quay"]


def test_mapped_404_that_nobody_else_has_is_manifest_unknown(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    status, _, _ = router.request("GET", manifest_path(image.repo, image.tag), accept(image))
    assert status == 200
    harbor.set_fault("ghcr", status=404)
    harbor.clear_log()
    status, _, body = router.request("GET", manifest_path(image.repo, image.tag), accept(image))
    assert status == 404, body[:300]
    assert error_code(body) == "MANIFEST_UNKNOWN"
    assert asked(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}


# -- 3.2 singleflight ------------------------------------------------------------------------


def test_concurrent_misses_share_one_fan_out(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    harbor.set_fault("ghcr", delay=0.5)  # the winner is slow: all 200 requests overlap
    path = manifest_path(image.repo, image.tag)

    answers = concurrently(router, [("GET", path, accept(image))] * 200, timeout=30)

    statuses = [a.status for a in answers]
    assert statuses == [200] * 200, sorted(set(statuses))
    assert all(a.headers["Docker-Content-Digest"] == image.digest for a in answers)
    assert all(a.body == image.manifest for a in answers)
    assert asked(harbor, "/manifests/") == {"dockerhub": 1, "ghcr": 1, "quay": 1}


def test_followers_of_a_stuck_fan_out_are_bounded(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(RESOLVER_TIMEOUT="1s")
    image = seeded.get("ghcr", "acme/tool")
    harbor.set_fault("ghcr", delay=10)
    path = manifest_path(image.repo, image.tag)

    answers = concurrently(router, [("GET", path, accept(image))] * 50, timeout=15)

    assert {a.status for a in answers} <= {502, 503}, {a.status for a in answers}
    slowest = max(a.elapsed for a in answers)
    assert slowest < 1.0 + 2.0, f"a follower waited {slowest:.1f}s with RESOLVER_TIMEOUT=1s"
    assert harbor.count("ghcr", "/manifests/") == 1


def test_a_mapped_project_that_sends_no_head_is_a_timely_502(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """The hit path's head deadline (``relay.HeadDeadlines``): a request to the mapped project
    whose head does not come is answered about RESOLVER_TIMEOUT later, naming the timeout,
    and the next request is served as before."""
    router = make_router(RESOLVER_TIMEOUT="500ms")
    image = seeded.get("ghcr", "acme/tool")
    path = manifest_path(image.repo, image.tag)
    for _ in range(3):  # mapped, and hits
        assert router.request("GET", path, accept(image))[0] == 200
    harbor.set_fault("ghcr", delay=10, times=1)
    started = time.monotonic()
    status, _, body = router.request("GET", path, accept(image), timeout=10)
    elapsed = time.monotonic() - started
    assert status == 502 and b"did not answer within 0.5s" in body, body[:300]
    assert 0.45 < elapsed < 2.0, elapsed
    status, _, body = router.request("GET", path, accept(image))
    assert status == 200 and body == image.manifest


def test_a_mapped_project_no_longer_discovered_is_not_asked(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """The fast path keeps its own table of the discovered projects: a new project set from
    discovery replaces it, so a mapping to a project that is gone is not followed."""
    router = make_router()
    image = seeded.get("ghcr", "acme/tool")
    path = manifest_path(image.repo, image.tag)
    for _ in range(3):  # mapped to ghcr, then fast-path hits
        assert router.request("GET", path, accept(image))[0] == 200
    assert router.app.handler is not None and router.app.handler.fast_starts >= 1
    discovery = router.app.discovery
    assert discovery is not None
    remaining = [p for p in discovery.projects.ordered if p.name != "ghcr"]

    async def rediscover() -> None:
        discovery.projects = ProjectSet(remaining)

    router.call(rediscover())
    harbor.clear_log()
    status, _, body = router.request("GET", path, accept(image))
    assert status == 404, body[:300]
    assert harbor.count("ghcr", "/manifests/") == 0


def test_fast_path_hits_alternating_between_projects_go_to_their_own(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """The fast path keeps the last project and breaker it looked up by the mapped name: hits
    that alternate between repositories mapped to two projects each go, on the fast path, to
    their own project, and are accounted to its breaker."""
    router = make_router()
    images = [seeded.get("ghcr", "acme/tool"), seeded.get("quay", "coreos/etcd")]
    for image in images:  # mapped
        assert router.request("GET", manifest_path(image.repo, image.tag), accept(image))[0] == 200
    handler = router.app.handler
    assert handler is not None
    before = handler.fast_starts
    harbor.clear_log()
    for _ in range(3):
        for image in images:
            status, _, body = router.request(
                "GET", manifest_path(image.repo, image.tag), accept(image)
            )
            assert status == 200 and body == image.manifest
    assert handler.fast_starts - before >= 5  # the first opens the pool's connection
    assert harbor.count("ghcr", "/manifests/") == 3 and harbor.count("quay", "/manifests/") == 3
    assert harbor.count("dockerhub", "/manifests/") == 0
    # each hit's breaker is its project's: a success clears its own project's failure only
    tool, etcd = images
    for project in ("quay", "ghcr"):
        harbor.set_fault(project, status=500, times=1)
    assert router.request("GET", manifest_path(etcd.repo, etcd.tag), accept(etcd))[0] == 502
    assert router.request("GET", manifest_path(tool.repo, tool.tag), accept(tool))[0] == 502
    breakers = handler._breakers

    def failures() -> tuple[int, int]:  # counted once the answer is out: maybe a moment later
        return breakers.get("quay").failures, breakers.get("ghcr").failures

    assert wait_until(lambda: failures() == (1, 1)), failures()
    for image, expected in ((etcd, (0, 1)), (tool, (0, 0))):
        assert router.request("GET", manifest_path(image.repo, image.tag), accept(image))[0] == 200
        assert wait_until(lambda: failures() == expected), failures()  # noqa: B023


# -- 3.2 fan-out: which answer wins -----------------------------------------------------------


def test_fan_out_answers_leave_their_connections_open_for_the_next(
    router: RunningRouter, harbor: HarborEmulator
) -> None:
    """Twenty misses in a row over three projects: every 404 leaves its keep-alive connection
    ready for the next request, so the sixty answers come over a handful of connections."""
    for i in range(2):
        router.request("GET", manifest_path(f"nobody/warm-{i}", "1"))
    harbor.clear_log()
    for i in range(20):
        status, _, body = router.request("GET", manifest_path(f"nobody/reuse-{i}", "1"))
        assert status == 404, body[:300]
    answers = [r for r in harbor.requests() if r.project in PROXY_PROJECTS]
    assert len(answers) == 60
    peers = {r.peer for r in answers}
    assert 0 not in peers
    assert len(peers) <= 6, f"{len(peers)} connections for 60 answers"


def test_answer_matching_accept_beats_an_earlier_non_matching_one(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """``multi/img:1`` is Docker schema2 in ghcr and OCI in quay. Asked for OCI only, the real
    registry rewrites ghcr's schema2 into schema1 (a 200 whose Content-Type is not acceptable):
    that is only a fallback, and quay's OCI manifest wins although it comes later."""
    router = make_router(FANOUT_GRACE="500ms")
    oci = seeded.get("quay", "multi/img")
    assert oci.media_type == OCI_MANIFEST
    harbor.set_fault("quay", delay=0.05)
    status, headers, body = router.request(
        "GET", manifest_path("multi/img", "1"), {"Accept": OCI_MANIFEST}
    )
    assert status == 200, body[:300]
    assert headers["Content-Type"].startswith(OCI_MANIFEST)
    assert headers["Docker-Content-Digest"] == oci.digest
    assert body == oci.manifest
    assert asked(harbor, "/manifests/")["ghcr"] == 1
    assert router.app.mapping is not None
    assert router.app.mapping.get("multi/img") == "quay"


def test_docker_accept_gets_the_schema2_project(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    """Asked for Docker schema2 only, the registry says 404 for quay's OCI manifest."""
    schema2 = seeded.get("ghcr", "multi/img")
    assert schema2.media_type == DOCKER_MANIFEST
    status, headers, body = router.request(
        "GET", manifest_path("multi/img", "1"), {"Accept": DOCKER_MANIFEST}
    )
    assert status == 200, body[:300]
    assert headers["Docker-Content-Digest"] == schema2.digest
    assert body == schema2.manifest
    assert router.app.mapping is not None
    assert router.app.mapping.get("multi/img") == "ghcr"


def test_non_matching_answer_is_the_fallback_when_nothing_matches(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    """nginx is schema2 in dockerhub only; asked for OCI only, Harbor's schema1 rewrite is all
    there is, and the client gets it (as it would from Harbor directly) rather than a 404."""
    image = seeded.get("dockerhub", "library/nginx")
    status, headers, body = router.request(
        "GET", manifest_path(image.repo, image.tag), {"Accept": OCI_MANIFEST}
    )
    assert status == 200, body[:300]
    assert headers["Content-Type"].startswith(DOCKER_SCHEMA1)
    # (a schema1 digest covers the unsigned payload, so it is not the body's sha256)
    assert headers["Docker-Content-Digest"].startswith("sha256:")
    assert headers["Docker-Content-Digest"] != image.digest
    assert json.loads(body)["schemaVersion"] == 1


@pytest.mark.parametrize("first", ["quay", "ghcr"])
def test_project_priority_decides_between_projects_with_the_same_image(
    first: str, make_router: Callable[..., RunningRouter], seeded: Seeded
) -> None:
    router = make_router(PROJECT_PRIORITY=first)
    expected = seeded.get(first, "shared/app")
    status, headers, body = router.request(
        "GET", manifest_path("shared/app", "1"), {"Accept": ACCEPT_ALL}
    )
    assert status == 200
    assert headers["Docker-Content-Digest"] == expected.digest
    assert body == expected.manifest
    assert router.app.mapping is not None
    assert router.app.mapping.get("shared/app") == first


def test_higher_priority_wins_within_the_grace_window(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(PROJECT_PRIORITY="quay", FANOUT_GRACE="200ms")
    harbor.set_fault("quay", delay=0.03)  # ghcr answers first, quay within the grace window
    status, headers, _ = router.request(
        "GET", manifest_path("shared/app", "1"), {"Accept": ACCEPT_ALL}
    )
    assert status == 200
    assert headers["Docker-Content-Digest"] == seeded.get("quay", "shared/app").digest


def test_grace_window_does_not_wait_for_a_slow_higher_priority_project(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(PROJECT_PRIORITY="quay", FANOUT_GRACE="50ms", RESOLVER_TIMEOUT="5s")
    harbor.set_fault("quay", delay=1.5)
    started = time.monotonic()
    status, headers, _ = router.request(
        "GET", manifest_path("shared/app", "1"), {"Accept": ACCEPT_ALL}
    )
    elapsed = time.monotonic() - started
    assert status == 200
    assert headers["Docker-Content-Digest"] == seeded.get("ghcr", "shared/app").digest
    assert elapsed < 1.2, f"waited {elapsed:.2f}s for quay (FANOUT_GRACE=50ms, quay 1.5s slow)"


def test_without_priority_the_choice_is_stable_across_routers(
    make_router: Callable[..., RunningRouter], seeded: Seeded
) -> None:
    digests = set()
    for _ in range(3):
        router = make_router()
        status, headers, _ = router.request(
            "GET", manifest_path("shared/app", "1"), {"Accept": ACCEPT_ALL}
        )
        assert status == 200
        digests.add(headers["Docker-Content-Digest"])
    assert len(digests) == 1, digests
    assert digests <= {seeded.get(p, "shared/app").digest for p in ("ghcr", "quay")}


def test_losers_of_a_decided_fan_out_are_not_waited_for_and_keep_their_connections(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """ghcr is asked first and has the image; the others say 404 only after 300 ms. The client
    has its answer at once; the late 404s still arrive, on keep-alive connections that the next
    misses use again, and count for nothing, as cancelled losers would."""
    router = make_router(PROJECT_PRIORITY="ghcr")
    resolver, mapping = router.app.resolver, router.app.mapping
    assert resolver is not None and mapping is not None
    image = seeded.get("ghcr", "acme/tool")
    for project in ("dockerhub", "quay"):
        harbor.set_fault(project, delay=0.3)
    for _ in range(4):
        mapping.forget(image.repo)
        started = time.monotonic()
        status, headers, _ = router.request(
            "GET", manifest_path(image.repo, image.tag), accept(image)
        )
        assert status == 200
        assert headers["Docker-Content-Digest"] == image.digest
        assert time.monotonic() - started < 0.25, "the answer waited for the losers"
        assert wait_until(lambda: resolver.lingering == 0, 2.0)
    losers = [r for r in harbor.requests() if r.project in ("dockerhub", "quay")]
    assert len(losers) == 8
    assert len({r.peer for r in losers}) <= 4, "the losers' connections were not kept"
    for project in ("dockerhub", "quay"):
        assert router.app.metrics.upstream_counts().get((project, "404"), 0) == 0


def test_a_loser_still_running_at_resolver_timeout_is_given_up(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """A loser that does not answer is given up at the fan-out's deadline, not waited for
    longer; it counts for nothing (its breaker sees no failure)."""
    router = make_router(PROJECT_PRIORITY="ghcr", RESOLVER_TIMEOUT="500ms")
    resolver, breakers = router.app.resolver, router.app.breakers
    assert resolver is not None and breakers is not None
    image = seeded.get("ghcr", "acme/tool")
    harbor.set_fault("quay", delay=5.0)
    started = time.monotonic()
    status, _, _ = router.request("GET", manifest_path(image.repo, image.tag), accept(image))
    assert status == 200
    assert time.monotonic() - started < 0.3
    assert resolver.lingering >= 1
    assert wait_until(lambda: resolver.lingering == 0, 3.0)
    given_up = time.monotonic() - started
    assert 0.4 <= given_up < 1.5, f"given up after {given_up:.2f}s"
    assert breakers.get("quay").state == "closed" and breakers.get("quay").failures == 0


def test_closing_the_resolver_gives_up_its_losers(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(PROJECT_PRIORITY="ghcr")
    resolver = router.app.resolver
    assert resolver is not None
    image = seeded.get("ghcr", "acme/tool")
    harbor.set_fault("quay", delay=5.0)
    status, _, _ = router.request("GET", manifest_path(image.repo, image.tag), accept(image))
    assert status == 200
    assert wait_until(lambda: resolver.lingering == 1, 2.0), "quay should still be running"
    router.call(resolver.close(), timeout=5)
    assert resolver.lingering == 0


def test_max_fanout_projects_takes_the_first_in_priority_order(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(PROJECT_PRIORITY="quay", MAX_FANOUT_PROJECTS="1")
    etcd = seeded.get("quay", "coreos/etcd")
    status, headers, _ = router.request("GET", manifest_path(etcd.repo, etcd.tag), accept(etcd))
    assert status == 200
    assert headers["Docker-Content-Digest"] == etcd.digest
    tool = seeded.get("ghcr", "acme/tool")
    status, _, body = router.request("GET", manifest_path(tool.repo, tool.tag), accept(tool))
    assert status == 404, body[:300]
    assert error_code(body) == "MANIFEST_UNKNOWN"
    assert asked(harbor) == {"dockerhub": 0, "ghcr": 0, "quay": 2}


def test_library_prefix_only_for_docker_hub_projects(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("dockerhub", "library/alpine")
    status, headers, body = router.request("GET", manifest_path("alpine", image.tag), accept(image))
    assert status == 200, body[:300]
    assert headers["Docker-Content-Digest"] == image.digest
    paths = {p: [r.path for r in harbor.requests(p)] for p in PROXY_PROJECTS}
    assert paths == {
        "dockerhub": [f"/v2/dockerhub/library/alpine/manifests/{image.tag}"],
        "ghcr": [f"/v2/ghcr/alpine/manifests/{image.tag}"],
        "quay": [f"/v2/quay/alpine/manifests/{image.tag}"],
    }
    harbor.clear_log()
    status, _, body = router.request("GET", blob_path("alpine", image.config))
    assert status == 200
    assert sha256(body) == image.config
    assert [r.path for r in harbor.requests() if r.path.startswith("/v2")] == [
        f"/v2/dockerhub/library/alpine/blobs/{image.config}"
    ]


# -- 3.2 what the client gets when nothing wins -------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", manifest_path("nobody/at-all", "1"), 404, "MANIFEST_UNKNOWN"),
        ("HEAD", manifest_path("nobody/at-all", "1"), 404, None),
        ("GET", manifest_path("nobody/at-all", UNKNOWN_DIGEST), 404, "MANIFEST_UNKNOWN"),
        ("GET", blob_path("nobody/at-all", UNKNOWN_DIGEST), 404, "BLOB_UNKNOWN"),
        ("HEAD", blob_path("nobody/at-all", UNKNOWN_DIGEST), 404, None),
        ("GET", f"{PREFIX}/nobody/at-all/referrers/{UNKNOWN_DIGEST}", 404, "MANIFEST_UNKNOWN"),
        ("GET", f"{PREFIX}/nobody/at-all/tags/list", 200, None),
    ],
    ids=["manifest", "manifest-head", "digest", "blob", "blob-head", "referrers", "tags"],
)
def test_everyone_404_outcomes(
    method: str,
    path: str,
    status: int,
    code: str | None,
    router: RunningRouter,
    harbor: HarborEmulator,
) -> None:
    got, _, body = router.request(method, path)
    assert got == status, body[:300]
    if method == "HEAD":
        assert body == b""
    elif code is not None:
        assert error_code(body) == code
    else:  # tags of a repository nobody has: 200, empty, under the client's name
        assert json.loads(body) == {"name": "proxy/nobody/at-all", "tags": []}
    for project in PROXY_PROJECTS:
        assert harbor.count(project) >= 1, f"{project} was not asked"
    if "/blobs/" in path:  # HEAD fan-out, then at most one GET per project
        for project in PROXY_PROJECTS:
            methods = [r.method for r in harbor.requests(project)]
            assert methods.count("HEAD") == 1 and methods.count("GET") <= 1, (project, methods)


def test_everyone_rate_limited_is_429_and_not_remembered(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("quay", "coreos/etcd")
    path = manifest_path(image.repo, image.tag)
    for project in PROXY_PROJECTS:
        harbor.set_fault(project, status=429)
    status, headers, body = router.request("GET", path, accept(image))
    assert status == 429, body[:300]
    assert error_code(body) == "TOOMANYREQUESTS"
    assert int(headers["Retry-After"]) >= 0
    harbor.clear_faults()
    status, headers, _ = router.request("GET", path, accept(image))
    assert status == 200
    assert headers["Docker-Content-Digest"] == image.digest


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ({"delay": 3.0}, ("timeout", "timed out")),
        ({"status": 500}, ("500",)),
        ({"reset": True}, ("reset", "connection", "disconnect", "error")),
    ],
    ids=["timeout", "500", "reset"],
)
def test_mixed_failure_names_every_project_and_is_not_remembered(
    fault: dict[str, object],
    words: tuple[str, ...],
    make_router: Callable[..., RunningRouter],
    harbor: HarborEmulator,
) -> None:
    router = make_router(RESOLVER_TIMEOUT="500ms")
    path = manifest_path("nobody/mixed", "1")
    harbor.set_fault("ghcr", **fault)  # type: ignore[arg-type]  # dockerhub and quay: 404
    status, headers, body = router.request("GET", path, timeout=10)
    assert status in (502, 503), body[:300]
    assert headers["Content-Type"].startswith("application/json")
    detail = error_entry(body).get("detail")
    ghcr = outcome_of(detail, "ghcr")
    assert any(w in ghcr for w in words), f"ghcr's outcome {ghcr!r} should say {words}"
    assert "404" not in ghcr
    dockerhub = outcome_of(detail, "dockerhub")
    assert "404" in dockerhub or "not found" in dockerhub or "not_found" in dockerhub
    quay = outcome_of(detail, "quay")
    assert "404" in quay or "not found" in quay or "not_found" in quay

    harbor.clear_faults()
    harbor.clear_log()
    status, _, body = router.request("GET", path)
    assert status == 404, body[:300]
    assert asked(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}, "it was not negative-cached"


@pytest.mark.parametrize("status", [200, 404])
def test_an_answer_larger_than_manifest_max_bytes_is_named_and_not_a_failure(
    status: int, make_router: Callable[..., RunningRouter], harbor: HarborEmulator
) -> None:
    """An answer over MANIFEST_MAX_BYTES is no answer: the client gets a 502 naming it (never
    a 404, nothing remembered), and the project, which did answer, keeps its breaker closed."""
    router = make_router(MANIFEST_MAX_BYTES="1KiB", CIRCUIT_BREAKER_THRESHOLD="2")
    path = manifest_path("nobody/oversized", "1")
    harbor.set_fault("ghcr", status=status, body=b"{" + b" " * 4096 + b"}")
    for _ in range(3):
        got, _, body = router.request("GET", path)
        assert got == 502, body[:300]
        ghcr = outcome_of(error_entry(body).get("detail"), "ghcr")
        assert f"{status} (larger than" in ghcr, ghcr
    assert harbor.count("ghcr") == 3, "an oversized answer must not open the breaker"

    harbor.clear_faults()
    harbor.clear_log()
    got, _, body = router.request("GET", path)
    assert got == 404, body[:300]
    assert asked(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}, "it was not negative-cached"


# -- 3.3 circuit breakers ---------------------------------------------------------------------

BREAKER_FAULTS: dict[str, dict[str, object]] = {
    "500": {"status": 500},
    "reset": {"reset": True},
    "timeout": {"delay": 5.0},
}


@pytest.mark.parametrize("failure", list(BREAKER_FAULTS))
def test_breaker_opens_after_threshold_and_skips_the_project(
    failure: str,
    make_router: Callable[..., RunningRouter],
    harbor: HarborEmulator,
    seeded: Seeded,
) -> None:
    router = make_router(
        CIRCUIT_BREAKER_THRESHOLD="2",
        CIRCUIT_BREAKER_TIMEOUT="30s",
        RESOLVER_TIMEOUT="1s",
        PROJECT_PRIORITY="quay",  # without the breaker, a ghcr win would wait for quay's grace
        FANOUT_GRACE="1s",
    )
    harbor.set_fault("quay", **BREAKER_FAULTS[failure])  # type: ignore[arg-type]
    sent = break_quay(router, harbor, 2, failure)

    for i in range(3):
        status, _, body = router.request("GET", manifest_path(f"breaker/after-{i}", "1"))
        # quay was skipped, so "nobody has it" is not known: never a 404
        assert status in (502, 503), body[:300]
    assert harbor.count("quay") == sent, "an open breaker sends nothing to quay"

    image = seeded.get("ghcr", "acme/tool")
    started = time.monotonic()
    status, headers, _ = router.request("GET", manifest_path(image.repo, image.tag), accept(image))
    elapsed = time.monotonic() - started
    assert status == 200
    assert headers["Docker-Content-Digest"] == image.digest
    assert elapsed < 0.5, f"a healthy pull took {elapsed:.2f}s while quay's breaker is open"
    assert harbor.count("quay") == sent


def test_mapped_request_to_an_open_breaker_fails_fast(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(
        CIRCUIT_BREAKER_THRESHOLD="2", CIRCUIT_BREAKER_TIMEOUT="30s", RESOLVER_TIMEOUT="1s"
    )
    image = seeded.get("quay", "coreos/etcd")
    path = manifest_path(image.repo, image.tag)
    status, _, _ = router.request("GET", path, accept(image))
    assert status == 200
    assert router.app.mapping is not None
    assert router.app.mapping.get(image.repo) == "quay"

    harbor.set_fault("quay", delay=5.0)
    harbor.clear_log()
    break_quay(router, harbor, 2, "mapped")

    started = time.monotonic()
    status, _, body = router.request("GET", path, accept(image))
    elapsed = time.monotonic() - started
    assert status == 503, body[:300]
    assert elapsed < 0.5, f"took {elapsed:.2f}s: an open breaker must not wait for a timeout"
    assert harbor.count("quay") == 2


def _pull_blob_raw(router: RunningRouter, path: str) -> tuple[bytes, int, int]:
    """GET on a raw socket: (head, Content-Length, body bytes received before the close)."""
    data = router.raw(f"GET {path} HTTP/1.1\r\nHost: r\r\n\r\n".encode(), timeout=5)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, length, len(body)


def test_reset_mid_body_cuts_the_client_off_and_counts_against_the_breaker(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """Harbor dies half-way through a mapped blob: the client sees a short body and a closed
    connection (never a fake complete one), the router survives, and two such failures open
    the project's breaker so the next mapped request fails fast."""
    router = make_router(CIRCUIT_BREAKER_THRESHOLD="2", CIRCUIT_BREAKER_TIMEOUT="30s")
    image = seeded.get("dockerhub", "library/nginx")
    status, _, _ = router.request("GET", manifest_path(image.repo, image.tag), accept(image))
    assert status == 200
    layer = image.layers[0]
    path = blob_path(image.repo, layer)
    harbor.set_fault("dockerhub", truncate=70_000)
    for _ in range(2):
        head, length, received = _pull_blob_raw(router, path)
        assert head.startswith(b"HTTP/1.1 200")
        assert length == image.blob_sizes[layer]
        assert received < length  # cut off, not padded or completed
    harbor.clear_faults()
    harbor.clear_log()
    started = time.monotonic()
    status, _, body = router.request("GET", path)
    assert status == 503, body[:300]
    assert time.monotonic() - started < 0.5
    assert harbor.count("dockerhub") == 0
    # Other repositories of healthy projects are untouched.
    tool = seeded.get("ghcr", "acme/tool")
    assert router.request("GET", manifest_path(tool.repo, tool.tag), accept(tool))[0] == 200


@pytest.mark.parametrize("probe", ["succeeds", "fails"])
def test_half_open_breaker_lets_exactly_one_probe_through(
    probe: str, make_router: Callable[..., RunningRouter], harbor: HarborEmulator
) -> None:
    router = make_router(
        CIRCUIT_BREAKER_THRESHOLD="2", CIRCUIT_BREAKER_TIMEOUT="1s", RESOLVER_TIMEOUT="500ms"
    )
    harbor.set_fault("quay", status=500)
    break_quay(router, harbor, 2, probe)
    router.request("GET", manifest_path("breaker/still-open", "1"))
    assert harbor.count("quay") == 2

    # The probe is slow (but within RESOLVER_TIMEOUT) so that all concurrent requests overlap.
    if probe == "succeeds":
        harbor.set_fault("quay", delay=0.3)
    else:
        harbor.set_fault("quay", delay=0.3, status=500)
    time.sleep(1.1)  # past CIRCUIT_BREAKER_TIMEOUT: half-open
    harbor.clear_log()
    answers = concurrently(
        router, [("GET", manifest_path(f"breaker/probe-{i}", "1"), {}) for i in range(10)]
    )
    assert {a.status for a in answers} <= {404, 502, 503}
    assert harbor.count("quay") == 1, "half-open: exactly one probe"
    assert harbor.count("dockerhub") == 10

    harbor.clear_log()
    for i in range(3):
        router.request("GET", manifest_path(f"breaker/later-{i}", "1"))
    if probe == "succeeds":
        assert harbor.count("quay") == 3, "a successful probe closes the breaker"
    else:
        assert harbor.count("quay") == 0, "a failed probe re-opens the breaker"


def test_half_open_probe_that_times_out_reopens_the_breaker(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator
) -> None:
    """The one probe of a half-open breaker runs into RESOLVER_TIMEOUT: that is a failure, so
    the breaker is open again for a whole CIRCUIT_BREAKER_TIMEOUT, not probed by the next miss."""
    router = make_router(
        CIRCUIT_BREAKER_THRESHOLD="2", CIRCUIT_BREAKER_TIMEOUT="2s", RESOLVER_TIMEOUT="300ms"
    )
    harbor.set_fault("quay", status=500)
    break_quay(router, harbor, 2, "slow-probe")
    harbor.set_fault("quay", delay=3.0)
    time.sleep(2.1)  # past CIRCUIT_BREAKER_TIMEOUT: half-open
    harbor.clear_log()
    status, _, body = router.request("GET", manifest_path("breaker/slow-probe", "1"))
    assert status == 502, body[:300]
    assert "timeout" in outcome_of(error_entry(body).get("detail"), "quay")
    for i in range(3):
        status, _, body = router.request("GET", manifest_path(f"breaker/after-slow-{i}", "1"))
        assert status in (502, 503), body[:300]
    assert harbor.count("quay") == 1, "a probe that timed out re-opens the breaker"


@pytest.mark.parametrize("status", [404, 429, 401])
def test_definite_answers_never_open_the_breaker(
    status: int, make_router: Callable[..., RunningRouter], harbor: HarborEmulator
) -> None:
    router = make_router(CIRCUIT_BREAKER_THRESHOLD="2", CIRCUIT_BREAKER_TIMEOUT="30s")
    harbor.set_fault("quay", status=status)
    for i in range(6):
        router.request("GET", manifest_path(f"breaker/definite-{status}-{i}", "1"))
    assert harbor.count("quay") == 6


# -- 3.4 blobs without a mapping -------------------------------------------------------------


def test_unmapped_blob_heads_first_then_races_gets(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("dockerhub", "library/nginx")
    layer = image.layers[0]
    assert image.blob_sizes[layer] >= 200 * 1024
    status, _, body = router.request("GET", blob_path(image.repo, layer))
    assert status == 200, body[:300]
    assert len(body) == image.blob_sizes[layer]
    assert sha256(body) == layer
    assert router.app.mapping is not None
    assert router.app.mapping.get(image.repo) == "dockerhub"

    sent = [r for r in harbor.requests() if f"/blobs/{layer}" in r.path]
    for project in PROXY_PROJECTS:
        methods = [r.method for r in sent if r.project == project]
        assert methods.count("HEAD") == 1, (project, methods)
        assert methods.count("GET") <= 1, (project, methods)
    assert [r.method for r in sent if r.project == "dockerhub"].count("GET") == 1
    heads = [r.at for r in sent if r.method == "HEAD"]
    gets = [r.at for r in sent if r.method == "GET"]
    assert max(heads) <= min(gets), "the GET race starts after the HEAD fan-out"


def test_unmapped_blob_cached_in_harbor_is_found_by_head_alone(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("dockerhub", "library/nginx")
    layer = image.layers[0]
    first = make_router()
    status, _, body = first.request("GET", blob_path(image.repo, layer))
    assert status == 200
    assert wait_until(lambda: harbor.is_blob_cached("dockerhub", layer))

    fresh = make_router()
    harbor.clear_log()
    status, _, body = fresh.request("GET", blob_path(image.repo, layer))
    assert status == 200
    assert sha256(body) == layer
    sent = [(r.project, r.method) for r in harbor.requests() if f"/blobs/{layer}" in r.path]
    assert [m for p, m in sent if m == "GET"] == ["GET"]
    assert ("dockerhub", "GET") in sent, sent
    assert sorted(p for p, m in sent if m == "HEAD") == sorted(PROXY_PROJECTS)
    assert fresh.app.mapping is not None
    assert fresh.app.mapping.get(image.repo) == "dockerhub"


# -- 3.5 tags/list and referrers -------------------------------------------------------------


def test_tags_first_non_empty_list_wins(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    harbor.set_fault("ghcr", delay=0.1)  # the empty lists of the others arrive first
    status, headers, body = router.request("GET", f"{PREFIX}/acme/multi/tags/list")
    assert status == 200, body[:300]
    data = json.loads(body)
    assert data["name"] == "proxy/acme/multi"
    assert sorted(data["tags"]) == sorted(i.tag for i in seeded.by_repo("acme/multi"))
    assert int(headers["Content-Length"]) == len(body)
    assert asked(harbor, "/tags/list") == {"dockerhub": 1, "ghcr": 1, "quay": 1}
    assert router.app.mapping is not None
    assert router.app.mapping.get("acme/multi") == "ghcr"


@pytest.mark.parametrize("mapped", [False, True], ids=["fan-out", "mapped"])
def test_tags_pagination_is_forwarded_and_rewritten(
    mapped: bool, router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    """The registry behind the emulator does not paginate, so ghcr's page is injected, as Harbor
    sends it: ``name`` and ``Link`` in ghcr's terms."""
    image = seeded.get("ghcr", "acme/multi")
    if mapped:
        status, _, _ = router.request("GET", manifest_path(image.repo, image.tag), accept(image))
        assert status == 200
    harbor.set_fault(
        "ghcr",
        status=200,
        body={"name": "ghcr/acme/multi", "tags": ["a"]},
        headers={"Link": '</v2/ghcr/acme/multi/tags/list?last=a&n=1>; rel="next"'},
    )
    harbor.clear_log()
    status, headers, body = router.request("GET", f"{PREFIX}/acme/multi/tags/list?n=1")
    assert status == 200, body[:300]
    assert json.loads(body) == {"name": "proxy/acme/multi", "tags": ["a"]}
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Link"] == '</v2/proxy/acme/multi/tags/list?last=a&n=1>; rel="next"'
    assert [r.path for r in harbor.requests("ghcr")] == ["/v2/ghcr/acme/multi/tags/list?n=1"]
    if mapped:
        assert v2_projects(harbor) == ["ghcr"]

    harbor.clear_log()
    status, _, body = router.request("GET", f"{PREFIX}/acme/multi/tags/list?last=a&n=1")
    assert status == 200, body[:300]
    assert [r.path for r in harbor.requests("ghcr")] == ["/v2/ghcr/acme/multi/tags/list?last=a&n=1"]


def test_referrers_route_like_the_manifest(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("quay", "coreos/etcd")
    path = f"{PREFIX}/{image.repo}/referrers/{image.digest}"
    status, headers, body = router.request("GET", path)
    assert status == 200, body[:300]
    assert json.loads(body)["manifests"] == []
    assert asked(harbor, "/referrers/") == {"dockerhub": 1, "ghcr": 1, "quay": 1}
    assert router.app.mapping is not None
    assert router.app.mapping.get(image.repo) == "quay"

    harbor.clear_log()
    status, headers, body = router.request("GET", path + "?artifactType=application%2Fexample")
    assert status == 200, body[:300]
    assert headers["OCI-Filters-Applied"] == "artifactType"
    assert [r.path for r in harbor.requests() if r.path.startswith("/v2")] == [
        f"/v2/quay/{image.repo}/referrers/{image.digest}?artifactType=application%2Fexample"
    ]


# -- PASSTHROUGH_UNMATCHED -------------------------------------------------------------------


def test_passthrough_forwards_outside_the_prefix_unchanged(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(PASSTHROUGH_UNMATCHED="true")
    image = seeded.get("dockerhub", "library/alpine")
    path = f"/v2/dockerhub/library/alpine/manifests/{image.tag}"
    auth = harbor.basic_auth_header()
    status, headers, body = router.request("GET", path, {"Authorization": auth, **accept(image)})
    assert status == 200, body[:300]
    assert headers["Docker-Content-Digest"] == image.digest
    assert body == image.manifest
    sent = [r for r in harbor.requests() if r.path.startswith("/v2")]
    assert [r.path for r in sent] == [path]
    assert sent[0].headers.get("authorization") == auth

    # Harbor's own answers come back as they are: its NOT_FOUND, its 401 challenge.
    harbor.clear_log()
    status, _, body = router.request("GET", "/v2/_catalog?n=10", {"Authorization": auth})
    assert status == 404
    assert error_code(body) == "NOT_FOUND"
    assert [r.path for r in harbor.requests()] == ["/v2/_catalog?n=10"]

    harbor.clear_log()
    status, headers, _ = router.request("GET", path, accept(image))
    assert status == 401, "the robot's credentials are never lent to a passthrough request"
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    sent = [r for r in harbor.requests() if r.path.startswith("/v2")]
    assert [r.path for r in sent] == [path]
    assert "authorization" not in sent[0].headers


def test_passthrough_streams_a_blob(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(PASSTHROUGH_UNMATCHED="true")
    image = seeded.get("dockerhub", "library/nginx")
    layer = image.layers[0]
    status, _, body = router.request(
        "GET",
        f"/v2/dockerhub/library/nginx/blobs/{layer}",
        {"Authorization": harbor.basic_auth_header()},
    )
    assert status == 200
    assert sha256(body) == layer


@pytest.mark.parametrize("passthrough", [True, False], ids=["on", "off"])
def test_base_path_is_answered_by_the_router(
    passthrough: bool, make_router: Callable[..., RunningRouter], harbor: HarborEmulator
) -> None:
    router = make_router(PASSTHROUGH_UNMATCHED=str(passthrough).lower())
    status, headers, body = router.request("GET", "/v2/")
    assert status == 200
    assert json.loads(body) == {}
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert [r.path for r in harbor.requests() if r.path.startswith("/v2")] == []


def test_without_passthrough_outside_the_prefix_is_name_unknown(
    router: RunningRouter, harbor: HarborEmulator
) -> None:
    status, _, body = router.request(
        "GET",
        "/v2/dockerhub/library/alpine/manifests/3.19",
        {"Authorization": harbor.basic_auth_header()},
    )
    assert status == 404
    assert error_code(body) == "NAME_UNKNOWN"
    assert [r.path for r in harbor.requests() if r.path.startswith("/v2")] == []
