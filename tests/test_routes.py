"""Route parsing and validation (DESIGN §2): pure, no I/O."""

from __future__ import annotations

import pytest

from harbor_router import errors, routes

R = routes.Router("proxy")
D256 = "sha256:" + "a" * 64
D512 = "sha512:" + "0" * 128


@pytest.mark.parametrize(
    ("path", "query", "kind", "name", "reference", "kept_query"),
    [
        ("/v2/", "", routes.BASE, "", "", ""),
        ("/v2", "", routes.BASE, "", "", ""),
        ("/v2/proxy/nginx/manifests/1.25", "", routes.MANIFEST, "nginx", "1.25", ""),
        (
            "/v2/proxy/library/nginx/manifests/latest",
            "",
            routes.MANIFEST,
            "library/nginx",
            "latest",
            "",
        ),
        (f"/v2/proxy/a/b/c/manifests/{D256}", "", routes.MANIFEST, "a/b/c", D256, ""),
        (f"/v2/proxy/a/blobs/{D512}", "", routes.BLOB, "a", D512, ""),
        (
            "/v2/proxy/a-b__c.d/tags/list",
            "n=10&last=v1",
            routes.TAGS,
            "a-b__c.d",
            "",
            "n=10&last=v1",
        ),
        ("/v2/proxy/a/tags/list", "x=1&n=2", routes.TAGS, "a", "", "n=2"),
        (
            f"/v2/proxy/a/referrers/{D256}",
            "artifactType=application%2Fvnd.x",
            routes.REFERRERS,
            "a",
            D256,
            "artifactType=application%2Fvnd.x",
        ),
        ("/v2/proxy/a/manifests/b/manifests/x", "", routes.MANIFEST, "a/manifests/b", "x", ""),
        ("/v2/proxy/x/manifests/v1", "ns=docker.io", routes.MANIFEST, "x", "v1", ""),
        ("/healthz", "", routes.HEALTHZ, "", "", ""),
        ("/readyz", "", routes.READYZ, "", "", ""),
    ],
)
def test_valid_routes(
    path: str, query: str, kind: int, name: str, reference: str, kept_query: str
) -> None:
    route = R.parse("GET", path, query)
    assert (route.kind, route.name, route.reference, route.query) == (
        kind,
        name,
        reference,
        kept_query,
    )
    assert R.parse("HEAD", path, query).kind == kind


@pytest.mark.parametrize(
    ("path", "query", "error"),
    [
        ("/v2/proxy/Library/nginx/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/../etc/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/a/../b/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/a%2fb/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/%2e%2e/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/a//b/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/a-/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/_a/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/a___b/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/" + "a" * 250 + "/manifests/1", "", errors.NameInvalid),
        ("/v2/proxy/manifests/1", "", errors.NameUnknown),
        ("/v2/proxy/", "", errors.NameUnknown),
        ("/v2/proxy", "", errors.NameUnknown),
        ("/v2/proxy/a/manifests/" + "t" * 129, "", errors.TagInvalid),
        ("/v2/proxy/a/manifests/-x", "", errors.TagInvalid),
        ("/v2/proxy/a/manifests/.x", "", errors.TagInvalid),
        ("/v2/proxy/a/manifests/a+b", "", errors.TagInvalid),
        ("/v2/proxy/a/manifests/a%20b", "", errors.TagInvalid),
        ("/v2/proxy/a/manifests/", "", errors.TagInvalid),
        ("/v2/proxy/a/manifests/sha256:abc", "", errors.DigestInvalid),
        ("/v2/proxy/a/manifests/sha256:" + "A" * 64, "", errors.DigestInvalid),
        ("/v2/proxy/a/manifests/md5:" + "a" * 32, "", errors.DigestInvalid),
        ("/v2/proxy/a/blobs/sha512:" + "a" * 64, "", errors.DigestInvalid),
        ("/v2/proxy/a/blobs/latest", "", errors.DigestInvalid),
        ("/v2/proxy/a/referrers/latest", "", errors.DigestInvalid),
        ("/v2/proxy/a/tags/list", "n=abc", errors.PaginationNumberInvalid),
        ("/v2/proxy/a/tags/list", "n=-1", errors.PaginationNumberInvalid),
        ("/v2/proxy/a/tags/list", "last=a%0d%0a%zz<", errors.BadRequest),
        ("/v2/proxy/library/nginx", "", errors.NameUnknown),
        ("/v2/proxy/a/blobs/uploads/", "", errors.NameUnknown),
        ("/v2/proxy/a/tags/list/", "", errors.NameUnknown),
        ("/v2/_catalog", "", errors.NameUnknown),
        ("/v2/other/nginx/manifests/1", "", errors.NameUnknown),
        ("/", "", errors.NameUnknown),
        ("/metrics", "", errors.NameUnknown),
    ],
)
def test_invalid_routes(path: str, query: str, error: type[errors.RegistryError]) -> None:
    with pytest.raises(error) as info:
        R.parse("GET", path, query)
    assert type(info.value) is error
    assert info.value.status in (400, 404)


