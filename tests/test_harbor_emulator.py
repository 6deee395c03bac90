"""The Harbor emulator behaves like Harbor where the router depends on it (DESIGN §3)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from conftest import RANDOM_LAYER_BYTES, Seeded
from harbor_emulator import HarborEmulator, default_projects, jwt_claims
from oci_images import DOCKER_MANIFEST, OCI_MANIFEST
from support_tools import free_port

ACCEPT_ALL = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, "application/vnd.oci.image.index.v1+json"))
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=15)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _error_code(resp: aiohttp.ClientResponse) -> str:
    body = json.loads(await resp.read())
    code: str = body["errors"][0]["code"]
    return code


@pytest.fixture(scope="module")
def api_harbor() -> Iterator[HarborEmulator]:
    """An emulator for API-only tests: its registry address is never contacted."""
    with HarborEmulator(f"http://127.0.0.1:{free_port()}", default_projects()) as emulator:
        yield emulator


@pytest.fixture
def api(api_harbor: HarborEmulator) -> Iterator[HarborEmulator]:
    api_harbor.clear_faults()
    api_harbor.clear_log()
    yield api_harbor
    api_harbor.clear_faults()
    api_harbor.start_listening()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        yield session


def _basic(username: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def _auth(emulator: HarborEmulator, **extra: str) -> dict[str, str]:
    return {"Authorization": emulator.basic_auth_header(), **extra}


# -- projects API ------------------------------------------------------------------------------


async def test_projects_require_robot_basic_auth(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    url = f"{api.url}/api/v2.0/projects"
    async with client.get(url) as resp:
        assert resp.status == 401
        assert await _error_code(resp) == "UNAUTHORIZED"
    async with client.get(url, headers=_basic(api.username, "not-the-password")) as resp:
        assert resp.status == 401
    async with client.get(url, headers=_auth(api)) as resp:
        assert resp.status == 200


async def test_projects_paging_follows_link_over_two_pages(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    expected = [p.name for p in default_projects()]
    assert len(expected) > 100
    seen: list[dict[str, Any]] = []
    links: list[str | None] = []
    path: str | None = "/api/v2.0/projects?page=1&page_size=100"
    while path is not None:
        async with client.get(api.url + path, headers=_auth(api)) as resp:
            assert resp.status == 200
            assert resp.headers["X-Total-Count"] == str(len(expected))
            page = await resp.json()
            link = resp.headers.get("Link")
        assert len(page) <= 100
        seen += page
        links.append(link)
        path = None
        for part in (link or "").split(","):
            if part.strip().endswith('rel="next"'):
                path = part.strip().split(";")[0].strip("<> ")
    assert links == [
        '</api/v2.0/projects?page=2&page_size=100>; rel="next"',
        '</api/v2.0/projects?page=1&page_size=100>; rel="prev"',
    ]
    assert [p["name"] for p in seen] == expected
    assert [p["project_id"] for p in seen] == list(range(1, len(expected) + 1))
    proxies = {p["name"]: i for i, p in enumerate(seen) if p.get("registry_id", 0) > 0}
    assert set(proxies) == {"proxy", "dockerhub", "ghcr", "quay"}
    assert proxies["ghcr"] < 100 <= proxies["quay"]


async def test_projects_registry_id_absent_or_zero_for_normal_projects(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    url = f"{api.url}/api/v2.0/projects?page_size=100"
    async with client.get(url, headers=_auth(api)) as resp:
        page = await resp.json()
    normal = [p for p in page if p["name"].startswith("team-") or p["name"] == "library"]
    assert any("registry_id" not in p for p in normal)
    assert any(p.get("registry_id") == 0 for p in normal)
    assert all(p.get("registry_id", 0) == 0 for p in normal)
    assert all(p["metadata"] == {"public": "false"} for p in page)


@pytest.mark.parametrize(
    ("query", "size", "link"),
    [
        ("", 10, '</api/v2.0/projects?page=2&page_size=10>; rel="next"'),
        ("?page_size=500", 100, '</api/v2.0/projects?page=2&page_size=100>; rel="next"'),
        (
            "?page=3&page_size=7",
            7,
            '</api/v2.0/projects?page=2&page_size=7>; rel="prev" , '
            '</api/v2.0/projects?page=4&page_size=7>; rel="next"',
        ),
        ("?page=99&page_size=100", 0, '</api/v2.0/projects?page=98&page_size=100>; rel="prev"'),
    ],
)
async def test_projects_page_size_default_clamp_and_links(
    api: HarborEmulator, client: aiohttp.ClientSession, query: str, size: int, link: str
) -> None:
    async with client.get(f"{api.url}/api/v2.0/projects{query}", headers=_auth(api)) as resp:
        assert resp.status == 200
        assert len(await resp.json()) == size
        assert resp.headers["Link"] == link


@pytest.mark.parametrize(
    ("project", "registry_type", "registry_url"),
    [
        ("dockerhub", "docker-hub", "https://hub.docker.com"),
        ("proxy", "docker-hub", "https://hub.docker.com"),
        ("ghcr", "github-ghcr", "https://ghcr.io"),
        ("quay", "quay", "https://quay.io"),
    ],
)
async def test_summary_of_proxy_project_has_registry_type(
    api: HarborEmulator,
    client: aiohttp.ClientSession,
    project: str,
    registry_type: str,
    registry_url: str,
) -> None:
    """As Harbor's registry endpoints show them (the URL the routing hints learn hosts from)."""
    url = f"{api.url}/api/v2.0/projects/{project}/summary"
    async with client.get(url, headers=_auth(api)) as resp:
        assert resp.status == 200
        registry = (await resp.json())["registry"]
    assert registry["type"] == registry_type
    assert registry["id"] > 0
    assert registry["url"] == registry_url


