"""RATE_LIMIT_PER_IP through the router: 429 with Retry-After, health exempt, proxies honoured."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from conftest import Seeded
from harbor_emulator import HarborEmulator
from router_runner import RunningRouter

pytestmark = pytest.mark.integration


def manifest(
    router: RunningRouter, seeded: Seeded, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    image = seeded.get("ghcr", "acme/tool")
    status, h, body = router.request(
        "GET", f"/v2/proxy/acme/tool/manifests/{image.tag}", {"Accept": image.media_type, **headers}
    )
    return status, dict(h), body


def test_over_the_limit_is_429_and_costs_harbor_nothing(
    make_router: Callable[..., RunningRouter], seeded: Seeded, harbor: HarborEmulator
) -> None:
    router = make_router(RATE_LIMIT_PER_IP="3")
    statuses = [manifest(router, seeded)[0] for _ in range(3)]
    assert statuses == [200, 200, 200]  # the burst equals the rate
    harbor.clear_log()
    status, headers, body = manifest(router, seeded)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert harbor.count() == 0
    for path in ("/healthz", "/readyz"):  # exempt
        assert router.request("GET", path)[0] == 200


def test_forwarded_for_counts_only_from_trusted_proxies(
    make_router: Callable[..., RunningRouter], seeded: Seeded
) -> None:
    trusted = make_router(RATE_LIMIT_PER_IP="1", TRUSTED_PROXIES="127.0.0.0/8")
    # Behind a trusted proxy every client has its own bucket.
    assert manifest(trusted, seeded, **{"X-Forwarded-For": "198.51.100.1"})[0] == 200
    assert manifest(trusted, seeded, **{"X-Forwarded-For": "198.51.100.2"})[0] == 200
    assert manifest(trusted, seeded, **{"X-Forwarded-For": "198.51.100.1"})[0] == 429
    # From an untrusted peer the header is ignored: spoofing it gains nothing.
    untrusted = make_router(RATE_LIMIT_PER_IP="1")
    assert manifest(untrusted, seeded, **{"X-Forwarded-For": "198.51.100.1"})[0] == 200
    assert manifest(untrusted, seeded, **{"X-Forwarded-For": "198.51.100.2"})[0] == 429


def test_no_limit_by_default(router: RunningRouter, seeded: Seeded) -> None:
    assert all(manifest(router, seeded)[0] == 200 for _ in range(20))
