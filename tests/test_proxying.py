"""HTTP behaviour through the router: connections, framing, forwarded headers (DESIGN §2, §3).

The emulator records every request it gets, so each test checks both sides: what the client
received, and what Harbor was sent (which project, which headers).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from collections.abc import Callable, Sequence

import pytest
from conftest import Seeded, SeedImage
from harbor_emulator import HarborEmulator
from router_runner import RunningRouter

pytestmark = pytest.mark.integration

PROXY_PROJECTS = ("dockerhub", "ghcr", "quay")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT_ALL = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_path(image: SeedImage, reference: str | None = None) -> str:
    return f"/v2/proxy/{image.repo}/manifests/{reference or image.tag}"


def blob_path(image: SeedImage, digest: str) -> str:
    return f"/v2/proxy/{image.repo}/blobs/{digest}"


class Response:
    def __init__(
        self, version: str, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self.version = version
        self.status = status
        self.headers = headers
        self.body = body

    def get(self, name: str) -> str | None:
        values = self.getall(name)
        return values[0] if values else None

    def getall(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class RawClient:
    """A raw socket to the router that parses responses one at a time, in order."""

    def __init__(self, router: RunningRouter, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", router.port), timeout=timeout)
        self.buf = b""
        self.deadline_s = timeout

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise AssertionError(f"connection closed with {n - len(self.buf)} bytes missing")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise AssertionError("connection closed in the middle of a line")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_response(self, *, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise AssertionError(f"connection closed before a response head: {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        response = Response(version, int(status), headers, b"")
        if head_only or response.status in (204, 304) or 100 <= response.status < 200:
            return response
        length = response.get("Content-Length")
        if (response.get("Transfer-Encoding") or "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers
                        pass
                    break
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            response.body = body
        elif length is not None:
            response.body = self._take(int(length))
        else:  # delimited by close
            while self._fill():
                pass
            response.body, self.buf = self.buf, b""
        return response

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the router closes the connection (nothing more arrives before EOF)."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True


def request_bytes(
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def recorded(harbor: HarborEmulator, path_contains: str) -> list[dict[str, str]]:
    return [r.headers for r in harbor.requests() if path_contains in r.path]


def fetch_blob(router: RunningRouter, image: SeedImage, digest: str) -> bytes:
    status, _, body = router.request("GET", blob_path(image, digest))
    assert status == 200, body[:300]
    assert sha256(body) == digest
    return body


# -- connections ----------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=15)
    try:
        local = None
        targets = [
            ("GET", manifest_path(image), image.digest),
            ("HEAD", manifest_path(image), image.digest),
            ("GET", manifest_path(image, image.digest), image.digest),
            *[("GET", blob_path(image, d), d) for d in image.blobs],
            ("GET", f"/v2/proxy/{image.repo}/tags/list", None),
            ("GET", "/v2/", None),
            ("GET", "/v2/proxy/Bad/manifests/1", None),  # an error keeps the connection too
            ("GET", manifest_path(image), image.digest),
        ]
        for method, path, digest in targets:
            conn.request(method, path, headers={"Accept": image.media_type})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.getheader("Connection", "").lower() != "close", path
            assert not resp.will_close, path
            if path.endswith("/Bad/manifests/1"):
                assert resp.status == 400
            else:
                assert resp.status == 200, (path, body[:200])
            if digest is not None and method == "GET":
                assert sha256(body) == digest
            assert conn.sock is not None
            if local is None:
                local = conn.sock.getsockname()
            assert conn.sock.getsockname() == local, "http.client had to reconnect"
    finally:
        conn.close()
    assert harbor.count("ghcr") >= 4


def test_pipelined_requests_are_answered_in_order(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    alpine = seeded.get("dockerhub", "library/alpine")
    tool = seeded.get("ghcr", "acme/tool")
    etcd = seeded.get("quay", "coreos/etcd")
    nginx = seeded.get("dockerhub", "library/nginx")
    wanted = [
        (manifest_path(alpine), alpine.digest),
        (blob_path(nginx, nginx.layers[0]), nginx.layers[0]),  # 200 KiB, before its manifest
        (manifest_path(tool), tool.digest),
        (blob_path(alpine, alpine.config), alpine.config),
        (manifest_path(etcd), etcd.digest),
        (blob_path(tool, tool.layers[0]), tool.layers[0]),
    ]
    data = b"".join(
        request_bytes("GET", path, [("Accept", ACCEPT_ALL)]) for path, _ in wanted[:-1]
    ) + request_bytes("GET", wanted[-1][0], [("Connection", "close")])

    with RawClient(router) as client:
        client.send(data)
        for path, digest in wanted:
            response = client.read_response()
            assert response.status == 200, (path, response.body[:200])
            assert sha256(response.body) == digest, f"out of order or corrupt: {path}"
            assert response.get("Docker-Content-Digest") == digest
        assert client.closed_by_peer()
        assert client.buf == b"", "nothing after the last response"


@pytest.mark.parametrize("mapped", [False, True], ids=["miss", "hit"])
def test_head_manifest_has_headers_and_no_body(
    mapped: bool, router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("quay", "coreos/etcd")
    if mapped:
        status, _, _ = router.request("GET", manifest_path(image), {"Accept": image.media_type})
        assert status == 200
    harbor.clear_log()
    with RawClient(router) as client:
        client.send(request_bytes("HEAD", manifest_path(image), [("Accept", image.media_type)]))
        head = client.read_response(head_only=True)
        assert head.status == 200
        assert head.get("Content-Length") == str(len(image.manifest))
        assert head.get("Docker-Content-Digest") == image.digest
        assert (head.get("Content-Type") or "").startswith(image.media_type)
        # Harbor was asked with HEAD, never GET (DESIGN §2: HEAD stays HEAD).
        methods = {r.method for r in harbor.requests() if "/manifests/" in r.path}
        assert methods == {"HEAD"}

        # Any body bytes after the HEAD response would corrupt the next response.
        client.send(request_bytes("GET", manifest_path(image), [("Accept", image.media_type)]))
        got = client.read_response()
        assert got.status == 200
        assert got.body == image.manifest


def test_range_on_a_mapped_blob_is_partial_content(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("dockerhub", "library/nginx")
    layer = image.layers[0]
    status, _, _ = router.request("GET", manifest_path(image), {"Accept": image.media_type})
    assert status == 200
    full = fetch_blob(router, image, layer)
    harbor.clear_log()

    status, headers, body = router.request("GET", blob_path(image, layer), {"Range": "bytes=0-9"})

    assert status == 206, body[:200]
    assert body == full[:10]
    assert headers["Content-Length"] == "10"
    assert headers["Content-Range"] == f"bytes 0-9/{len(full)}"
    sent = recorded(harbor, f"/blobs/{layer}")
    assert [h.get("range") for h in sent] == ["bytes=0-9"]
    assert [r.project for r in harbor.requests()] == ["dockerhub"]

    status, headers, body = router.request(
        "GET", blob_path(image, layer), {"Range": f"bytes={len(full) - 5}-"}
    )
    assert status == 206
    assert body == full[-5:]


def test_conditional_request_with_etag_is_not_modified(
    router: RunningRouter, seeded: Seeded
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    status, headers, _ = router.request("GET", manifest_path(image), {"Accept": image.media_type})
    assert status == 200
    etag = headers["ETag"]
    status, headers, body = router.request(
        "GET", manifest_path(image), {"Accept": image.media_type, "If-None-Match": etag}
    )
    assert status == 304
    assert body == b""


# -- forwarded headers ----------------------------------------------------------------------


@pytest.mark.parametrize("mapped", [False, True], ids=["miss", "hit"])
def test_request_headers_forwarded_to_harbor(
    mapped: bool, router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    """Every Accept value, User-Agent and an appended X-Forwarded-For reach Harbor; the
    client's Authorization and other headers do not: Harbor sees the robot account."""
    image = seeded.get("dockerhub", "library/nginx")  # Docker schema2: needs the right Accept
    if mapped:
        status, _, _ = router.request("GET", manifest_path(image), {"Accept": image.media_type})
        assert status == 200
    harbor.clear_log()
    headers = [
        ("Accept", OCI_MANIFEST),
        ("Accept", f"{DOCKER_MANIFEST}, application/vnd.oci.image.index.v1+json"),
        ("User-Agent", "skopeo-test/1.0"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Authorization", "Basic Y2xpZW50OnNlY3JldA=="),  # client:secret
        ("Cookie", "session=do-not-forward"),
        ("X-Custom", "do-not-forward"),
    ]
    with RawClient(router) as client:
        client.send(request_bytes("GET", manifest_path(image), headers))
        response = client.read_response()
    assert response.status == 200, response.body[:300]
    assert response.body == image.manifest, "schema2 manifest unchanged (Accept was forwarded)"
    assert response.get("Docker-Content-Digest") == image.digest

    sent = recorded(harbor, f"/{image.repo}/manifests/")
    assert sent
    for got in sent:
        accept = [v.strip() for v in got.get("accept", "").split(",")]
        assert OCI_MANIFEST in accept
        assert DOCKER_MANIFEST in accept
        assert "application/vnd.oci.image.index.v1+json" in accept
        assert got.get("user-agent") == "skopeo-test/1.0"
        assert got.get("x-forwarded-for") == "203.0.113.7, 127.0.0.1"
        assert got.get("authorization") == harbor.basic_auth_header()
        assert "cookie" not in got
        assert "x-custom" not in got


def test_fan_out_names_identity_encoding_and_itself_without_a_client_user_agent(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    """A fan-out asks for the body as it is (the router relays bytes, it never decompresses)
    and says who asks when the client did not; the hit path adds neither."""
    image = seeded.get("dockerhub", "library/nginx")
    harbor.clear_log()
    status, _, _ = router.request("GET", manifest_path(image), {"Accept": image.media_type})
    assert status == 200
    fanned = recorded(harbor, f"/{image.repo}/manifests/")
    assert fanned
    for got in fanned:
        assert got.get("accept-encoding") == "identity"
        assert got.get("user-agent", "").startswith("harbor-router/")
    harbor.clear_log()
    status, _, _ = router.request("GET", manifest_path(image), {"Accept": image.media_type})
    assert status == 200
    (hit,) = recorded(harbor, f"/{image.repo}/manifests/")
    assert "accept-encoding" not in hit and "user-agent" not in hit


def test_blob_request_headers_use_the_robot_account(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    harbor.clear_log()
    status, _, body = router.request(
        "GET",
        blob_path(image, image.config),
        {"Authorization": "Bearer client-token", "X-Forwarded-For": "198.51.100.1, 10.0.0.1"},
    )
    assert status == 200
    assert sha256(body) == image.config
    sent = recorded(harbor, f"/blobs/{image.config}")
    assert sent
    for got in sent:
        assert got.get("authorization") == harbor.basic_auth_header()
        assert got.get("x-forwarded-for") == "198.51.100.1, 10.0.0.1, 127.0.0.1"


# -- resolution seen from the wire -----------------------------------------------------------


def test_tags_list_name_is_rewritten_and_n_forwarded(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("quay", "coreos/etcd")
    harbor.clear_log()
    for _ in range(2):  # miss (fan-out), then hit (mapped)
        status, headers, body = router.request("GET", f"/v2/proxy/{image.repo}/tags/list?n=1")
        assert status == 200, body
        assert json.loads(body) == {"name": f"proxy/{image.repo}", "tags": [image.tag]}
        assert int(headers["Content-Length"]) == len(body)
    tags_requests = [r for r in harbor.requests() if "/tags/list" in r.path]
    assert all(r.path.endswith("/tags/list?n=1") for r in tags_requests)
    # Unknown repositories are "tags": [] in dockerhub and ghcr: quay's non-empty list wins.
    assert router.app.mapping is not None
    assert router.app.mapping.get(image.repo) == "quay"
    assert harbor.count("quay", "/tags/list") == 2


def test_a_mapped_tag_list_is_answered_on_the_fast_path_with_its_name_rewritten(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    """A tags/list hit is captured and rewritten from the upstream callbacks (no task); one
    that is not a plain 200 (here: the mapped project fails) still gets its translated error."""
    image = seeded.get("quay", "coreos/etcd")
    path = f"/v2/proxy/{image.repo}/tags/list"
    assert router.request("GET", path)[0] == 200  # the miss maps it
    handler = router.app.handler
    assert handler is not None
    before = handler.fast_starts
    answers = [router.request("GET", path) for _ in range(5)]
    for status, headers, body in answers:
        assert status == 200, body
        assert json.loads(body) == {"name": f"proxy/{image.repo}", "tags": [image.tag]}
        assert int(headers["Content-Length"]) == len(body)
    assert handler.fast_starts - before >= 4  # the first may find no idle connection yet
    harbor.set_fault("quay", status=500, times=1)
    status, _, body = router.request("GET", path)
    assert status == 502, body
    assert json.loads(body)["errors"][0]["detail"] == {"quay": "500"}


def test_second_request_goes_only_to_the_mapped_project(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    image = seeded.get("ghcr", "acme/tool")
    harbor.clear_log()
    status, _, _ = router.request("GET", manifest_path(image), {"Accept": image.media_type})
    assert status == 200
    first = {p: harbor.count(p) for p in PROXY_PROJECTS}
    assert first == {"dockerhub": 1, "ghcr": 1, "quay": 1}
    assert router.app.mapping is not None
    assert router.app.mapping.get(image.repo) == "ghcr"

    follow_ups = [
        manifest_path(image),
        manifest_path(image, image.digest),
        *[blob_path(image, d) for d in image.blobs],
        f"/v2/proxy/{image.repo}/tags/list",
        f"/v2/proxy/{image.repo}/referrers/{image.digest}",
    ]
    for path in follow_ups:
        status, _, body = router.request("GET", path, {"Accept": image.media_type})
        assert status == 200, (path, body[:200])
    assert harbor.count("dockerhub") == 1
    assert harbor.count("quay") == 1
    assert harbor.count("ghcr") == 1 + len(follow_ups)


def test_blob_before_any_manifest_streams_and_maps(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    """A fresh router, an uncached 200 KiB layer: HEAD finds nothing, GETs race, the body is
    streamed intact and the mapping is recorded for the next request."""
    image = seeded.get("dockerhub", "library/nginx")
    layer = image.layers[0]
    assert image.blob_sizes[layer] > 200 * 1024
    assert router.app.mapping is not None
    assert router.app.mapping.get(image.repo) is None
    harbor.clear_log()

    body = fetch_blob(router, image, layer)

    assert len(body) == image.blob_sizes[layer]
    assert router.app.mapping.get(image.repo) == "dockerhub"
    # The emulator marks the blob cached once its handler has finished, which may be just after
    # the client read the last byte: a bounded poll, not a sleep.
    deadline = time.monotonic() + 5
    while not harbor.is_blob_cached("dockerhub", layer) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert harbor.is_blob_cached("dockerhub", layer)
    harbor.clear_log()
    status, _, body = router.request("GET", blob_path(image, image.config))
    assert status == 200
    assert sha256(body) == image.config
    assert [r.project for r in harbor.requests()] == ["dockerhub"]


def test_blob_head_before_any_manifest(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    """HEAD on an uncached blob is 404 in Harbor (DESIGN §3): the HEAD fan-out finds nothing,
    GETs race, and the client gets the winner's headers without a body."""
    image = seeded.get("quay", "coreos/etcd")
    layer = image.layers[0]
    harbor.clear_log()
    with RawClient(router) as client:
        client.send(request_bytes("HEAD", blob_path(image, layer)))
        head = client.read_response(head_only=True)
        assert head.status == 200
        assert head.get("Content-Length") == str(image.blob_sizes[layer])
        assert head.get("Docker-Content-Digest") == layer
        assert harbor.count("quay", f"/blobs/{layer}") >= 1
        assert router.app.mapping is not None
        assert router.app.mapping.get(image.repo) == "quay"

        client.send(request_bytes("GET", manifest_path(image), [("Accept", image.media_type)]))
        got = client.read_response()
        assert got.status == 200
        assert got.body == image.manifest


@pytest.mark.parametrize("kind", ["manifest-miss", "manifest-hit", "blob-miss", "base"])
def test_http_1_0_gets_a_complete_response_and_close(
    kind: str, router: RunningRouter, seeded: Seeded
) -> None:
    image = seeded.get("dockerhub", "library/nginx")
    if kind == "manifest-hit":
        status, _, _ = router.request("GET", manifest_path(image), {"Accept": image.media_type})
        assert status == 200
    path, digest = {
        "manifest-miss": (manifest_path(image), image.digest),
        "manifest-hit": (manifest_path(image), image.digest),
        "blob-miss": (blob_path(image, image.layers[0]), image.layers[0]),
        "base": ("/v2/", None),
    }[kind]
    with RawClient(router) as client:
        client.send(request_bytes("GET", path, [("Accept", image.media_type)], version="HTTP/1.0"))
        response = client.read_response()
        assert response.version in ("HTTP/1.0", "HTTP/1.1")
        assert response.status == 200, response.body[:200]
        assert (response.get("Transfer-Encoding") or "") == "", "no chunked framing for 1.0"
        if digest is not None:
            assert sha256(response.body) == digest
        else:
            assert json.loads(response.body) == {}
        assert client.closed_by_peer(), "HTTP/1.0 without keep-alive: the router closes"


def test_conditional_request_on_a_miss_is_not_modified(
    make_router: Callable[..., RunningRouter], seeded: Seeded
) -> None:
    image = seeded.get("quay", "coreos/etcd")
    etag = f'"{image.digest}"'
    router = make_router()
    status, headers, body = router.request(
        "GET", manifest_path(image), {"Accept": image.media_type, "If-None-Match": etag}
    )
    assert status == 304
    assert body == b""
    assert "Content-Length" not in headers or headers["Content-Length"] != "0"
    assert router.app.mapping is not None and router.app.mapping.get(image.repo) == "quay"


def test_cache_hits_take_the_fast_path_and_pipelining_stays_in_order(
    router: RunningRouter, seeded: Seeded, harbor: HarborEmulator
) -> None:
    """A fresh L1 hit with an idle upstream connection is answered from callbacks (no task);
    a pipelined miss and a bad request behind it are still answered in order."""
    tool, etcd = seeded.get("ghcr", "acme/tool"), seeded.get("quay", "coreos/etcd")
    for _ in range(2):  # map it, and leave an idle upstream connection in the pool
        assert router.request("GET", manifest_path(tool), {"Accept": tool.media_type})[0] == 200
    handler = router.app.handler
    assert handler is not None
    before = handler.fast_starts
    data = (
        request_bytes("GET", manifest_path(tool), [("Accept", tool.media_type)])
        + request_bytes("GET", manifest_path(etcd), [("Accept", etcd.media_type)])
        + request_bytes("GET", "/v2/proxy/Bad/manifests/1")
        + request_bytes("GET", manifest_path(tool), [("Accept", tool.media_type),
                                                     ("Connection", "close")])
    )  # fmt: skip
    with RawClient(router) as client:
        client.send(data)
        answers = [client.read_response() for _ in range(4)]
        assert client.closed_by_peer()
    assert [a.status for a in answers] == [200, 200, 400, 200]
    assert answers[0].body == tool.manifest and answers[1].body == etcd.manifest
    assert answers[3].body == tool.manifest
    assert handler.fast_starts >= before + 1
