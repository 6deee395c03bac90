"""The upstream request head of a hit (``Forwarder.request_head``), without a network."""

from __future__ import annotations

import pytest

from harbor_router import forwarding, routes
from harbor_router.auth import Credentials
from harbor_router.forwarding import Forwarder
from harbor_router.projects import DOCKER_HUB, Project
from harbor_router.protocol import Request
from harbor_router.upstream import UpstreamPool

ROUTER = routes.Router("proxy")
PATH = "/v2/proxy/nginx/manifests/1.25"


def forwarder(credentials: Credentials) -> Forwarder:
    pool = UpstreamPool("127.0.0.1", 1, ssl_context=None, max_idle=1, idle_timeout=1.0,
                        connect_timeout=1.0)  # fmt: skip
    return Forwarder(pool, credentials, upstream_host="harbor.example", base_path="/h",
                     timeout=1.0, max_body=1024)  # fmt: skip


def request(path: str = PATH, method: str = "GET") -> Request:
    headers = [(b"host", b"registry"), (b"accept", b"a/b"), (b"x-forwarded-for", b"10.0.0.1"),
               (b"cookie", b"c"), (b"user-agent", b"skopeo")]  # fmt: skip
    return Request(method, path, "", headers, http11=True, keep_alive=True, client_ip="::1")


def head(path: str, project: str, auth: bytes | None, method: str = "GET") -> bytes:
    line = f"{method} /h/v2/{project}/{path} HTTP/1.1\r\nHost: harbor.example\r\n".encode()
    if auth is not None:
        line += b"Authorization: " + auth + b"\r\n"
    return line + b"Accept: a/b\r\nUser-Agent: skopeo\r\nX-Forwarded-For: 10.0.0.1, ::1\r\n\r\n"


def test_request_head_per_route_project_and_credentials() -> None:
    """The head's start kept for the last route, project and credentials is the one made for
    them: another project, a project of the same name, new credentials, another route or an
    emptied table each get theirs."""
    credentials = Credentials("robot", "secret")
    fwd = forwarder(credentials)
    route = ROUTER.parse("GET", PATH, "")
    hub, other = Project("hub", DOCKER_HUB), Project("other")
    auth = credentials.header
    for _ in range(2):
        assert fwd.request_head(request(), route, hub) == head("library/nginx/manifests/1.25",
                                                                 "hub", auth)  # fmt: skip
    assert fwd.request_head(request(), route, other) == head("nginx/manifests/1.25", "other", auth)
    # the same name: the table's start for the route (kept by name) is the one sent
    assert fwd.request_head(request(), route, Project("other", DOCKER_HUB)) == head(
        "nginx/manifests/1.25", "other", auth
    )
    assert fwd.request_head(request(), route, other) == head("nginx/manifests/1.25", "other", auth)
    credentials.header = None  # for the last route and project
    assert fwd.request_head(request(), route, other) == head("nginx/manifests/1.25", "other", None)
    tags = ROUTER.parse("GET", "/v2/proxy/nginx/tags/list", "")
    assert fwd.request_head(request(), tags, other) == head("nginx/tags/list", "other", None)
    assert fwd.request_head(request(method="HEAD"), route, other) == head(
        "nginx/manifests/1.25", "other", None, "HEAD"
    )


def test_a_full_table_is_emptied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forwarding, "HEAD_STARTS", 1)
    fwd = forwarder(Credentials("", ""))
    route = ROUTER.parse("GET", PATH, "")
    tags = ROUTER.parse("GET", "/v2/proxy/nginx/tags/list", "")
    first, renamed = Project("p"), Project("p", DOCKER_HUB)
    assert fwd.request_head(request(), route, first) == head("nginx/manifests/1.25", "p", None)
    # kept by name for renamed, while the table holds it
    assert fwd.request_head(request(), route, renamed) == head("nginx/manifests/1.25", "p", None)
    assert fwd.request_head(request(), tags, first) == head("nginx/tags/list", "p", None)
    # the table was emptied for tags: the route's start is made again, for renamed's name
    assert fwd.request_head(request(), route, renamed) == head(
        "library/nginx/manifests/1.25", "p", None
    )
