"""AUTH_MODE=harbor: the client's own Harbor credentials, Harbor's own pull permissions (DESIGN §5).

The emulator's token service plays Harbor's: users and robot accounts with passwords, public and
private projects, pull rights per project. Every case checks what the client gets and, through
the emulator's log, what the router asked Harbor's token service.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import Seeded, SeedImage
from harbor_emulator import HarborEmulator
from router_runner import RunningRouter
from support_tools import free_port
from test_pull_skopeo import assert_copied, copy_image

pytestmark = pytest.mark.integration

BASIC_CHALLENGE = 'Basic realm="harbor-router"'
ALICE, ALICE_PASSWORD = "alice", "Alice-Secret-4f9e"  # pull on ghcr
BOB, BOB_PASSWORD = "bob", "Bob-Secret-8c2d"  # pull on quay only
CI_ROBOT, CI_SECRET = "robot$ci", "Ci-Robot-Secret-1a7b"  # pull on ghcr
SECRETS = (ALICE_PASSWORD, BOB_PASSWORD, CI_SECRET)


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def accounts(harbor: HarborEmulator) -> Iterator[HarborEmulator]:
    harbor.add_user(ALICE, ALICE_PASSWORD, pull=["ghcr"])
    harbor.add_user(BOB, BOB_PASSWORD, pull=["quay"])
    harbor.add_user(CI_ROBOT, CI_SECRET, pull=["ghcr"])
    harbor.set_public("dockerhub")
    yield harbor


@pytest.fixture
def harbor_router(
    make_router: Callable[..., RunningRouter], accounts: HarborEmulator
) -> RunningRouter:
    return make_router(AUTH_MODE="harbor")


def manifest(
    router: RunningRouter, image: SeedImage, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    status, got, body = router.request(
        "GET",
        f"/v2/proxy/{image.repo}/manifests/{image.tag}",
        {"Accept": image.media_type, **(headers or {})},
    )
    return status, dict(got.items()), body


def scoped(harbor: HarborEmulator) -> list[str]:
    """The scopes the router asked the token service for, oldest first ("" = no scope)."""
    out = []
    for request in harbor.token_requests():
        query = parse_qs(urlsplit(request.path).query)
        assert query["service"] == ["harbor-registry"]
        out.append(query.get("scope", [""])[0])
    return out


def error_code(body: bytes) -> str:
    code: str = json.loads(body)["errors"][0]["code"]
    return code


def test_no_credentials_get_the_basic_challenge(
    harbor_router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    for method in ("GET", "HEAD"):
        status, headers, body = harbor_router.request(method, "/v2/")
        assert status == 401
        assert headers["WWW-Authenticate"] == BASIC_CHALLENGE
        if method == "GET":
            assert error_code(body) == "UNAUTHORIZED"
    status, headers, body = manifest(harbor_router, image)
    assert status == 401, body
    assert headers["WWW-Authenticate"] == BASIC_CHALLENGE
    assert error_code(body) == "UNAUTHORIZED"
    # Harbor was asked anonymously for the project that holds it, and said no.
    assert scoped(harbor) == ["repository:ghcr/acme/tool:pull"]
    assert all("authorization" not in r.headers for r in harbor.token_requests())


def test_bearer_tokens_are_not_accepted(
    harbor_router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    for target in ("/v2/", f"/v2/proxy/{image.repo}/manifests/{image.tag}"):
        status, headers, body = harbor_router.request(
            "GET", target, {"Authorization": "Bearer some-harbor-token"}
        )
        assert status == 401, (target, body)
        assert headers["WWW-Authenticate"] == BASIC_CHALLENGE
    status, _, _ = harbor_router.request("GET", "/v2/", {"Authorization": "Basic not-base64!"})
    assert status == 401
    assert harbor.token_requests() == []
    assert harbor.count(path_contains="/manifests/") == 0


def test_login_checks_the_credentials(harbor_router: RunningRouter, harbor: HarborEmulator) -> None:
    status, _, body = harbor_router.request("GET", "/v2/", basic(ALICE, ALICE_PASSWORD))
    assert (status, body) == (200, b"{}")
    status, headers, _ = harbor_router.request("GET", "/v2/", basic(ALICE, "wrong"))
    assert status == 401
    assert headers["WWW-Authenticate"] == BASIC_CHALLENGE
    assert scoped(harbor) == ["", ""]  # "docker login": no scope


def test_wrong_password_is_refused_before_any_fan_out(
    harbor_router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    status, headers, body = manifest(harbor_router, image, basic(ALICE, "wrong"))
    assert status == 401, body
    assert headers["WWW-Authenticate"] == BASIC_CHALLENGE
    assert harbor.count(path_contains="/manifests/") == 0
    # Mapped already (someone pulled it): still refused, still nothing served.
    status, _, _ = manifest(harbor_router, image, basic(ALICE, ALICE_PASSWORD))
    assert status == 200
    harbor.clear_log()
    status, _, body = manifest(harbor_router, image, basic(ALICE, "wrong"))
    assert status == 401
    assert harbor.count(path_contains="/manifests/") == 0


def test_user_with_pull_rights(
    harbor_router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    status, headers, body = manifest(harbor_router, image, basic(ALICE, ALICE_PASSWORD))
    assert status == 200
    assert body == image.manifest
    assert headers["Docker-Content-Digest"] == image.digest
    assert scoped(harbor) == ["", "repository:ghcr/acme/tool:pull"]
    # Harbor served the content to the robot, never to the client's credentials.
    robot = harbor.basic_auth_header()
    content = [r for r in harbor.requests() if r.project is not None]
    assert content and all(r.headers["authorization"] == robot for r in content)


def test_robot_account(harbor_router: RunningRouter, seeded: Seeded) -> None:
    image = seeded.get("ghcr", "acme/tool")
    status, _, body = manifest(harbor_router, image, basic(CI_ROBOT, CI_SECRET))
    assert status == 200 and body == image.manifest
    other = seeded.get("quay", "coreos/etcd")
    status, _, body = manifest(harbor_router, other, basic(CI_ROBOT, CI_SECRET))
    assert status == 403 and error_code(body) == "DENIED"


def test_user_without_pull_on_the_resolved_project_is_denied(
    harbor_router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    # A miss: the fan-out finds ghcr, the check is for ghcr, nothing reaches the client.
    status, headers, body = manifest(harbor_router, image, basic(BOB, BOB_PASSWORD))
    assert status == 403, body
    assert error_code(body) == "DENIED"
    assert "Docker-Content-Digest" not in headers
    assert scoped(harbor)[-1] == "repository:ghcr/acme/tool:pull"
    # A hit (mapped now): the same answer; blobs too.
    assert harbor_router.app.mapping is not None
    assert harbor_router.app.mapping.get(image.repo) == "ghcr"
    status, _, body = manifest(harbor_router, image, basic(BOB, BOB_PASSWORD))
    assert status == 403 and error_code(body) == "DENIED"
    status, _, body = harbor_router.request(
        "GET", f"/v2/proxy/{image.repo}/blobs/{image.config}", basic(BOB, BOB_PASSWORD)
    )
    assert status == 403 and error_code(body) == "DENIED"
    # Bob may pull what quay holds.
    etcd = seeded.get("quay", "coreos/etcd")
    status, _, body = manifest(harbor_router, etcd, basic(BOB, BOB_PASSWORD))
    assert status == 200 and body == etcd.manifest


def test_blob_miss_is_checked_for_the_winner(harbor_router: RunningRouter, seeded: Seeded) -> None:
    image = seeded.get("quay", "coreos/etcd")
    target = f"/v2/proxy/{image.repo}/blobs/{image.layers[0]}"
    status, _, body = harbor_router.request("GET", target, basic(ALICE, ALICE_PASSWORD))
    assert status == 403 and error_code(body) == "DENIED"
    assert harbor_router.app.mapping is not None
    harbor_router.app.mapping.forget(image.repo)
    status, _, body = harbor_router.request("GET", target, basic(BOB, BOB_PASSWORD))
    assert status == 200 and len(body) == image.blob_sizes[image.layers[0]]


def test_anonymous_on_a_public_project(
    harbor_router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("dockerhub", "library/alpine")
    status, _, body = manifest(harbor_router, image)
    assert status == 200 and body == image.manifest
    assert scoped(harbor) == ["repository:dockerhub/library/alpine:pull"]
    # One-segment Docker Hub name: Harbor is asked for the library/ repository it serves.
    status, _, _ = harbor_router.request(
        "GET", f"/v2/proxy/alpine/manifests/{image.tag}", {"Accept": image.media_type}
    )
    assert status == 200
    assert scoped(harbor)[-1] == "repository:dockerhub/library/alpine:pull"
    # Unknown everywhere: anonymous clients are asked for credentials, not told "unknown".
    status, headers, _ = harbor_router.request("GET", "/v2/proxy/no/such/manifests/1")
    assert status == 401 and headers["WWW-Authenticate"] == BASIC_CHALLENGE
    status, _, body = harbor_router.request(
        "GET", "/v2/proxy/no/such/manifests/1", basic(ALICE, ALICE_PASSWORD)
    )
    assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN"


def test_decision_cache_expires(
    make_router: Callable[..., RunningRouter],
    accounts: HarborEmulator,
    seeded: Seeded,
) -> None:
    router = make_router(AUTH_MODE="harbor", AUTH_CACHE_TTL="1s")
    harbor = accounts
    image = seeded.get("ghcr", "acme/tool")
    scope = "repository:ghcr/acme/tool:pull"
    for _ in range(5):
        assert manifest(router, image, basic(ALICE, ALICE_PASSWORD))[0] == 200
    assert scoped(harbor).count(scope) == 1
    time.sleep(1.5)
    assert manifest(router, image, basic(ALICE, ALICE_PASSWORD))[0] == 200
    assert scoped(harbor).count(scope) == 2
    # Refusals are cached too (for at most the same TTL here): a right granted in Harbor
    # shows once the refusal has expired.
    assert manifest(router, image, basic(BOB, BOB_PASSWORD))[0] == 403
    harbor.add_user(BOB, BOB_PASSWORD, pull=["quay", "ghcr"])
    assert manifest(router, image, basic(BOB, BOB_PASSWORD))[0] == 403  # cached
    time.sleep(1.5)
    assert manifest(router, image, basic(BOB, BOB_PASSWORD))[0] == 200


def test_a_decision_is_never_reused_for_another_repository(
    harbor_router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    tool = seeded.get("ghcr", "acme/tool")
    multi = seeded.get("ghcr", "acme/multi")
    etcd = seeded.get("quay", "coreos/etcd")
    alice = basic(ALICE, ALICE_PASSWORD)
    assert manifest(harbor_router, tool, alice)[0] == 200
    assert manifest(harbor_router, multi, alice)[0] == 200  # same project, another repository
    assert manifest(harbor_router, etcd, alice)[0] == 403
    assert manifest(harbor_router, tool, basic(BOB, BOB_PASSWORD))[0] == 403  # another user
    assert scoped(harbor) == [
        "",
        "repository:ghcr/acme/tool:pull",
        "repository:ghcr/acme/multi:pull",
        "repository:quay/coreos/etcd:pull",
        "repository:ghcr/acme/tool:pull",  # mapped: the scoped check says all
    ]


def test_a_cached_allow_stays_on_the_fast_path(
    harbor_router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    handler = harbor_router.app.handler
    assert handler is not None
    for _ in range(2):  # the miss, then a hit that leaves an idle pooled connection
        assert manifest(harbor_router, image, basic(ALICE, ALICE_PASSWORD))[0] == 200
    before, asked = handler.fast_starts, len(harbor.token_requests())
    for _ in range(3):
        assert manifest(harbor_router, image, basic(ALICE, ALICE_PASSWORD))[0] == 200
    assert handler.fast_starts == before + 3
    # A cached refusal, no credentials, wrong ones: the task path, never a fast start.
    assert manifest(harbor_router, image, basic(BOB, BOB_PASSWORD))[0] == 403
    assert manifest(harbor_router, image, basic(BOB, BOB_PASSWORD))[0] == 403
    assert manifest(harbor_router, image)[0] == 401
    assert manifest(harbor_router, image, basic(ALICE, "wrong"))[0] == 401
    assert handler.fast_starts == before + 3
    assert len(harbor.token_requests()) == asked + 3  # bob, anonymous, wrong password


def test_token_service_failures_are_not_cached(
    harbor_router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    alice = basic(ALICE, ALICE_PASSWORD)
    harbor.set_token_fault(status=500)
    status, _, body = manifest(harbor_router, image, alice)
    assert status == 503 and error_code(body) == "UNAVAILABLE"
    harbor.clear_faults()
    status, _, body = manifest(harbor_router, image, alice)
    assert status == 200 and body == image.manifest
    harbor.set_token_fault(status=401, times=1)  # Harbor refusing the credentials outright
    status, headers, _ = manifest(harbor_router, image, basic(CI_ROBOT, CI_SECRET))
    assert status == 401 and headers["WWW-Authenticate"] == BASIC_CHALLENGE


def test_brute_force_is_rate_limited_before_harbor_is_asked(
    make_router: Callable[..., RunningRouter], accounts: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(AUTH_MODE="harbor", RATE_LIMIT_PER_IP="1")
    harbor = accounts
    image = seeded.get("ghcr", "acme/tool")
    statuses = [manifest(router, image, basic(ALICE, f"guess-{i}"))[0] for i in range(20)]
    assert statuses.count(429) >= 10, statuses
    assert set(statuses) <= {401, 429}
    # every request Harbor was asked about was one the limiter let through
    assert len(harbor.token_requests()) == statuses.count(401)


def test_skopeo_pulls_with_src_creds(
    harbor_router: RunningRouter,
    seeded: Seeded,
    harbor: HarborEmulator,
    skopeo: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    copy_image(
        skopeo,
        harbor_router,
        f"{image.repo}:{image.tag}",
        tmp_path / "copy",
        "--src-creds",
        f"{ALICE}:{ALICE_PASSWORD}",
    )
    assert_copied(tmp_path / "copy", image)
    scopes = scoped(harbor)
    assert set(scopes) == {"", "repository:ghcr/acme/tool:pull"}
    assert len(scopes) <= 3, scopes  # cached: not one question per blob

    for creds in (f"{BOB}:{BOB_PASSWORD}", f"{ALICE}:wrong"):
        result = skopeo(
            "copy",
            "--retry-times=0",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            f"docker://{harbor_router.address}/proxy/{image.repo}:{image.tag}",
            f"dir:{tmp_path / 'denied'}",
        )
        assert result.returncode != 0, creds
        assert not (tmp_path / "denied" / "manifest.json").exists()


def test_skopeo_anonymous_pull_of_a_public_project(
    harbor_router: RunningRouter,
    seeded: Seeded,
    skopeo: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    image = seeded.get("dockerhub", "library/alpine")
    copy_image(skopeo, harbor_router, f"{image.repo}:{image.tag}", tmp_path / "copy")
    assert_copied(tmp_path / "copy", image)
    private = seeded.get("quay", "coreos/etcd")
    result = skopeo(
        "copy",
        "--retry-times=0",
        "--src-tls-verify=false",
        "--src-no-creds",
        f"docker://{harbor_router.address}/proxy/{private.repo}:{private.tag}",
        f"dir:{tmp_path / 'private'}",
    )
    assert result.returncode != 0


def _get(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def test_no_credential_in_the_router_logs(accounts: HarborEmulator, seeded: Seeded) -> None:
    """A router process at LOG_LEVEL=debug: its whole stderr holds no client credential."""
    harbor = accounts
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HARBOR_URL": harbor.url,
        "HARBOR_USERNAME": harbor.username,
        "HARBOR_PASSWORD": harbor.password,
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "AUTH_MODE": "harbor",
        "LOG_LEVEL": "debug",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "harbor_router"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sent: list[str] = []
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "router exited early"
            try:
                if _get(url + "/readyz", {}) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "router never became ready"
            time.sleep(0.1)
        image = seeded.get("ghcr", "acme/tool")
        target = f"{url}/v2/proxy/{image.repo}/manifests/{image.tag}"
        cases = [
            (basic(ALICE, ALICE_PASSWORD), 200),
            (basic(ALICE, ALICE_PASSWORD), 200),
            (basic(BOB, BOB_PASSWORD), 403),
            (basic(ALICE, "Wrong-Guess-77"), 401),
            ({"Authorization": "Bearer Client-Token-93"}, 401),
        ]
        for headers, expected in cases:
            sent.append(headers["Authorization"])
            assert _get(target, {"Accept": image.media_type, **headers}) == expected
        assert _get(url + "/v2/", basic(CI_ROBOT, CI_SECRET)) == 200
        sent.append(basic(CI_ROBOT, CI_SECRET)["Authorization"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    log = err.decode()
    assert "/v2/proxy/acme/tool/manifests" in log or "harbor-router" in log
    for secret in (*SECRETS, "Wrong-Guess-77", "Client-Token-93", harbor.password):
        assert secret not in log
    for value in sent:
        assert value not in log
        assert value.split(" ", 1)[1] not in log
