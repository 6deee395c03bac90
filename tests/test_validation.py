"""Bad input and failing upstreams: the registry errors of DESIGN §2 and §3.2.

Every malformed request is judged by the router alone: it answers the registry error body and
Harbor never sees a ``/v2/`` request for it. Upstream failures turn into 404 only when every
project said a definite 404; timeouts and unreachable Harbors are 502/503, quickly.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable

import pytest
from conftest import Seeded
from harbor_emulator import HarborEmulator
from router_runner import RunningRouter
from support_tools import free_port

pytestmark = pytest.mark.integration

PREFIX = "/v2/proxy"
PROXY_PROJECTS = ("dockerhub", "ghcr", "quay")
GOOD_SHA256 = "sha256:" + "a" * 64
GOOD_SHA512 = "sha512:" + "b" * 128
BAD_DIGESTS = {
    "short": "sha256:abc",
    "uppercase-hex": "sha256:" + "A" * 64,
    "md5": "md5:" + "c" * 32,
    "sha512-with-64-hex": "sha512:" + "d" * 64,
    "no-algorithm": "a" * 64,
    "sha256-with-65-hex": "sha256:" + "e" * 65,
}
LONG_NAME = "/".join(["a" * 50] * 5) + "/abcdef"  # 256 characters


def registry_error(body: bytes, headers: http.client.HTTPMessage) -> dict[str, object]:
    """The first entry of a registry error body, after checking its shape."""
    assert headers["Content-Type"].split(";")[0].strip() == "application/json"
    data = json.loads(body)
    assert isinstance(data, dict)
    assert isinstance(data.get("errors"), list)
    assert data["errors"]
    entry = data["errors"][0]
    assert isinstance(entry.get("code"), str)
    assert isinstance(entry.get("message"), str)
    assert entry["message"]
    return entry


def v2_count(harbor: HarborEmulator) -> int:
    return harbor.count(path_contains="/v2/")


# -- request targets the router refuses ----------------------------------------------------

BAD_TARGETS = [
    # names
    ("uppercase", f"{PREFIX}/Library/alpine/manifests/1", 400, "NAME_INVALID"),
    ("uppercase-blob", f"{PREFIX}/library/Alpine/blobs/{GOOD_SHA256}", 400, "NAME_INVALID"),
    ("uppercase-tags", f"{PREFIX}/LIBRARY/alpine/tags/list", 400, "NAME_INVALID"),
    ("dotdot", f"{PREFIX}/library/../alpine/manifests/1", 400, "NAME_INVALID"),
    ("dotdot-escape", f"{PREFIX}/../dockerhub/library/alpine/manifests/1", 400, "NAME_INVALID"),
    ("pct-dotdot", f"{PREFIX}/library/%2e%2e/alpine/manifests/1", 400, "NAME_INVALID"),
    ("pct-slash", f"{PREFIX}/library%2Falpine/manifests/1", 400, "NAME_INVALID"),
    ("pct-letter", f"{PREFIX}/libr%61ry/alpine/manifests/1", 400, "NAME_INVALID"),
    ("empty-segment", f"{PREFIX}/a//b/manifests/1", 400, "NAME_INVALID"),
    ("leading-slash", f"{PREFIX}//a/manifests/1", 400, "NAME_INVALID"),
    ("trailing-dot", f"{PREFIX}/a./manifests/1", 400, "NAME_INVALID"),
    ("double-dot-component", f"{PREFIX}/a..b/manifests/1", 400, "NAME_INVALID"),
    ("too-long-name", f"{PREFIX}/{LONG_NAME}/manifests/1", 400, "NAME_INVALID"),
    ("too-long-name-blob", f"{PREFIX}/{LONG_NAME}/blobs/{GOOD_SHA256}", 400, "NAME_INVALID"),
    ("too-long-name-tags", f"{PREFIX}/{LONG_NAME}/tags/list", 400, "NAME_INVALID"),
    # tags
    ("tag-129", f"{PREFIX}/library/alpine/manifests/{'t' * 129}", 400, "TAG_INVALID"),
    ("tag-leading-dash", f"{PREFIX}/library/alpine/manifests/-x", 400, "TAG_INVALID"),
    ("tag-leading-dot", f"{PREFIX}/library/alpine/manifests/.x", 400, "TAG_INVALID"),
    ("tag-plus", f"{PREFIX}/library/alpine/manifests/a+b", 400, "TAG_INVALID"),
    ("tag-pct", f"{PREFIX}/library/alpine/manifests/a%20b", 400, "TAG_INVALID"),
    # tags/list pagination
    ("n-letters", f"{PREFIX}/library/alpine/tags/list?n=abc", 400, "PAGINATION_NUMBER_INVALID"),
    ("n-negative", f"{PREFIX}/library/alpine/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"),
    ("n-fraction", f"{PREFIX}/library/alpine/tags/list?n=1.5", 400, "PAGINATION_NUMBER_INVALID"),
    # unknown shapes under the prefix
    ("repo-only", f"{PREFIX}/library/alpine", 404, "NAME_UNKNOWN"),
    ("unknown-section", f"{PREFIX}/library/alpine/foo/bar", 404, "NAME_UNKNOWN"),
    ("tags-without-list", f"{PREFIX}/library/alpine/tags", 404, "NAME_UNKNOWN"),
    ("tags-list-extra", f"{PREFIX}/library/alpine/tags/list/x", 404, "NAME_UNKNOWN"),
    # other /v2/ paths: never passed through to Harbor
    ("catalog", "/v2/_catalog", 404, "NAME_UNKNOWN"),
    ("direct-project", "/v2/dockerhub/library/alpine/manifests/3.19", 404, "NAME_UNKNOWN"),
    ("other-prefix", "/v2/proxyx/library/alpine/manifests/1", 404, "NAME_UNKNOWN"),
    ("token", "/v2/token", 404, "NAME_UNKNOWN"),
]
BAD_TARGETS += [
    (f"digest-{kind}-{label}", f"{PREFIX}/library/alpine/{kind}/{digest}", 400, "DIGEST_INVALID")
    for kind in ("manifests", "blobs", "referrers")
    for label, digest in BAD_DIGESTS.items()
    # a manifest reference without ":" is a tag, judged by the tag grammar
    if not (kind == "manifests" and ":" not in digest)
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("path", "status", "code"), [pytest.param(*case[1:], id=case[0]) for case in BAD_TARGETS]
)
def test_bad_target_is_refused_without_asking_harbor(
    method: str,
    path: str,
    status: int,
    code: str,
    router: RunningRouter,
    harbor: HarborEmulator,
) -> None:
    harbor.clear_log()
    got, headers, body = router.request(method, path)
    assert got == status, body
    if method == "HEAD":
        assert body == b""
        assert headers["Content-Type"].startswith("application/json")
    else:
        assert registry_error(body, headers)["code"] == code
    assert v2_count(harbor) == 0, [r.path for r in harbor.requests()]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"{PREFIX}/library/alpine/manifests/{'t' * 128}", id="tag-128"),
        pytest.param(f"{PREFIX}/library/alpine/manifests/_x.y-Z", id="tag-underscore-first"),
        pytest.param(f"{PREFIX}/a__b/c-d/e.f/manifests/1", id="name-separators"),
        pytest.param(f"{PREFIX}/library/alpine/manifests/{GOOD_SHA512}", id="sha512"),
        pytest.param(f"{PREFIX}/library/alpine/referrers/{GOOD_SHA256}", id="referrers"),
    ],
)
def test_valid_edge_cases_reach_harbor(
    path: str, router: RunningRouter, harbor: HarborEmulator
) -> None:
    """The grammar's edges are accepted: the router asks Harbor and reports a plain miss."""
    harbor.clear_log()
    status, headers, body = router.request("GET", path)
    assert status == 404, body
    assert registry_error(body, headers)["code"] == "MANIFEST_UNKNOWN"
    for project in PROXY_PROJECTS:
        assert harbor.count(project) >= 1


