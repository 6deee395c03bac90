"""A rotated robot secret (``HARBOR_PASSWORD_FILE``) on the hit path, end to end.

The router reads the file at startup; after the robot's password changes in Harbor and the file
is rewritten (a rotated Kubernetes Secret), the next cache hit must reach Harbor with the new
password. With Harbor changed but the file not, Harbor's 401 is the client's 502.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Seeded, SeedImage
from harbor_emulator import HarborEmulator, RecordedRequest
from router_runner import RunningRouter

pytestmark = pytest.mark.integration

ROTATED = "Harbor-Router-Rotated-Secret-2"
ROTATED_AGAIN = "Harbor-Router-Rotated-Secret-3"


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def write_secret(path: Path, password: str, mtime: float) -> None:
    """Rewrite the file with an explicit mtime: a rewrite within the filesystem's timestamp
    granularity would otherwise look unchanged."""
    path.write_text(password + "\n", encoding="utf-8")
    os.utime(path, (mtime, mtime))


def manifest_get(router: RunningRouter, image: SeedImage) -> tuple[int, bytes]:
    status, _, body = router.request(
        "GET", f"/v2/proxy/{image.repo}/manifests/{image.tag}", {"Accept": image.media_type}
    )
    return status, body


def sent_to(harbor: HarborEmulator, image: SeedImage, kind: str) -> list[RecordedRequest]:
    return [
        r
        for r in harbor.requests(image.project)
        if f"/{kind}/" in r.path and r.path.startswith(f"/v2/{image.project}/{image.repo}/")
    ]


def test_rotated_password_file_is_used_by_the_hit_path(
    make_router: Callable[..., RunningRouter],
    harbor: HarborEmulator,
    seeded: Seeded,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="harbor_router")
    image = seeded.get("dockerhub", "library/nginx")
    secret = tmp_path / "HARBOR_PASSWORD"
    first_mtime = os.stat(tmp_path).st_mtime - 1000
    write_secret(secret, harbor.password, first_mtime)
    # No discovery pass re-reads the file during the test: only the hit path can.
    router = make_router(HARBOR_PASSWORD_FILE=str(secret), DISCOVERY_INTERVAL="30m")
    old_auth = harbor.basic_auth_header()

    status, body = manifest_get(router, image)  # miss: fan-out, mapping recorded
    assert status == 200
    assert body == image.manifest
    harbor.clear_log()
    status, body = manifest_get(router, image)  # hit
    assert status == 200
    assert [r.headers.get("authorization") for r in sent_to(harbor, image, "manifests")] == [
        old_auth
    ]

    # Harbor has the new password, the file still the old one: Harbor's 401 is a 502.
    harbor.set_password(ROTATED)
    harbor.clear_log()
    status, _, body = router.request(
        "GET", f"/v2/proxy/{image.repo}/manifests/{image.tag}", {"Accept": image.media_type}
    )
    assert status == 502
    error = json.loads(body)["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert "refused the router's credentials" in error["message"]
    assert error["detail"] == {image.project: "401"}
    asked = sent_to(harbor, image, "manifests")
    assert [r.headers.get("authorization") for r in asked] == [old_auth]  # no retry
    status, _, _ = router.request("GET", f"/v2/proxy/{image.repo}/blobs/{image.config}")
    assert status == 502

    # The file is rotated too: the next hit carries the new password and succeeds.
    write_secret(secret, ROTATED, first_mtime + 10)
    new_auth = basic(harbor.username, ROTATED)
    harbor.clear_log()
    status, body = manifest_get(router, image)
    assert status == 200
    assert body == image.manifest
    auths = [r.headers.get("authorization") for r in sent_to(harbor, image, "manifests")]
    assert auths == [old_auth, new_auth]  # refused, reloaded, asked once more
    harbor.clear_log()
    for blob in image.blobs:
        status, _, data = router.request("GET", f"/v2/proxy/{image.repo}/blobs/{blob}")
        assert status == 200
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob
    status, body = manifest_get(router, image)
    assert status == 200
    sent = sent_to(harbor, image, "blobs") + sent_to(harbor, image, "manifests")
    assert len(sent) == len(image.blobs) + 1
    assert {r.headers.get("authorization") for r in sent} == {new_auth}  # no stale try left

    # Rotated again, the file first: while Harbor still takes the previous password the router
    # keeps using it; once Harbor switches, its 401 makes the router reload and ask again.
    write_secret(secret, ROTATED_AGAIN, first_mtime + 20)
    harbor.clear_log()
    status, _ = manifest_get(router, image)
    assert status == 200
    assert [r.headers.get("authorization") for r in sent_to(harbor, image, "manifests")] == [
        new_auth
    ]
    harbor.set_password(ROTATED_AGAIN)
    harbor.clear_log()
    status, body = manifest_get(router, image)
    assert status == 200
    assert body == image.manifest
    assert [r.headers.get("authorization") for r in sent_to(harbor, image, "manifests")] == [
        new_auth,
        basic(harbor.username, ROTATED_AGAIN),
    ]

    for password in (ROTATED, ROTATED_AGAIN, harbor.initial_password):
        assert password not in caplog.text
    assert "credentials reloaded" in caplog.text