def test_name_length_counts_the_prefix() -> None:
    name = "a" * (255 - len("proxy/"))
    assert R.parse("GET", f"/v2/proxy/{name}/manifests/1", "").name == name
    with pytest.raises(errors.NameInvalid):
        R.parse("GET", f"/v2/proxy/{name}a/manifests/1", "")


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH", "OPTIONS", "CONNECT"])
@pytest.mark.parametrize("path", ["/v2/proxy/a/manifests/1", "/v2/proxy/a/blobs/uploads/", "/v2/"])
def test_write_methods_are_refused(method: str, path: str) -> None:
    with pytest.raises(errors.MethodNotAllowed) as info:
        R.parse(method, path, "")
    assert info.value.status == 405
    assert info.value.code == "UNSUPPORTED"
    assert (b"Allow", b"GET, HEAD") in info.value.headers


def test_other_prefix_is_configurable() -> None:
    router = routes.Router("mirror")
    assert router.parse("GET", "/v2/mirror/a/manifests/1", "").name == "a"
    with pytest.raises(errors.NameUnknown):
        router.parse("GET", "/v2/proxy/a/manifests/1", "")


def test_passthrough_routes_only_when_enabled() -> None:
    router = routes.Router("proxy", passthrough=True)
    route = router.parse("GET", "/v2/library/nginx/manifests/1.25", "x=1")
    assert (route.kind, route.name, route.query) == (
        routes.PASSTHROUGH,
        "/v2/library/nginx/manifests/1.25",
        "x=1",
    )
    assert router.parse("GET", "/v2/", "").kind == routes.BASE
    assert router.parse("GET", "/v2/proxy/a/manifests/1", "").kind == routes.MANIFEST
    with pytest.raises(errors.NameUnknown):
        router.parse("GET", "/v2/proxy", "")
    with pytest.raises(errors.NameUnknown):
        router.parse("GET", "/other", "")
    with pytest.raises(errors.MethodNotAllowed):
        router.parse("PUT", "/v2/library/nginx/manifests/1.25", "")
    with pytest.raises(errors.NameUnknown):
        routes.Router("proxy").parse("GET", "/v2/library/nginx/manifests/1.25", "")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/../api/v2.0/users",
        "/v2/library/../../api/v2.0/users",
        "/v2/./library/nginx/manifests/1",
        "/v2/library/nginx/..",
        "/v2/%2e%2e/api/v2.0/users",
        "/v2/library%2F..%2Fapi/manifests/1",
        "/v2/library/%2E./x",
        "/v2/library%5c..%5capi/x",
        "/v2/library\\..\\api/x",
    ],
)
def test_passthrough_refuses_paths_that_could_leave_v2(path: str) -> None:
    router = routes.Router("proxy", passthrough=True)
    with pytest.raises(errors.BadRequest) as info:
        router.parse("GET", path, "")
    assert info.value.status == 400


def test_passthrough_keeps_dots_inside_segments() -> None:
    router = routes.Router("proxy", passthrough=True)
    path = "/v2/library/my..odd.name/manifests/v1.2..3"
    assert router.parse("GET", path, "").name == path