def test_name_at_the_length_limit_reaches_harbor(
    router: RunningRouter, harbor: HarborEmulator
) -> None:
    """``proxy/`` + 249 characters is 255: valid for the router, so Harbor is asked (whatever
    the registry behind it thinks of ``{project}/`` + that name)."""
    name = "a/" + "b" * 247
    harbor.clear_log()
    status, headers, body = router.request("GET", f"{PREFIX}/{name}/manifests/1")
    assert status != 400, body
    registry_error(body, headers)
    for project in PROXY_PROJECTS:
        assert harbor.count(project, f"/{name}/manifests/1") == 1


WRITE_CASES = [
    ("PUT", f"{PREFIX}/library/alpine/manifests/1"),
    ("DELETE", f"{PREFIX}/library/alpine/manifests/{GOOD_SHA256}"),
    ("POST", f"{PREFIX}/library/alpine/blobs/uploads/"),
    ("PATCH", f"{PREFIX}/library/alpine/blobs/uploads/0c6b2c2b"),
    ("PUT", f"{PREFIX}/library/alpine/blobs/uploads/0c6b2c2b?digest={GOOD_SHA256}"),
    ("DELETE", f"{PREFIX}/library/alpine/blobs/{GOOD_SHA256}"),
    ("OPTIONS", f"{PREFIX}/library/alpine/tags/list"),
]