async def test_summary_of_normal_and_unknown_projects(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{api.url}/api/v2.0/projects/library/summary", headers=_auth(api)) as r:
        assert r.status == 200
        assert "registry" not in await r.json()
    async with client.get(f"{api.url}/api/v2.0/projects/nope/summary", headers=_auth(api)) as r:
        assert r.status == 404
        assert await _error_code(r) == "NOT_FOUND"


# -- /v2/ and tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "realm"),
    [
        ({"Host": "registry.example.com"}, "http://registry.example.com/service/token"),
        (
            {"Host": "registry.example.com:8443", "X-Forwarded-Proto": "https"},
            "https://registry.example.com:8443/service/token",
        ),
    ],
)
async def test_ping_challenge_realm_from_host_and_forwarded_proto(
    api: HarborEmulator, client: aiohttp.ClientSession, headers: dict[str, str], realm: str
) -> None:
    async with client.get(f"{api.url}/v2/", headers=headers) as resp:
        assert resp.status == 401
        assert await _error_code(resp) == "UNAUTHORIZED"
        challenge = resp.headers["WWW-Authenticate"]
    assert challenge == f'Bearer realm="{realm}",service="harbor-registry"'


async def test_ping_with_basic_and_with_issued_bearer_token(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{api.url}/v2/", headers=_auth(api)) as resp:
        assert resp.status == 200
        assert await resp.json() == {}
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    token_url = f"{api.url}/service/token?service=harbor-registry"
    async with client.get(token_url, headers=_auth(api)) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 1800
    assert "issued_at" in body
    bearer = {"Authorization": f"Bearer {body['token']}"}
    async with client.get(f"{api.url}/v2/", headers=bearer) as resp:
        assert resp.status == 200
    async with client.get(f"{api.url}/v2/", headers={"Authorization": "Bearer forged"}) as resp:
        assert resp.status == 401


async def test_token_service_anonymous_token_grants_nothing_and_bad_credentials_fail(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    scoped = f"{api.url}/service/token?service=harbor-registry&scope=repository:ghcr/a/b:pull"
    async with client.get(scoped) as resp:
        assert resp.status == 200
        token = (await resp.json())["token"]
    assert jwt_claims(token)["sub"] == ""
    assert jwt_claims(token)["access"] == [
        {"type": "repository", "name": "ghcr/a/b", "actions": []}
    ]
    async with client.get(f"{api.url}/v2/", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 401
    login = f"{api.url}/service/token?service=harbor-registry"
    async with client.get(login) as resp:
        assert resp.status == 401  # no credentials and no scope: "docker login" fails
    bad = _basic(api.username, "wrong")
    async with client.get(login, headers=bad) as resp:
        assert resp.status == 401
    # With a scope, credentials Harbor cannot verify make the request anonymous.
    async with client.get(scoped, headers=bad) as resp:
        assert resp.status == 200
        assert jwt_claims((await resp.json())["token"])["sub"] == ""
    async with client.get(f"{api.url}/service/token?service=other") as resp:
        assert resp.status == 400


@pytest.mark.parametrize(
    ("who", "project", "actions"),
    [
        ("robot", "ghcr", ["pull"]),  # the router's robot: every project
        ("alice", "ghcr", ["pull"]),
        ("alice", "quay", []),
        ("robot$ci", "quay", ["pull"]),
        ("robot$ci", "ghcr", []),
        ("anonymous", "ghcr", []),
        ("anonymous", "dockerhub", ["pull"]),  # public
        ("alice", "dockerhub", ["pull"]),
        ("alice", "no-such-project", []),
    ],
)
async def test_token_service_grants_pull_as_harbor_does(
    api: HarborEmulator, client: aiohttp.ClientSession, who: str, project: str, actions: list[str]
) -> None:
    api.add_user("alice", "alice-pw", pull=["ghcr"])
    api.add_user("robot$ci", "ci-secret", pull=["quay"])
    api.set_public("dockerhub")
    try:
        headers = {
            "robot": _auth(api),
            "alice": _basic("alice", "alice-pw"),
            "robot$ci": _basic("robot$ci", "ci-secret"),
            "anonymous": {},
        }[who]
        scope = f"repository:{project}/library/app:pull"
        url = f"{api.url}/service/token?service=harbor-registry&scope={scope}"
        async with client.get(url, headers=headers) as resp:
            assert resp.status == 200
            claims = jwt_claims((await resp.json())["token"])
        expected_sub = {"robot": api.username, "anonymous": ""}.get(who, who)
        assert claims["sub"] == expected_sub
        assert claims["aud"] == "harbor-registry"
        assert claims["access"] == [
            {"type": "repository", "name": f"{project}/library/app", "actions": actions}
        ]
        assert api.token_requests()[-1].path.startswith("/service/token?")
    finally:
        api.reset_accounts()


def test_sync_clients_can_use_the_emulator(api: HarborEmulator) -> None:
    req = urllib.request.Request(f"{api.url}/v2/", headers=_auth(api))
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == b"{}"


# -- API faults, refusing, request log ---------------------------------------------------------


async def test_api_fault_status_and_times(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    url = f"{api.url}/api/v2.0/projects"
    api.set_api_fault(status=503, times=1)
    async with client.get(url, headers=_auth(api)) as resp:
        assert resp.status == 503
        assert await _error_code(resp) == "UNKNOWN"
    async with client.get(url, headers=_auth(api)) as resp:
        assert resp.status == 200
    api.set_api_fault(status=429)
    for _ in range(2):
        async with client.get(url, headers=_auth(api)) as resp:
            assert resp.status == 429
            assert await _error_code(resp) == "TOO_MANY_REQUEST"
            assert resp.headers["Retry-After"]
    api.clear_faults()
    async with client.get(url, headers=_auth(api)) as resp:
        assert resp.status == 200


async def test_api_fault_delay_outlasts_a_short_client_timeout(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    api.set_api_fault(delay=5.0)
    with pytest.raises(asyncio.TimeoutError):
        async with client.get(
            f"{api.url}/api/v2.0/projects",
            headers=_auth(api),
            timeout=aiohttp.ClientTimeout(total=0.3),
        ):
            pass
    # /v2/ is not an API path: it is not delayed.
    async with client.get(
        f"{api.url}/v2/", headers=_auth(api), timeout=aiohttp.ClientTimeout(total=3)
    ) as resp:
        assert resp.status == 200


async def test_api_fault_reset_aborts_the_connection(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    api.set_api_fault(reset=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get(f"{api.url}/api/v2.0/projects", headers=_auth(api)) as resp:
            await resp.read()


async def test_stop_listening_refuses_then_start_listening_serves_again(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    port = api.port
    api.stop_listening()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get(f"{api.url}/v2/", headers=_auth(api)):
            pass
    api.start_listening()
    assert api.port == port
    async with client.get(f"{api.url}/v2/", headers=_auth(api)) as resp:
        assert resp.status == 200


async def test_request_log_records_project_path_and_headers(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    await (await client.get(f"{api.url}/api/v2.0/projects?page=2", headers=_auth(api))).release()
    await (
        await client.get(f"{api.url}/v2/ghcr/acme/tool/tags/list?n=5", headers={"X-Test": "a"})
    ).release()
    everything = api.requests()
    assert [(r.project, r.method, r.path) for r in everything] == [
        (None, "GET", "/api/v2.0/projects?page=2"),
        ("ghcr", "GET", "/v2/ghcr/acme/tool/tags/list?n=5"),
    ]
    assert everything[1].headers["x-test"] == "a"
    assert api.count() == 2
    assert api.count("ghcr") == 1
    assert api.count("quay") == 0
    assert api.count(path_contains="/tags/list") == 1
    api.clear_log()
    assert api.requests() == []


async def test_unreachable_registry_is_a_harbor_500(
    api: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    url = f"{api.url}/v2/ghcr/acme/tool/manifests/v1"
    async with client.get(url, headers=_auth(api)) as resp:
        assert resp.status == 500
        assert await _error_code(resp) == "UNKNOWN"


# -- registry front (real distribution registry behind) ---------------------------------------


@pytest.mark.integration
async def test_manifests_are_served_with_the_pushed_digests(
    harbor: HarborEmulator, seeded: Seeded, client: aiohttp.ClientSession
) -> None:
    for image in seeded.images:
        url = f"{harbor.url}/v2/{image.project}/{image.repo}/manifests/{image.tag}"
        async with client.get(url, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
            assert resp.status == 200, image
            body = await resp.read()
            assert resp.headers["Docker-Content-Digest"] == image.digest
            assert resp.headers["Content-Type"] == image.media_type
        assert body == image.manifest
        assert _sha256(body) == image.digest
        by_digest = f"{harbor.url}/v2/{image.project}/{image.repo}/manifests/{image.digest}"
        async with client.head(by_digest, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(image.manifest))
            assert await resp.read() == b""


@pytest.mark.integration
def test_seed_images_are_distinct(seeded: Seeded) -> None:
    shared = seeded.by_repo("shared/app")
    assert {i.project for i in shared} == {"ghcr", "quay"}
    assert shared[0].digest != shared[1].digest
    assert len({i.digest for i in seeded.images}) == len(seeded.images)
    nginx = seeded.get("dockerhub", "library/nginx")
    assert nginx.media_type == DOCKER_MANIFEST
    assert nginx.blob_sizes[nginx.layers[0]] > RANDOM_LAYER_BYTES
    assert seeded.get("quay", "coreos/etcd").media_type == OCI_MANIFEST


@pytest.mark.integration
async def test_accept_is_forwarded_to_the_registry(
    harbor: HarborEmulator, seeded: Seeded, client: aiohttp.ClientSession
) -> None:
    image = seeded.get("ghcr", "acme/tool")  # an OCI manifest
    url = f"{harbor.url}/v2/ghcr/acme/tool/manifests/{image.tag}"
    async with client.get(url, headers=_auth(harbor, Accept=OCI_MANIFEST)) as resp:
        assert resp.status == 200
    # distribution hides an OCI manifest from a client that does not accept it
    async with client.get(url, headers=_auth(harbor, Accept=DOCKER_MANIFEST)) as resp:
        assert resp.status == 404
        assert await _error_code(resp) == "NOT_FOUND"


@pytest.mark.integration
async def test_blob_head_is_404_until_a_get_completed_in_that_project(
    harbor: HarborEmulator, seeded: Seeded, client: aiohttp.ClientSession
) -> None:
    image = seeded.get("dockerhub", "library/nginx")
    layer = image.layers[0]
    url = f"{harbor.url}/v2/dockerhub/library/nginx/blobs/{layer}"
    async with client.head(url, headers=_auth(harbor)) as resp:
        assert resp.status == 404
    async with client.get(url, headers=_auth(harbor)) as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == layer
        body = bytearray()
        async for chunk in resp.content.iter_any():
            body += chunk
    assert len(body) == image.blob_sizes[layer]
    assert _sha256(bytes(body)) == layer
    # Marked cached once the handler finished, which may be just after the last byte arrived.
    deadline = time.monotonic() + 5
    while not harbor.is_blob_cached("dockerhub", layer) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert harbor.is_blob_cached("dockerhub", layer)
    async with client.head(url, headers=_auth(harbor)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(image.blob_sizes[layer])
    # The cache is per project: the same digest is not cached in another project.
    async with client.head(
        f"{harbor.url}/v2/quay/library/nginx/blobs/{layer}", headers=_auth(harbor)
    ) as resp:
        assert resp.status == 404


@pytest.mark.integration
async def test_blob_range_passes_through(
    harbor: HarborEmulator, seeded: Seeded, client: aiohttp.ClientSession
) -> None:
    image = seeded.get("dockerhub", "library/nginx")
    layer = image.layers[0]
    url = f"{harbor.url}/v2/dockerhub/library/nginx/blobs/{layer}"
    async with client.get(url, headers=_auth(harbor, Range="bytes=100-199")) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 100-199/{image.blob_sizes[layer]}"
        part = await resp.read()
    async with client.get(url, headers=_auth(harbor)) as resp:
        whole = await resp.read()
    assert part == whole[100:200]


@pytest.mark.integration
@pytest.mark.parametrize(
    "path",
    [
        "/v2/ghcr/acme/tool/manifests/no-such-tag",
        "/v2/ghcr/acme/nothing/manifests/v1",
        "/v2/quay/coreos/etcd/blobs/sha256:" + "0" * 64,
        "/v2/no-such-project/acme/tool/manifests/v1",
        "/v2/quay/acme/tool/manifests/v1",
    ],
)
async def test_misses_are_404_not_found(
    harbor: HarborEmulator, client: aiohttp.ClientSession, path: str
) -> None:
    async with client.get(harbor.url + path, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
        assert resp.status == 404
        assert await _error_code(resp) == "NOT_FOUND"


@pytest.mark.integration
async def test_normal_project_miss_keeps_the_registry_error_code(
    harbor: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    url = f"{harbor.url}/v2/library/acme/tool/manifests/v1"
    async with client.get(url, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
        assert resp.status == 404
        assert await _error_code(resp) in {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}


@pytest.mark.integration
async def test_content_requires_auth_with_a_scoped_challenge(
    harbor: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    url = f"{harbor.url}/v2/ghcr/acme/tool/manifests/v1"
    async with client.get(url, headers={"Host": "harbor.test"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == (
            'Bearer realm="http://harbor.test/service/token",service="harbor-registry",'
            'scope="repository:ghcr/acme/tool:pull"'
        )


@pytest.mark.integration
async def test_tags_list_known_and_unknown_repository(
    harbor: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{harbor.url}/v2/quay/shared/app/tags/list", headers=_auth(harbor)) as r:
        assert r.status == 200
        assert await r.json() == {"name": "quay/shared/app", "tags": ["1"]}
    async with client.get(f"{harbor.url}/v2/quay/acme/tool/tags/list", headers=_auth(harbor)) as r:
        assert r.status == 200
        assert await r.json() == {"name": "quay/acme/tool", "tags": []}


@pytest.mark.integration
async def test_docker_hub_one_segment_name_is_redirected_to_library(
    harbor: HarborEmulator, seeded: Seeded, client: aiohttp.ClientSession
) -> None:
    url = f"{harbor.url}/v2/dockerhub/alpine/manifests/3.19"
    async with client.get(url, headers=_auth(harbor), allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["Location"] == "/v2/dockerhub/library/alpine/manifests/3.19"
    async with client.get(
        f"{harbor.url}/v2/dockerhub/alpine/tags/list?n=1",
        headers=_auth(harbor),
        allow_redirects=False,
    ) as resp:
        assert resp.status == 301
        assert resp.headers["Location"] == "/v2/dockerhub/library/alpine/tags/list?n=1"
    # Following it reaches the image; other registry types see the name unchanged.
    async with client.get(url, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
        assert resp.status == 200
        assert (
            resp.headers["Docker-Content-Digest"]
            == seeded.get("dockerhub", "library/alpine").digest
        )
    async with client.get(
        f"{harbor.url}/v2/ghcr/alpine/manifests/3.19", headers=_auth(harbor), allow_redirects=False
    ) as resp:
        assert resp.status == 404


@pytest.mark.integration
async def test_referrers_of_existing_and_unknown_manifests(
    harbor: HarborEmulator, seeded: Seeded, client: aiohttp.ClientSession
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    url = f"{harbor.url}/v2/ghcr/acme/tool/referrers/{image.digest}"
    async with client.get(url, headers=_auth(harbor)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
        assert (await resp.json())["manifests"] == []
    async with client.get(f"{url}?artifactType=application/x-test", headers=_auth(harbor)) as resp:
        assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    other = f"{harbor.url}/v2/quay/acme/tool/referrers/{image.digest}"
    async with client.get(other, headers=_auth(harbor)) as resp:
        assert resp.status == 404
        assert await _error_code(resp) == "NOT_FOUND"


# -- per-project faults ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("status", "code"), [(429, "TOO_MANY_REQUEST"), (503, "UNKNOWN")])
async def test_project_status_fault_only_hits_that_project(
    harbor: HarborEmulator,
    seeded: Seeded,
    client: aiohttp.ClientSession,
    status: int,
    code: str,
) -> None:
    harbor.set_fault("quay", status=status)
    quay = f"{harbor.url}/v2/quay/shared/app/manifests/1"
    ghcr = f"{harbor.url}/v2/ghcr/shared/app/manifests/1"
    async with client.get(quay, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
        assert resp.status == status
        assert await _error_code(resp) == code
        assert ("Retry-After" in resp.headers) is (status == 429)
    async with client.get(ghcr, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == seeded.get("ghcr", "shared/app").digest
    harbor.clear_faults()
    async with client.get(quay, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
        assert resp.status == 200


@pytest.mark.integration
async def test_project_fault_custom_body_and_headers(
    harbor: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    harbor.set_fault("ghcr", status=429, body={"errors": []}, headers={"Retry-After": "7"})
    url = f"{harbor.url}/v2/ghcr/acme/tool/manifests/v1"
    async with client.get(url, headers=_auth(harbor)) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        assert await resp.json() == {"errors": []}


@pytest.mark.integration
async def test_project_delay_fault_then_normal_answer(
    harbor: HarborEmulator, seeded: Seeded, client: aiohttp.ClientSession
) -> None:
    harbor.set_fault("ghcr", delay=5.0)
    url = f"{harbor.url}/v2/ghcr/acme/tool/manifests/v1"
    with pytest.raises(asyncio.TimeoutError):
        async with client.get(
            url, headers=_auth(harbor, Accept=ACCEPT_ALL), timeout=aiohttp.ClientTimeout(total=0.3)
        ):
            pass
    harbor.set_fault("ghcr", delay=0.05)  # a delay alone still answers normally
    async with client.get(url, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == seeded.get("ghcr", "acme/tool").digest


@pytest.mark.integration
async def test_project_reset_fault_aborts_without_response(
    harbor: HarborEmulator, client: aiohttp.ClientSession
) -> None:
    # No ``times``: aiohttp retries an idempotent request once on a dropped connection.
    harbor.set_fault("dockerhub", reset=True)
    url = f"{harbor.url}/v2/dockerhub/library/alpine/manifests/3.19"
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get(url, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
            await resp.read()
    assert harbor.count("dockerhub", path_contains="/manifests/3.19") >= 1
    harbor.clear_faults()
    async with client.get(url, headers=_auth(harbor, Accept=ACCEPT_ALL)) as resp:
        assert resp.status == 200


@pytest.mark.integration
def test_sync_urllib_pull_through_emulator(harbor: HarborEmulator, seeded: Seeded) -> None:
    image = seeded.get("quay", "coreos/etcd")
    req = urllib.request.Request(
        f"{harbor.url}/v2/quay/coreos/etcd/blobs/{image.config}", headers=_auth(harbor)
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert _sha256(resp.read()) == image.config
    missing = urllib.request.Request(
        f"{harbor.url}/v2/quay/coreos/etcd/manifests/nope", headers=_auth(harbor)
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(missing, timeout=10)
    assert info.value.code == 404
    info.value.close()
