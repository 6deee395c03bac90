"""Routing hints: containerd's ``ns`` parameter and host-prefixed names (``ghcr.io/acme/tool``).

A hint names the upstream registry, so the router asks only the project that mirrors it: every
"one request, one project" claim is counted in the emulator's request log. Hosts come from
discovery (the registry ``url`` of each project's summary), so the emulator's Docker Hub project
is ``docker.io``, its ghcr project ``ghcr.io`` and its quay project ``quay.io``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from collections.abc import Callable

import pytest
from conftest import Seeded, SeedImage
from harbor_emulator import HarborEmulator
from redis_topology import RedisTopology
from router_runner import RunningRouter

from harbor_router import errors, routes
from harbor_router.discovery import Discovery
from harbor_router.projects import DOCKER_HUB_HOSTS, Project, ProjectSet, registry_hosts

PREFIX = "/v2/proxy"
PROXY_PROJECTS = ("dockerhub", "ghcr", "quay")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT_ALL = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}
D256 = "sha256:" + "a" * 64
R = routes.Router("proxy")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def asked(harbor: HarborEmulator) -> dict[str, int]:
    return {p: harbor.count(p) for p in PROXY_PROJECTS}


def v2_requests(harbor: HarborEmulator) -> list[str]:
    return [r.path for r in harbor.requests() if r.path.startswith("/v2")]


def error_of(body: bytes) -> dict[str, object]:
    entry = json.loads(body)["errors"][0]
    assert isinstance(entry, dict)
    return entry


def get_ok(
    router: RunningRouter, path: str, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPMessage, bytes]:
    """A GET that must answer 200: its headers and body."""
    status, got, body = router.request("GET", path, headers)
    assert status == 200, (path, body[:300])
    return got, body


def get_manifest(router: RunningRouter, path: str, image: SeedImage) -> http.client.HTTPMessage:
    """A manifest GET that must answer 200 with ``image``'s manifest: its headers."""
    headers, body = get_ok(router, path, ACCEPT_ALL)
    assert sha256(body) == image.digest
    return headers


def get_blobs(
    router: RunningRouter, repo: str, image: SeedImage, query: str = ""
) -> list[http.client.HTTPMessage]:
    """GET every blob of ``image`` under ``repo`` (the path up to the repository); each must
    answer 200 with its bytes. The headers of each answer."""
    answers = []
    for digest in image.blobs:
        headers, body = get_ok(router, f"{repo}/blobs/{digest}{query}")
        assert sha256(body) == digest
        answers.append(headers)
    return answers


def get_error(router: RunningRouter, path: str, status: int) -> dict[str, object]:
    """A GET (manifest Accept header) that must fail with ``status``: its registry error entry."""
    got, _, body = router.request("GET", path, ACCEPT_ALL)
    assert got == status, (path, body[:300])
    return error_of(body)


def mapped(router: RunningRouter, key: str) -> str | None:
    """The project the router's L1 maps ``key`` to."""
    assert router.app.mapping is not None
    return router.app.mapping.get(key)


def fast_starts(router: RunningRouter) -> int:
    """Requests that started on the data plane's fast path."""
    assert router.app.handler is not None
    return router.app.handler.fast_starts


@pytest.fixture
def image(seeded: Seeded, project: str, repo: str) -> SeedImage:
    """The seeded image of the test's ``project`` and ``repo`` parameters."""
    return seeded.get(project, repo)


# -- parsing (pure) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name", "upstream", "host"),
    [
        ("/v2/proxy/ghcr.io/acme/tool/manifests/v1", "ghcr.io/acme/tool", "acme/tool", "ghcr.io"),
        ("/v2/proxy/docker.io/nginx/manifests/1", "docker.io/nginx", "library/nginx", "docker.io"),
        (
            "/v2/proxy/docker.io/library/nginx/manifests/1",
            "docker.io/library/nginx",
            "library/nginx",
            "docker.io",
        ),
        ("/v2/proxy/quay.io/nginx/manifests/1", "quay.io/nginx", "nginx", "quay.io"),
        (
            "/v2/proxy/localhost:5000/a/b/manifests/1",
            "localhost:5000/a/b",
            "a/b",
            "localhost:5000",
        ),
        ("/v2/proxy/localhost/a/manifests/1", "localhost/a", "a", "localhost"),
        ("/v2/proxy/10.0.0.7:5000/a/manifests/1", "10.0.0.7:5000/a", "a", "10.0.0.7:5000"),
        ("/v2/proxy/GHCR.io/acme/tool/manifests/v1", "ghcr.io/acme/tool", "acme/tool", "ghcr.io"),
        (f"/v2/proxy/ghcr.io/acme/tool/blobs/{D256}", "ghcr.io/acme/tool", "acme/tool", "ghcr.io"),
        (
            f"/v2/proxy/ghcr.io/acme/tool/referrers/{D256}",
            "ghcr.io/acme/tool",
            "acme/tool",
            "ghcr.io",
        ),
        ("/v2/proxy/ghcr.io/acme/tool/tags/list", "ghcr.io/acme/tool", "acme/tool", "ghcr.io"),
    ],
)
def test_host_prefixed_names(path: str, name: str, upstream: str, host: str) -> None:
    route = R.parse("GET", path, "")
    assert (route.name, route.upstream, route.key, route.host) == (name, upstream, name, host)
    assert route.prefixed and route.ns == ""