@pytest.mark.parametrize(
    ("method", "path"), [pytest.param(m, p, id=f"{m}-{i}") for i, (m, p) in enumerate(WRITE_CASES)]
)
def test_write_methods_are_unsupported(
    method: str, path: str, router: RunningRouter, harbor: HarborEmulator
) -> None:
    harbor.clear_log()
    status, headers, body = router.request(method, path, {"Content-Length": "0"})
    assert status == 405, body
    assert headers["Allow"] == "GET, HEAD"
    assert registry_error(body, headers)["code"] == "UNSUPPORTED"
    assert v2_count(harbor) == 0


def test_push_with_a_body_is_unsupported(router: RunningRouter, harbor: HarborEmulator) -> None:
    """What ``docker push`` does first after the blobs: PUT a manifest with a body. Pull-only
    means 405 with ``Allow`` (DESIGN §2), not a generic 400."""
    manifest = b'{"schemaVersion":2}'
    harbor.clear_log()
    response = raw_exchange(
        router,
        b"PUT /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(manifest), manifest),
    )
    status, headers, body = parse_one(response.data)
    assert status == 405, body
    assert headers.get("allow") == "GET, HEAD"
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert v2_count(harbor) == 0


# -- malformed HTTP on a raw socket --------------------------------------------------------


class RawResponse:
    def __init__(self, data: bytes, closed: bool) -> None:
        self.data = data
        self.closed = closed