# Known targets (Router._known, a _cache.Memo): a target's remembered route is the one a fresh
# parse gives, and what is not a valid pull is never remembered.
_FIELDS = ("kind", "name", "key", "upstream", "reference", "query", "host", "ns", "prefixed")
_TARGETS = [
    ("/v2/proxy/library/nginx/manifests/1.25", ""),
    (f"/v2/proxy/a/b/c/blobs/{D256}", ""),
    ("/v2/proxy/a/tags/list", "x=1&n=2"),
    (f"/v2/proxy/a/referrers/{D256}", "artifactType=application%2Fvnd.x"),
    ("/v2/proxy/x/manifests/v1", "ns=docker.io"),
    ("/v2/proxy/x/manifests/v1", "ns=ghcr.io"),
    ("/v2/proxy/GHCR.io/acme/tool/manifests/v1", ""),
    ("/v2/proxy/docker.io/nginx/manifests/v1", "n=1"),
    ("/v2/", ""),
    ("/healthz", ""),
]


def _fields(route: routes.Route) -> tuple[object, ...]:
    return (type(route).__name__, *(getattr(route, field) for field in _FIELDS))


@pytest.mark.parametrize(("path", "query"), _TARGETS)
def test_a_known_target_gives_the_route_a_fresh_parse_does(path: str, query: str) -> None:
    router = routes.Router("proxy")
    first = router.parse("GET", path, query)
    fresh = routes.Router("proxy").parse("HEAD", "".join(list(path)), query)
    again = router.parse("HEAD", "".join(list(path)), "".join(list(query)))  # equal, not same
    assert again is first and _fields(first) == _fields(fresh)
    router._known.clear()
    assert _fields(router.parse("GET", path, query)) == _fields(first)


def test_targets_differing_in_one_character_have_their_own_routes() -> None:
    router = routes.Router("proxy")
    names = [f"/v2/proxy/library/nginx/manifests/1.2{i}" for i in range(10)]
    names += ["/v2/proxy/library/nginx/manifests/1.25", "/v2/proxy/library/nginx/manifests/1.25"]
    for _ in range(2):
        for path in names:
            assert router.parse("GET", path, "").reference == path.rsplit("/", 1)[1]
        for query in ("n=1", "n=2", ""):
            assert router.parse("GET", "/v2/proxy/a/tags/list", query).query == query


@pytest.mark.parametrize(
    ("method", "path", "query", "error"),
    [
        ("GET", "/v2/proxy/Library/nginx/manifests/1", "", errors.NameInvalid),
        ("GET", "/v2/proxy/a/manifests/sha256:abc", "", errors.DigestInvalid),
        ("GET", "/v2/proxy/a/tags/list", "n=abc", errors.PaginationNumberInvalid),
        ("GET", "/v2/proxy/x/manifests/v1", "ns=Not_A_Host", errors.NameInvalid),
        ("GET", "/metrics", "", errors.NameUnknown),
        ("PUT", "/v2/proxy/a/manifests/1", "", errors.MethodNotAllowed),
        ("get", "/v2/proxy/a/manifests/1", "", errors.MethodNotAllowed),
    ],
)
def test_an_invalid_target_is_refused_every_time_and_never_known(
    method: str, path: str, query: str, error: type[errors.RegistryError]
) -> None:
    router = routes.Router("proxy")
    router.parse("GET", "/v2/proxy/a/manifests/1", "")  # a valid one, known
    for _ in range(3):
        with pytest.raises(error):
            router.parse(method, path, query)
    assert len(router._known) == 1


def test_known_targets_stay_bounded_and_long_ones_are_not_kept() -> None:
    router = routes.Router("proxy")
    path, padding = "/v2/proxy/a/manifests/1", "pad=" + "x" * routes.KNOWN_TARGET_BYTES
    first = router.parse("GET", path, padding)  # a valid target, too long to keep
    assert len(router._known) == 0 and router.parse("GET", path, padding) is not first
    for i in range(routes.KNOWN_TARGETS + 10):
        assert router.parse("GET", f"/v2/proxy/a/manifests/v{i}", "").reference == f"v{i}"
        assert len(router._known) <= routes.KNOWN_TARGETS
    assert router._known.max_entries == routes.KNOWN_TARGETS
    # emptied when the full memo got a new target (10 since, or fewer: a memo may keep less)
    assert 1 <= len(router._known) <= 10