@pytest.mark.parametrize(
    "path",
    [
        "/v2/proxy/library/nginx/manifests/1",
        "/v2/proxy/my.app/manifests/1",  # one segment: a repository, never a host
        "/v2/proxy/acme/my.tool/manifests/1",  # only the first segment can be a host
        "/v2/proxy/ghcr.io/tags/list",
    ],
)
def test_names_without_a_host(path: str) -> None:
    route = R.parse("GET", path, "")
    assert route.host == "" and not route.prefixed
    assert route.upstream == route.name == route.key


@pytest.mark.parametrize(
    "path",
    [
        "/v2/proxy/bad_host.io/a/manifests/1",
        "/v2/proxy/-ghcr.io/a/manifests/1",
        "/v2/proxy/ghcr-.io/a/manifests/1",
        "/v2/proxy/ghcr..io/a/manifests/1",
        "/v2/proxy/.ghcr.io/a/manifests/1",
        "/v2/proxy/ghcr.io:/a/manifests/1",
        "/v2/proxy/ghcr.io:0/a/manifests/1",
        "/v2/proxy/ghcr.io:70000/a/manifests/1",
        "/v2/proxy/ghcr.io:5000:1/a/manifests/1",
        "/v2/proxy/gh%63r.io/a/manifests/1",
        "/v2/proxy/[::1]:5000/a/manifests/1",
        "/v2/proxy/ghcr.io/Acme/tool/manifests/1",  # the repository after the host is OCI
        "/v2/proxy/ghcr.io/acme//tool/manifests/1",
        "/v2/proxy/ghcr.io/../tool/manifests/1",
        "/v2/proxy/" + "a" * 64 + ".io/a/manifests/1",  # a DNS label is at most 63
        "/v2/proxy/ghcr.io/" + "a" * 250 + "/manifests/1",  # the whole name is limited
    ],
)
def test_invalid_host_segments(path: str) -> None:
    with pytest.raises(errors.NameInvalid):
        R.parse("GET", path, "")


@pytest.mark.parametrize(
    ("query", "ns", "kept"),
    [
        ("ns=docker.io", "docker.io", ""),
        ("ns=Docker.IO", "docker.io", ""),
        ("ns=localhost%3A5000", "localhost:5000", ""),  # containerd escapes the colon
        ("ns=registry.example.com:8443", "registry.example.com:8443", ""),
        ("x=1&ns=quay.io", "quay.io", ""),
    ],
)
def test_ns_parameter_on_manifests(query: str, ns: str, kept: str) -> None:
    route = R.parse("GET", "/v2/proxy/library/nginx/manifests/1", query)
    assert (route.host, route.ns, route.prefixed) == (ns, ns, False)
    assert route.name == route.upstream == "library/nginx"
    assert route.key == f"{ns}/library/nginx"
    assert route.query == kept, "ns is never forwarded"


def test_ns_is_dropped_from_forwarded_tag_queries() -> None:
    route = R.parse("GET", "/v2/proxy/acme/multi/tags/list", "n=2&ns=ghcr.io&last=a")
    assert route.query == "n=2&last=a"
    assert route.host == "ghcr.io"
    referrers = R.parse("GET", f"/v2/proxy/a/referrers/{D256}", "ns=ghcr.io&artifactType=x")
    assert referrers.query == "artifactType=x" and referrers.ns == "ghcr.io"


def test_the_host_in_the_path_wins_over_ns() -> None:
    route = R.parse("GET", "/v2/proxy/ghcr.io/acme/tool/manifests/v1", "ns=docker.io")
    assert (route.host, route.ns, route.prefixed) == ("ghcr.io", "", True)
    with pytest.raises(errors.NameInvalid):
        R.parse("GET", "/v2/proxy/ghcr.io/acme/tool/manifests/v1", "ns=bad_host")