def raw_exchange(router: RunningRouter, data: bytes, timeout: float = 3.0) -> RawResponse:
    """Send ``data``; read until the router closes (closed=True) or ``timeout`` passes."""
    chunks = []
    closed = False
    with socket.create_connection(("127.0.0.1", router.port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
    return RawResponse(b"".join(chunks), closed)


def parse_one(data: bytes, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Status, lowercased headers and Content-Length body of the first response in ``data``
    (no body for an answer to HEAD)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    assert len(rest) >= length, "truncated body"
    return int(status), headers, rest[:length]


_GET = b"GET /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"

MALFORMED = [
    pytest.param(
        b"GET /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        400,
        id="get-with-body",
    ),
    pytest.param(
        b"HEAD /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        400,
        id="head-with-body",
    ),
    pytest.param(
        b"GET /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
        id="get-chunked-body",
    ),
    pytest.param(
        b"GET /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        id="cl-and-te",
    ),
    pytest.param(
        b"GET /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
        id="te-and-cl",
    ),
    pytest.param(
        b"GET /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        b"X-Big: " + b"b" * (17 * 1024) + b"\r\n\r\n",
        431,
        id="huge-header",
    ),
    pytest.param(
        b"GET /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: %b\r\n" % (i, b"v" * 100) for i in range(200))
        + b"\r\n",
        431,
        id="many-headers",
    ),
    pytest.param(
        b"GET /v2/proxy/" + b"a/" * 9000 + b"manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        id="huge-request-line",
    ),
    pytest.param(
        b"GET /v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        + b"\r\n",
        431,
        id="101-small-headers",
    ),
    pytest.param(
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), 400, id="tls"
    ),
    pytest.param(b"\x00\xff\xfe garbage \r\n\r\n", 400, id="garbage"),
    pytest.param(b"GET\r\n\r\n", 400, id="no-target"),
    pytest.param(b"GET / HTTP/9.9\r\n\r\n", 505, id="bad-version"),
    # strict HTTP/1.1 (RFC 9112): each is refused and the connection closed
    pytest.param(_GET + b"Content-Length: 0\r\nContent-Length: 0\r\n\r\n", 400, id="dup-cl"),
    pytest.param(
        _GET + b"Content-Length: 0\r\nContent-Length: 5\r\n\r\nhello", 400, id="dup-cl-differ"
    ),
    pytest.param(_GET + b"Content-Length: 0, 0\r\n\r\n", 400, id="cl-list"),
    pytest.param(_GET + b"Content-Length: -1\r\n\r\n", 400, id="cl-negative"),
    pytest.param(_GET + b"Content-Length: +0\r\n\r\n", 400, id="cl-plus"),
    pytest.param(_GET + b"Content-Length: zero\r\n\r\n", 400, id="cl-letters"),
    pytest.param(_GET + b"X-A: a\r\n b\r\n\r\n", 400, id="obs-fold"),
    pytest.param(_GET + b"X-A: a\r\n\tb\r\n\r\n", 400, id="obs-fold-tab"),
    pytest.param(_GET + b"X-A: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(_GET + b"X-A: a\x01b\r\n\r\n", 400, id="ctl-in-value"),
    pytest.param(_GET + b"X-A: a\x7fb\r\n\r\n", 400, id="del-in-value"),
    pytest.param(_GET + b"X-A: a\rX-B: b\r\n\r\n", 400, id="bare-cr"),
    pytest.param(_GET + b"X A: b\r\n\r\n", 400, id="space-in-name"),
    pytest.param(_GET + b"X-A : b\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(
        b"GET /v2/proxy/library/alpine/manifests/1 HTTP/1.1\nHost: x\n\n", 400, id="bare-lf"
    ),
    pytest.param(_GET + b"Transfer-Encoding: gzip\r\n\r\n", 400, id="te-not-chunked"),
    pytest.param(
        b"GET http://evil.example/v2/proxy/library/alpine/manifests/1 HTTP/1.1\r\n"
        b"Host: evil.example\r\n\r\n",
        400,
        id="absolute-form",
    ),
    pytest.param(
        b"GET http://127.0.0.1/v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, id="absolute-v2"
    ),
    pytest.param(
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        400,
        id="connect-authority-form",
    ),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="asterisk-form"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, id="http2-preface"),
    pytest.param(b"GET /v2/ HTTP/2.0\r\nHost: x\r\n\r\n", 505, id="http-2.0"),
    pytest.param(b"GET /v2/ HTTP/1.2\r\nHost: x\r\n\r\n", 505, id="http-1.2"),
    pytest.param(b"GET /v2/ HTTP/3.0\r\nHost: x\r\n\r\n", 505, id="http-3.0"),
    pytest.param(b"GET /v2/\r\n\r\n", 505, id="http-0.9"),
]


@pytest.mark.parametrize(("data", "status"), MALFORMED)
def test_malformed_http_is_refused_and_closed(
    data: bytes, status: int, router: RunningRouter, harbor: HarborEmulator
) -> None:
    harbor.clear_log()
    head_only = data.startswith(b"HEAD ")
    response = raw_exchange(router, data)
    got, headers, body = parse_one(response.data, head_only=head_only)
    assert got == status, response.data[:300]
    assert headers.get("content-type", "").startswith("application/json")
    if head_only:
        assert response.data.endswith(b"\r\n\r\n"), "no body after a HEAD response"
    else:
        assert json.loads(body)["errors"][0]["code"]
    assert response.closed, "the router must close a connection it cannot trust"
    assert response.data.count(b"HTTP/1.") == 1, "exactly one response"
    assert v2_count(harbor) == 0


def test_smuggled_request_after_a_body_is_never_answered(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    """Bytes after a refused body are not parsed as a second request."""
    image = seeded.get("quay", "coreos/etcd")
    inner = f"GET /v2/proxy/{image.repo}/manifests/{image.tag} HTTP/1.1\r\nHost: x\r\n\r\n"
    smuggle = (
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n%b" % (len(inner) + 5, inner.encode())
    )
    harbor.clear_log()
    response = raw_exchange(router, smuggle)
    status, _, _ = parse_one(response.data)
    assert status == 400
    assert response.closed
    assert response.data.count(b"HTTP/1.1 ") == 1
    assert v2_count(harbor) == 0


def test_expect_100_continue_without_a_body_is_answered_normally(
    router: RunningRouter, harbor: HarborEmulator
) -> None:
    with socket.create_connection(("127.0.0.1", router.port), timeout=3) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    assert b"100 Continue" not in data


@pytest.mark.parametrize(
    "path",
    ["/v2/../api/v2.0/users", "/v2/library/../../api/v2.0/users", "/v2/%2e%2e/api/v2.0/users"],
)
def test_passthrough_never_forwards_a_path_that_leaves_v2(
    path: str, make_router: Callable[..., RunningRouter], harbor: HarborEmulator
) -> None:
    router = make_router(PASSTHROUGH_UNMATCHED="true")
    harbor.clear_log()
    status, headers, body = router.request("GET", path, {"Authorization": "Basic eDp5"})
    assert status == 400, body
    assert registry_error(body, headers)["code"] == "UNSUPPORTED"
    assert harbor.count(path_contains="users") == 0


# -- what the client gets when Harbor does not have it or does not answer -------------------


def test_unknown_image_is_manifest_unknown_after_asking_everyone(
    router: RunningRouter, harbor: HarborEmulator
) -> None:
    harbor.clear_log()
    status, headers, body = router.request(
        "GET", f"{PREFIX}/nobody/has-this/manifests/1.0", {"Accept": "application/json"}
    )
    assert status == 404, body
    assert registry_error(body, headers)["code"] == "MANIFEST_UNKNOWN"
    for project in PROXY_PROJECTS:
        assert harbor.requests(project), f"{project} was not asked"
        assert all("/nobody/has-this/manifests/1.0" in r.path for r in harbor.requests(project))
    assert harbor.count("proxy") == 0


def test_unknown_blob_is_blob_unknown(router: RunningRouter, harbor: HarborEmulator) -> None:
    harbor.clear_log()
    status, headers, body = router.request("GET", f"{PREFIX}/nobody/has-this/blobs/{GOOD_SHA256}")
    assert status == 404, body
    assert registry_error(body, headers)["code"] == "BLOB_UNKNOWN"
    for project in PROXY_PROJECTS:
        assert harbor.count(project, f"/blobs/{GOOD_SHA256}") >= 1


def test_unknown_repository_tags_is_an_empty_list(
    router: RunningRouter, harbor: HarborEmulator
) -> None:
    """Proxy projects answer 200 ``"tags": []`` for unknown repositories: all empty → 200 empty
    under the client's name (DESIGN §3.5), after asking every project."""
    harbor.clear_log()
    status, _, body = router.request("GET", f"{PREFIX}/nobody/has-this/tags/list")
    assert status == 200, body
    assert json.loads(body) == {"name": "proxy/nobody/has-this", "tags": []}
    for project in PROXY_PROJECTS:
        assert harbor.count(project, "/tags/list") == 1


@pytest.mark.parametrize("mapped", [False, True], ids=["unmapped", "mapped"])
def test_unreachable_harbor_is_a_quick_gateway_error(
    mapped: bool,
    make_router: Callable[..., RunningRouter],
    harbor: HarborEmulator,
    seeded: Seeded,
) -> None:
    router = make_router(RESOLVER_TIMEOUT="2s")
    image = seeded.get("ghcr", "acme/tool")
    path = f"{PREFIX}/{image.repo}/manifests/{image.tag}"
    accept = {"Accept": image.media_type}
    if mapped:
        status, _, _ = router.request("GET", path, accept)
        assert status == 200
        assert router.app.mapping is not None
        assert router.app.mapping.get(image.repo) == "ghcr"
    harbor.stop_listening()

    started = time.monotonic()
    status, headers, body = router.request("GET", path, accept, timeout=10)
    elapsed = time.monotonic() - started

    assert status in (502, 503), body
    entry = registry_error(body, headers)
    assert entry["code"] != "MANIFEST_UNKNOWN"
    assert elapsed < 5.0, f"took {elapsed:.1f}s with RESOLVER_TIMEOUT=2s"

    # Not negative-cached: once Harbor is back, the same request succeeds.
    harbor.start_listening()
    status, headers, body = router.request("GET", path, accept)
    assert status == 200, body
    assert headers["Docker-Content-Digest"] == image.digest


def test_one_project_timing_out_is_never_a_404(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """quay holds coreos/etcd but is slow; the others say 404: 502 naming quay, not 404."""
    router = make_router(RESOLVER_TIMEOUT="1s")
    image = seeded.get("quay", "coreos/etcd")
    path = f"{PREFIX}/{image.repo}/manifests/{image.tag}"
    accept = {"Accept": image.media_type}
    harbor.set_fault("quay", delay=5)

    started = time.monotonic()
    status, headers, body = router.request("GET", path, accept, timeout=10)
    elapsed = time.monotonic() - started

    assert status == 502, body
    entry = registry_error(body, headers)
    assert "quay" in json.dumps(entry), entry
    assert elapsed < 4.0, f"took {elapsed:.1f}s with RESOLVER_TIMEOUT=1s"
    for project in ("dockerhub", "ghcr"):
        assert harbor.count(project, "/manifests/") == 1

    # Neither a negative entry nor a mapping was written: the next request finds it in quay.
    harbor.clear_faults()
    status, headers, body = router.request("GET", path, accept)
    assert status == 200, body
    assert headers["Docker-Content-Digest"] == image.digest


def test_all_projects_rate_limited_is_429(router: RunningRouter, harbor: HarborEmulator) -> None:
    for project in PROXY_PROJECTS:
        harbor.set_fault(project, status=429)
    status, headers, body = router.request("GET", f"{PREFIX}/library/alpine/manifests/3.19")
    assert status == 429, body
    assert registry_error(body, headers)["code"] == "TOOMANYREQUESTS"
    assert headers["Retry-After"]
    assert int(headers["Retry-After"]) >= 0
    for project in PROXY_PROJECTS:
        assert harbor.count(project, "/manifests/") == 1


def test_some_projects_rate_limited_others_404_is_not_a_404(
    router: RunningRouter, harbor: HarborEmulator
) -> None:
    """Only an all-404 outcome is a 404 (DESIGN §3.2)."""
    harbor.set_fault("ghcr", status=429)
    status, headers, body = router.request("GET", f"{PREFIX}/nobody/has-this/manifests/1")
    assert status != 404, body
    assert status in (429, 502, 503)
    registry_error(body, headers)


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_reports_three_projects(path: str, router: RunningRouter) -> None:
    status, headers, body = router.request("GET", path)
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    data = json.loads(body)
    assert isinstance(data, dict)
    # The project count, whatever its key: 3 proxy-cache projects ("proxy" is excluded).
    assert 3 in [v for v in data.values() if isinstance(v, int) and not isinstance(v, bool)]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_without_projects_is_503(
    path: str, make_router: Callable[..., RunningRouter]
) -> None:
    router = make_router(wait_ready=False, HARBOR_URL=f"http://127.0.0.1:{free_port()}")
    status, headers, body = router.request("GET", path)
    assert status == 503, body
    assert headers["Content-Type"].startswith("application/json")
    assert router.app.discovery is not None
    assert not router.app.discovery.projects


def test_no_projects_known_is_not_a_404(make_router: Callable[..., RunningRouter]) -> None:
    router = make_router(
        wait_ready=False, HARBOR_URL=f"http://127.0.0.1:{free_port()}", RESOLVER_TIMEOUT="1s"
    )
    status, headers, body = router.request("GET", f"{PREFIX}/library/alpine/manifests/3.19")
    assert status in (502, 503), body
    registry_error(body, headers)
