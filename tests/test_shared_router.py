"""Routers sharing mappings through a real Redis Sentinel topology (DESIGN §4)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import pytest
from conftest import Seeded, SeedImage
from harbor_emulator import HarborEmulator
from redis_topology import RedisTopology
from router_runner import RunningRouter
from support_tools import free_port

pytestmark = pytest.mark.integration


def sentinels(topology: RedisTopology) -> str:
    return ",".join(f"{host}:{port}" for host, port in topology.sentinel_addresses)


def pull(router: RunningRouter, image: SeedImage) -> int:
    status, _, body = router.request(
        "GET", f"/v2/proxy/{image.repo}/manifests/{image.tag}", {"Accept": image.media_type}
    )
    if status == 200:
        assert body == image.manifest
    return status


def v2_count(harbor: HarborEmulator) -> dict[str, int]:
    return {p: harbor.count(p) for p in ("dockerhub", "ghcr", "quay")}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def in_redis(topology: RedisTopology, key: str) -> bool:
    return bool(topology.master_client().exists(key))


def test_second_router_asks_only_the_mapped_project(
    make_router: Callable[..., RunningRouter],
    redis_sentinel: RedisTopology,
    harbor: HarborEmulator,
    seeded: Seeded,
) -> None:
    env = {"REDIS_SENTINELS": sentinels(redis_sentinel)}
    first, second = make_router(**env), make_router(**env)
    image = seeded.get("quay", "coreos/etcd")
    harbor.clear_log()
    assert pull(first, image) == 200
    assert v2_count(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}  # a fan-out
    assert wait_until(lambda: in_redis(redis_sentinel, f"hr:map:{image.repo}"))
    harbor.clear_log()
    assert pull(second, image) == 200
    assert v2_count(harbor) == {"dockerhub": 0, "ghcr": 0, "quay": 1}  # no fan-out
    assert second.app.mapping is not None and second.app.mapping.get(image.repo) == "quay"


def test_negative_entries_are_shared(
    make_router: Callable[..., RunningRouter],
    redis_sentinel: RedisTopology,
    harbor: HarborEmulator,
    seeded: Seeded,
) -> None:
    env = {"REDIS_SENTINELS": sentinels(redis_sentinel)}
    first, second = make_router(**env), make_router(**env)
    path = "/v2/proxy/library/nothing-here/manifests/1"
    assert first.request("GET", path)[0] == 404
    assert wait_until(lambda: bool(redis_sentinel.master_client().keys("hr:neg:*")))
    harbor.clear_log()
    status, _, body = second.request("GET", path)
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert harbor.count() == 0


def test_warm_start_seeds_projects_and_hot_mappings(
    make_router: Callable[..., RunningRouter],
    redis_sentinel: RedisTopology,
    harbor: HarborEmulator,
    seeded: Seeded,
) -> None:
    env = {"REDIS_SENTINELS": sentinels(redis_sentinel)}
    first = make_router(**env)
    image = seeded.get("ghcr", "acme/tool")
    assert pull(first, image) == 200
    assert first.app.shared is not None
    first.call(first.app.shared.flush_hot())
    assert wait_until(lambda: in_redis(redis_sentinel, "hr:projects"))
    # Harbor's API is down: the new router is ready from Redis alone, and knows the mapping.
    harbor.set_api_fault(status=503)
    third = make_router(**env)
    assert third.app.discovery is not None
    assert third.app.discovery.projects.names() == ["dockerhub", "ghcr", "quay"]
    assert third.request("GET", "/readyz")[0] == 200
    assert third.app.mapping is not None and third.app.mapping.get(image.repo) == "ghcr"
    harbor.clear_log()
    assert pull(third, image) == 200
    assert v2_count(harbor) == {"dockerhub": 0, "ghcr": 1, "quay": 0}


def test_hung_redis_adds_at_most_its_timeout(
    make_router: Callable[..., RunningRouter],
    redis_sentinel: RedisTopology,
    seeded: Seeded,
) -> None:
    router = make_router(REDIS_SENTINELS=sentinels(redis_sentinel), REDIS_TIMEOUT="200ms")
    redis_sentinel.master.pause()  # SIGSTOP
    try:
        started = time.monotonic()
        assert pull(router, seeded.get("quay", "coreos/etcd")) == 200  # L1 miss: asks Redis
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        assert pull(router, seeded.get("ghcr", "acme/tool")) == 200  # Redis is known down now
        assert time.monotonic() - started < 1.0
    finally:
        redis_sentinel.master.resume()
    assert router.app.shared is not None
    assert wait_until(lambda: router.app.shared is not None and router.app.shared.available, 15)


def test_redis_absent_at_startup(make_router: Callable[..., RunningRouter], seeded: Seeded) -> None:
    started = time.monotonic()
    router = make_router(REDIS_SENTINELS=f"127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 5.0
    assert router.request("GET", "/readyz")[0] == 200
    assert pull(router, seeded.get("dockerhub", "library/alpine")) == 200


def test_wrong_password_is_named_and_falls_back(
    make_router: Callable[..., RunningRouter],
    redis_auth_topology: RedisTopology,
    seeded: Seeded,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "Not-The-Redis-Password-31337"
    with caplog.at_level(logging.WARNING, logger="harbor_router"):
        router = make_router(REDIS_SENTINELS=sentinels(redis_auth_topology), REDIS_PASSWORD=secret)
        assert pull(router, seeded.get("quay", "coreos/etcd")) == 200
        assert wait_until(lambda: "authentication failed" in caplog.text)
    assert secret not in caplog.text


def test_master_killed_while_serving_fails_no_request(
    make_router: Callable[..., RunningRouter],
    make_redis_topology: Callable[..., RedisTopology],
    harbor: HarborEmulator,
    seeded: Seeded,
) -> None:
    topology = make_redis_topology()
    env = {"REDIS_SENTINELS": sentinels(topology)}
    router = make_router(**env)
    images = [seeded.get("dockerhub", "library/alpine"), seeded.get("ghcr", "acme/tool"),
              seeded.get("quay", "coreos/etcd")]  # fmt: skip
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def steady() -> None:
        nonlocal served
        while not stop.is_set():
            for image in images:
                status = pull(router, image)
                if status != 200:
                    failures.append(f"{image.repo}: {status}")
                served += 1

    worker = threading.Thread(target=steady)
    worker.start()
    try:
        time.sleep(0.5)
        old = topology.master.port
        topology.kill_master()
        topology.wait_failover(old, timeout=20)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(20)
    assert failures == []
    assert served > 20
    # Sharing works again on the new master: a second router learns a new mapping from Redis.
    assert router.app.shared is not None
    assert wait_until(lambda: router.app.shared is not None and router.app.shared.available, 20)
    image = seeded.get("quay", "shared/app")
    assert pull(make_router(**env, PROJECT_PRIORITY="quay"), image) == 200
    assert wait_until(lambda: bool(topology.master_client().exists(f"hr:map:{image.repo}")), 10)
    harbor.clear_log()
    assert pull(make_router(**env), image) == 200
    assert v2_count(harbor) == {"dockerhub": 0, "ghcr": 0, "quay": 1}