@pytest.mark.parametrize(
    "query",
    [
        "ns=",
        "ns=bad_host",
        "ns=a..b",
        "ns=-a.io",
        "ns=a.io:99999",
        "ns=a.io:0",
        "ns=%2Fetc%2Fpasswd",
        "ns=a.io%2Fx",
        "ns=a.io%00",
        "ns=a.io&ns=b.io",
        "ns=[::1]",
        "ns=" + "a" * 300,
    ],
)
def test_invalid_ns_values(query: str) -> None:
    for path in ("/v2/proxy/library/nginx/manifests/1", "/v2/proxy/a/tags/list"):
        with pytest.raises(errors.NameInvalid):
            R.parse("GET", path, query)


def test_plain_route_drops_the_hint() -> None:
    route = R.parse("GET", "/v2/proxy/acme/multi/tags/list", "ns=example.org&n=1").plain()
    assert (route.host, route.ns, route.key, route.query) == ("", "", "acme/multi", "n=1")


@pytest.mark.parametrize(
    ("registry_type", "url", "hosts"),
    [
        ("docker-hub", "https://hub.docker.com", DOCKER_HUB_HOSTS),
        ("docker-hub", "", DOCKER_HUB_HOSTS),
        ("docker-registry", "https://registry-1.docker.io", DOCKER_HUB_HOSTS),
        ("github-ghcr", "https://ghcr.io", ("ghcr.io",)),
        ("quay", "https://quay.io/", ("quay.io",)),
        ("docker-registry", "https://Registry.Example.com:443", ("registry.example.com",)),
        ("docker-registry", "http://10.0.0.7:5000", ("10.0.0.7:5000",)),
        ("harbor", "registry.example.org:8443", ("registry.example.org:8443",)),
        ("harbor", "", ()),
        ("harbor", "https://", ()),
    ],
)
def test_registry_hosts(registry_type: str, url: str, hosts: tuple[str, ...]) -> None:
    assert registry_hosts(registry_type, url) == hosts
    assert DOCKER_HUB_HOSTS[0] == "docker.io"


def test_project_set_by_host_keeps_priority_order() -> None:
    a = Project("hub-a", "docker-hub", DOCKER_HUB_HOSTS)
    b = Project("hub-b", "docker-hub", DOCKER_HUB_HOSTS)
    g = Project("ghcr", "github-ghcr", ("ghcr.io",))
    projects = ProjectSet([a, b, g], priority=["hub-b"])
    assert projects.for_host("docker.io") == (b, a)
    assert projects.for_host("ghcr.io") == (g,)
    assert projects.for_host("quay.io") == ()
    assert "ghcr.io" in projects.hosts() and "docker.io" in projects.hosts()


async def test_seed_accepts_entries_without_hosts() -> None:
    """hr:projects written by an older version has no ``hosts``: still seeded, no hint."""
    discovery = Discovery(
        None,  # type: ignore[arg-type]  # seed() does no I/O
        "http://harbor.invalid",
        None,  # type: ignore[arg-type]
        proxy_project="proxy",
        interval=60,
        timeout=1,
    )
    assert discovery.seed(
        [
            {"name": "dockerhub", "registry_type": "docker-hub"},
            {"name": "ghcr", "registry_type": "github-ghcr", "hosts": ["ghcr.io"]},
            {"name": "quay", "registry_type": "quay", "hosts": "quay.io"},  # not a list
        ]
    )
    projects = discovery.projects
    assert projects.names() == ["dockerhub", "ghcr", "quay"]
    assert projects.for_host("ghcr.io") == (projects.get("ghcr"),)
    assert projects.for_host("docker.io") == () and projects.for_host("quay.io") == ()


# -- discovery against the emulator -------------------------------------------------------------


@pytest.mark.integration
def test_discovery_learns_upstream_hosts(router: RunningRouter) -> None:
    assert router.app.discovery is not None
    projects = router.app.discovery.projects
    dockerhub, ghcr, quay = (projects.get(n) for n in PROXY_PROJECTS)
    assert dockerhub is not None and ghcr is not None and quay is not None
    assert dockerhub.hosts == DOCKER_HUB_HOSTS
    assert ghcr.hosts == ("ghcr.io",)
    assert quay.hosts == ("quay.io",)
    assert projects.for_host("docker.io") == (dockerhub,)  # "proxy" itself is never a project


