"""The upstream request head of a hit (``Forwarder.request_head``), and a request started on
an idle pooled connection (``Forwarder.try_start``), without a network."""

from __future__ import annotations

import pytest

from harbor_router import forwarding, routes
from harbor_router.auth import Credentials
from harbor_router.breaker import Breaker
from harbor_router.forwarding import IDENTITY, Forwarder
from harbor_router.metrics import Metrics
from harbor_router.projects import DOCKER_HUB, Project
from harbor_router.protocol import HttpProtocol, Request
from harbor_router.relay import RELAY_PULL
from harbor_router.upstream import UpstreamConnection, UpstreamPool

ROUTER = routes.Router("proxy")
PATH = "/v2/proxy/nginx/manifests/1.25"


def forwarder(
    credentials: Credentials, pool: UpstreamPool | None = None, metrics: Metrics | None = None
) -> Forwarder:
    if pool is None:
        pool = UpstreamPool("127.0.0.1", 1, ssl_context=None, max_idle=1, idle_timeout=1.0,
                            connect_timeout=1.0)  # fmt: skip
    return Forwarder(pool, credentials, upstream_host="harbor.example", base_path="/h",
                     timeout=1.0, max_body=1024, metrics=metrics)  # fmt: skip


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


class Transport:
    """What an upstream connection writes to: the bytes kept."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str) -> None:
        return None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _no_handler(request: Request, client: HttpProtocol) -> None:
    raise AssertionError("no request is answered here")


def _upstream_duration(metrics: Metrics, project: str) -> float:
    return sum(
        sample.value
        for family in metrics.collect()
        for sample in family.samples
        if sample.name.endswith("upstream_project_duration_seconds_sum")
        and sample.labels.get("project") == project
    )


async def test_a_started_request_is_its_relay_with_its_connection_and_start() -> None:
    """``try_start`` sends the head on the idle connection and returns the relay, which holds
    that connection and the start it was given; its complete answer is accounted from that
    start (the breaker and the upstream metrics); with no idle connection it is None."""
    pool = UpstreamPool("127.0.0.1", 1, ssl_context=None, max_idle=1, idle_timeout=30.0,
                        connect_timeout=1.0)  # fmt: skip
    metrics = Metrics()
    fwd = forwarder(Credentials("", ""), pool, metrics)
    conn, transport = UpstreamConnection(pool), Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    pool._connections.add(conn)  # the pool's own, as if it had opened it
    pool.release(conn, True)
    client = HttpProtocol(_no_handler, 8192)
    now = conn.idle_since
    relay = fwd.try_start(client, b"GET /h/v2/ HTTP/1.1\r\n\r\n", False, IDENTITY, now,
                          RELAY_PULL)  # fmt: skip
    assert relay is not None and relay.conn is conn and relay.start == now
    assert transport.written == [b"GET /h/v2/ HTTP/1.1\r\n\r\n"]
    assert fwd.try_start(client, b"", False, IDENTITY, now, RELAY_PULL) is None  # none idle
    breaker = Breaker(1, 1.0)
    assert not fwd.finish_started(relay, "p", breaker, now + 0.25)  # no answer yet
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    assert relay.finished and relay.started and relay.status == 200
    assert fwd.finish_started(relay, "p", breaker, now + 0.25)
    assert metrics.upstream_counts() == {("p", "200"): 1}
    assert _upstream_duration(metrics, "p") == pytest.approx(0.25)
    assert pool.try_acquire(now) is conn  # released at the end of the response
    fwd.close()
