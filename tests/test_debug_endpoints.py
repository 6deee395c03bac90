"""Debug endpoints on the metrics port only: projects, where a name maps, dropping a mapping."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from conftest import Seeded
from harbor_emulator import HarborEmulator
from redis_topology import RedisTopology
from router_runner import RunningRouter

pytestmark = pytest.mark.integration


def get_json(router: RunningRouter, path: str, method: str = "GET") -> tuple[int, dict]:  # type: ignore[type-arg]
    status, body = router.scrape(path, method)
    return status, json.loads(body)


def test_projects_with_breaker_states(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(CIRCUIT_BREAKER_THRESHOLD="1")
    status, data = get_json(router, "/debug/projects")
    assert status == 200
    assert [p["name"] for p in data["projects"]] == ["dockerhub", "ghcr", "quay"]
    assert [p["registry_type"] for p in data["projects"]] == ["docker-hub", "github-ghcr", "quay"]
    assert [p["hosts"][0] for p in data["projects"]] == ["docker.io", "ghcr.io", "quay.io"]
    assert {p["breaker"] for p in data["projects"]} == {"closed"}
    harbor.set_fault("quay", status=500)
    image = seeded.get("ghcr", "acme/tool")
    router.request("GET", f"/v2/proxy/void/x/manifests/{image.tag}")
    _, data = get_json(router, "/debug/projects")
    quay = next(p for p in data["projects"] if p["name"] == "quay")
    assert (quay["breaker"], quay["breaker_value"]) == ("open", 1)
    assert data["last_success"] > time.time() - 600


def test_resolve_and_drop(make_router: Callable[..., RunningRouter], seeded: Seeded) -> None:
    router = make_router()
    image = seeded.get("ghcr", "acme/tool")
    status, data = get_json(router, f"/debug/resolve?name={image.repo}")
    assert status == 200 and data["tier"] == "none" and data["project"] is None
    path = f"/v2/proxy/{image.repo}/manifests/{image.tag}"
    assert router.request("GET", path, {"Accept": image.media_type})[0] == 200
    status, data = get_json(router, f"/debug/resolve?name={image.repo}")
    assert (data["tier"], data["project"], data["state"]) == ("l1", "ghcr", "fresh")
    assert 0 <= data["age_seconds"] < 60
    status, data = get_json(router, f"/debug/cache?name={image.repo}", "DELETE")
    assert status == 200 and data == {"name": image.repo, "l1": True, "redis": None}
    assert router.app.mapping is not None and router.app.mapping.get(image.repo) is None
    _, data = get_json(router, f"/debug/resolve?name={image.repo}")
    assert data["tier"] == "none"
    _, data = get_json(router, f"/debug/cache?name={image.repo}", "DELETE")
    assert data["l1"] is False


@pytest.mark.parametrize(
    "query", ["", "?name=", "?name=Library/Nginx", "?name=a..b", "?name=a//b", "?name=" + "a" * 300]
)
def test_bad_names_are_400(make_router: Callable[..., RunningRouter], query: str) -> None:
    router = make_router()
    for method, path in (("GET", "/debug/resolve"), ("DELETE", "/debug/cache")):
        status, data = get_json(router, path + query, method)
        assert status == 400 and data["errors"][0]["code"] == "NAME_INVALID"


def test_not_on_the_main_port(make_router: Callable[..., RunningRouter]) -> None:
    router = make_router()
    for method, path in (
        ("GET", "/debug/projects"),
        ("GET", "/debug/resolve?name=library/nginx"),
        ("DELETE", "/debug/cache?name=library/nginx"),
        ("GET", "/metrics"),
    ):
        assert router.request(method, path)[0] in (404, 405)
    assert router.request("GET", "/debug/projects")[0] == 404


def test_redis_tier(
    make_router: Callable[..., RunningRouter], redis_sentinel: RedisTopology, seeded: Seeded
) -> None:
    sentinels = ",".join(f"{h}:{p}" for h, p in redis_sentinel.sentinel_addresses)
    first = make_router(REDIS_SENTINELS=sentinels)
    second = make_router(REDIS_SENTINELS=sentinels)
    for router in (first, second):
        shared = router.app.shared
        assert shared is not None
        deadline = time.monotonic() + 10
        while not shared.available and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shared.available
    image = seeded.get("quay", "coreos/etcd")
    path = f"/v2/proxy/{image.repo}/manifests/{image.tag}"
    assert first.request("GET", path, {"Accept": image.media_type})[0] == 200
    deadline = time.monotonic() + 5
    data: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:  # the write to Redis is in the background
        _, data = get_json(second, f"/debug/resolve?name={image.repo}")
        if data["tier"] == "redis":
            break
        time.sleep(0.05)
    assert (data["tier"], data["project"]) == ("redis", "quay")
    assert second.app.mapping is not None and second.app.mapping.get(image.repo) is None
    status, data = get_json(second, f"/debug/cache?name={image.repo}", "DELETE")
    assert status == 200 and data == {"name": image.repo, "l1": False, "redis": True}
    _, data = get_json(first, f"/debug/resolve?name={image.repo}")
    assert data["tier"] == "l1"  # the other pod's L1 keeps it until it expires