# -- ns against the emulator ---------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("ns", "project", "repo"),
    [
        ("docker.io", "dockerhub", "library/alpine"),
        ("registry-1.docker.io", "dockerhub", "library/nginx"),
        ("ghcr.io", "ghcr", "acme/tool"),
        ("quay.io", "quay", "coreos/etcd"),
        # in ghcr and in quay: a fan-out would pick ghcr (earlier), ns says quay
        ("quay.io", "quay", "shared/app"),
    ],
)
def test_ns_asks_exactly_one_project(
    ns: str,
    project: str,
    repo: str,
    image: SeedImage,
    router: RunningRouter,
    harbor: HarborEmulator,
) -> None:
    path = f"{PREFIX}/{repo}/manifests/{image.tag}?ns={ns}"
    for attempt in range(3):  # a miss, then hits (the fast path)
        harbor.clear_log()
        headers = get_manifest(router, path, image)
        assert headers["OCI-Namespace"] == ns
        assert asked(harbor) == {p: int(p == project) for p in PROXY_PROJECTS}, attempt
        assert v2_requests(harbor) == [f"/v2/{project}/{repo}/manifests/{image.tag}"]
    assert mapped(router, f"{ns}/{repo}") == project
    assert fast_starts(router) >= 1


@pytest.mark.integration
def test_ns_routes_blobs_tags_and_referrers(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("quay", "shared/app")
    harbor.clear_log()
    for headers in get_blobs(router, f"{PREFIX}/shared/app", image, "?ns=quay.io"):
        assert headers["OCI-Namespace"] == "quay.io"
    headers, body = get_ok(router, f"{PREFIX}/shared/app/tags/list?ns=quay.io&n=5")
    assert json.loads(body) == {"name": "proxy/shared/app", "tags": [image.tag]}
    assert headers["OCI-Namespace"] == "quay.io"
    headers, _ = get_ok(router, f"{PREFIX}/shared/app/referrers/{image.digest}?ns=quay.io")
    assert headers["OCI-Namespace"] == "quay.io"
    counts = asked(harbor)
    assert counts["dockerhub"] == counts["ghcr"] == 0
    assert counts["quay"] >= len(image.blobs) + 2  # + the HEAD of the first, unmapped blob
    # ns is never forwarded; n is
    assert all("ns=" not in p for p in v2_requests(harbor))
    assert "/v2/quay/shared/app/tags/list?n=5" in v2_requests(harbor)


@pytest.mark.integration
def test_unknown_ns_falls_back_to_the_fan_out(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    harbor.clear_log()
    path = f"{PREFIX}/acme/tool/manifests/{image.tag}?ns=registry.example.org"
    headers = get_manifest(router, path, image)
    assert "OCI-Namespace" not in headers, "an ns that chose nothing is not echoed"
    assert asked(harbor) == {"dockerhub": 1, "ghcr": 1, "quay": 1}
    assert all("ns=" not in p for p in v2_requests(harbor))
    assert mapped(router, "acme/tool") == "ghcr"  # recorded as a plain name
    harbor.clear_log()
    get_manifest(router, path, image)
    assert asked(harbor) == {"dockerhub": 0, "ghcr": 1, "quay": 0}


@pytest.mark.integration
def test_ns_miss_is_one_request_and_a_404(router: RunningRouter, harbor: HarborEmulator) -> None:
    """coreos/etcd is in quay only: with ns=ghcr.io only ghcr is asked, and says 404."""
    harbor.clear_log()
    entry = get_error(router, f"{PREFIX}/coreos/etcd/manifests/v3.5?ns=ghcr.io", 404)
    assert entry["code"] == "MANIFEST_UNKNOWN"
    assert asked(harbor) == {"dockerhub": 0, "ghcr": 1, "quay": 0}


@pytest.mark.integration
@pytest.mark.parametrize(
    "query", ["ns=bad_host", "ns=", "ns=a..b", "ns=%2Fetc", "ns=a.io:99999", "ns=a.io&ns=b.io"]
)
def test_invalid_ns_is_400_and_never_forwarded(
    query: str, router: RunningRouter, harbor: HarborEmulator
) -> None:
    harbor.clear_log()
    for path in (
        f"{PREFIX}/library/alpine/manifests/3.19",
        f"{PREFIX}/library/alpine/blobs/{D256}",
        f"{PREFIX}/library/alpine/tags/list",
    ):
        assert get_error(router, f"{path}?{query}", 400)["code"] == "NAME_INVALID"
    assert v2_requests(harbor) == []


# -- host-prefixed names against the emulator ----------------------------------------------------

HOSTED = [
    pytest.param("docker.io", "dockerhub", "library/alpine", id="docker.io"),
    pytest.param("docker.io", "dockerhub", "library/nginx", id="docker.io-schema2"),
    pytest.param("ghcr.io", "ghcr", "acme/tool", id="ghcr.io"),
    pytest.param("quay.io", "quay", "coreos/etcd", id="quay.io"),
    pytest.param("quay.io", "quay", "shared/app", id="quay.io-shared"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("host", "project", "repo"), HOSTED)
def test_host_prefixed_manifest_and_blobs_ask_one_project(
    host: str,
    project: str,
    repo: str,
    image: SeedImage,
    router: RunningRouter,
    harbor: HarborEmulator,
) -> None:
    harbor.clear_log()
    for _ in range(2):
        headers = get_manifest(router, f"{PREFIX}/{host}/{repo}/manifests/{image.tag}", image)
        assert "OCI-Namespace" not in headers
    get_blobs(router, f"{PREFIX}/{host}/{repo}", image)
    assert asked(harbor) == {p: (2 + len(image.blobs)) * (p == project) for p in PROXY_PROJECTS}
    assert all(p.startswith(f"/v2/{project}/{repo}/") for p in v2_requests(harbor))
    assert mapped(router, f"{host}/{repo}") == project
    assert mapped(router, repo) is None, "the bare name is not touched"
    assert fast_starts(router) >= 1


@pytest.mark.integration
def test_host_prefixed_blob_head_before_any_manifest(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    """Harbor answers HEAD 404 for a blob it has not cached: the GET race finds it, within
    the mirroring project only."""
    image = seeded.get("ghcr", "acme/tool")
    layer = image.layers[0]
    harbor.clear_log()
    status, headers, _ = router.request("HEAD", f"{PREFIX}/ghcr.io/acme/tool/blobs/{layer}")
    assert status == 200
    assert int(headers["Content-Length"]) == image.blob_sizes[layer]
    assert asked(harbor)["dockerhub"] == asked(harbor)["quay"] == 0


@pytest.mark.integration
def test_docker_io_one_segment_name_gets_library(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("dockerhub", "library/nginx")
    harbor.clear_log()
    get_manifest(router, f"{PREFIX}/docker.io/nginx/manifests/{image.tag}", image)
    assert v2_requests(harbor) == [f"/v2/dockerhub/library/nginx/manifests/{image.tag}"]


@pytest.mark.integration
def test_host_prefixed_miss_never_fans_out(router: RunningRouter, harbor: HarborEmulator) -> None:
    """coreos/etcd is in quay: under ghcr.io/ it is unknown, and quay is never asked."""
    harbor.clear_log()
    for _ in range(2):
        entry = get_error(router, f"{PREFIX}/ghcr.io/coreos/etcd/manifests/v3.5", 404)
        assert entry["code"] == "MANIFEST_UNKNOWN"
    assert asked(harbor)["quay"] == 0 and asked(harbor)["dockerhub"] == 0
    assert asked(harbor)["ghcr"] >= 1
    status, _, body = router.request("GET", f"{PREFIX}/ghcr.io/coreos/etcd/tags/list")
    assert status in (200, 404), body[:300]
    if status == 200:
        assert json.loads(body)["tags"] == []
    assert asked(harbor)["quay"] == 0


@pytest.mark.integration
def test_unknown_host_is_404_listing_the_mirrored_hosts(
    router: RunningRouter, harbor: HarborEmulator
) -> None:
    harbor.clear_log()
    for path in (
        f"{PREFIX}/gcr.io/distroless/static/manifests/latest",
        f"{PREFIX}/registry.example.org:5000/a/blobs/{D256}",
        f"{PREFIX}/localhost/a/tags/list",
    ):
        entry = get_error(router, path, 404)
        assert entry["code"] == "NAME_UNKNOWN"
        message = str(entry["message"])
        for host in ("docker.io", "ghcr.io", "quay.io"):
            assert host in message
        assert isinstance(entry["detail"], dict)
        assert "ghcr.io" in entry["detail"]["mirrored"]
    assert v2_requests(harbor) == []


@pytest.mark.integration
@pytest.mark.parametrize(
    "path",
    [
        "/v2/proxy/bad_host.io/acme/tool/manifests/v1",
        "/v2/proxy/ghcr.io:99999/acme/tool/manifests/v1",
        "/v2/proxy/ghcr..io/acme/tool/manifests/v1",
        "/v2/proxy/ghcr.io/ACME/tool/manifests/v1",
        "/v2/proxy/ghcr.io%2Facme/tool/manifests/v1",
        f"/v2/proxy/-x.io/acme/tool/blobs/{D256}",
    ],
)
def test_invalid_host_segment_is_400_and_never_forwarded(
    path: str, router: RunningRouter, harbor: HarborEmulator
) -> None:
    harbor.clear_log()
    status, _, body = router.request("GET", path, ACCEPT_ALL)
    assert status in (400, 404), body[:300]
    assert error_of(body)["code"] in ("NAME_INVALID", "NAME_UNKNOWN")
    if "%2F" not in path:
        assert status == 400 and error_of(body)["code"] == "NAME_INVALID"
    assert v2_requests(harbor) == []


@pytest.mark.integration
def test_host_prefixed_tags_link_and_name_stay_under_the_host(
    router: RunningRouter, harbor: HarborEmulator
) -> None:
    harbor.set_fault(
        "ghcr",
        status=200,
        body={"name": "ghcr/acme/multi", "tags": ["a"]},
        headers={"Link": '</v2/ghcr/acme/multi/tags/list?last=a&n=1>; rel="next"'},
    )
    harbor.clear_log()
    headers, body = get_ok(router, f"{PREFIX}/ghcr.io/acme/multi/tags/list?n=1")
    assert json.loads(body) == {"name": "proxy/ghcr.io/acme/multi", "tags": ["a"]}
    assert headers["Link"] == '</v2/proxy/ghcr.io/acme/multi/tags/list?last=a&n=1>; rel="next"'
    assert v2_requests(harbor) == ["/v2/ghcr/acme/multi/tags/list?n=1"]


@pytest.mark.integration
def test_host_prefixed_referrers(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    harbor.clear_log()
    _, body = get_ok(
        router, f"{PREFIX}/ghcr.io/acme/tool/referrers/{image.digest}?artifactType=x.y"
    )
    assert json.loads(body)["manifests"] == []
    assert v2_requests(harbor) == [f"/v2/ghcr/acme/tool/referrers/{image.digest}?artifactType=x.y"]


@pytest.mark.integration
def test_redis_projects_keep_the_hosts(
    make_router: Callable[..., RunningRouter], redis_sentinel: RedisTopology
) -> None:
    """hr:projects carries each project's hosts, so a pod seeded from Redis knows them
    before its own discovery."""
    sentinels = ",".join(f"{h}:{p}" for h, p in redis_sentinel.sentinel_addresses)
    make_router(REDIS_SENTINELS=sentinels)
    master = redis_sentinel.master_client()
    deadline = time.monotonic() + 10
    while not master.exists("hr:projects") and time.monotonic() < deadline:
        time.sleep(0.05)
    by_name = {e["name"]: e for e in json.loads(master.get("hr:projects"))}
    assert by_name["ghcr"]["hosts"] == ["ghcr.io"]
    assert by_name["quay"]["hosts"] == ["quay.io"]
    assert by_name["dockerhub"]["hosts"] == list(DOCKER_HUB_HOSTS)
    assert by_name["dockerhub"]["registry_type"] == "docker-hub"


@pytest.mark.integration
def test_stale_hinted_mapping_refreshes_within_the_mirrors_only(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    router = make_router(CACHE_TTL="1s", STALE_WHILE_REVALIDATE="5s")
    image = seeded.get("quay", "shared/app")
    paths = [
        f"{PREFIX}/quay.io/shared/app/manifests/{image.tag}",
        f"{PREFIX}/shared/app/manifests/{image.tag}?ns=quay.io",
    ]
    for path in paths:
        get_manifest(router, path, image)
    time.sleep(1.1)  # past CACHE_TTL, well within STALE_WHILE_REVALIDATE
    harbor.clear_log()
    for path in paths:
        get_manifest(router, path, image)
    # One client request per path to quay; both hints share the key quay.io/shared/app, so
    # one background refresh (HEAD), and it asks quay only.
    deadline = time.monotonic() + 5
    while harbor.count("quay", "/manifests/") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert harbor.count("quay", "/manifests/") == 3
    assert sorted(r.method for r in harbor.requests("quay")) == ["GET", "GET", "HEAD"]
    assert harbor.count("ghcr") == harbor.count("dockerhub") == 0
    assert mapped(router, "quay.io/shared/app") == "quay"
