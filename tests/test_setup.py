"""Objects the hit path makes by ``X.__new__(X)`` and a set-up method (``Relay.setup``,
``Request.scanned``; compiled, two C calls instead of the constructor's argument matching) are
the ones their constructor makes."""

from __future__ import annotations

from harbor_router._wire import RequestScan, scan_request
from harbor_router.forwarding import IDENTITY
from harbor_router.metrics import OTHER_KIND
from harbor_router.protocol import HttpProtocol, Request
from harbor_router.relay import CAPTURE_ALL, NO_HEADERS, Relay
from harbor_router.upstream import UpstreamConnection, UpstreamPool


async def _handler(request: Request, client: HttpProtocol) -> None:
    raise AssertionError("no request is answered here")


def test_a_relay_set_up_after_new_is_the_constructed_one() -> None:
    pool = UpstreamPool("127.0.0.1", 1, ssl_context=None, max_idle=1, idle_timeout=1.0,
                        connect_timeout=1.0)  # fmt: skip
    client, conn = HttpProtocol(_handler, 8192), UpstreamConnection(pool)
    args = (client, conn, IDENTITY, True, CAPTURE_ALL, 77, None, None, None)
    made = Relay(*args)
    setup = Relay.__new__(Relay)
    setup.setup(*args)
    for name in Relay.__slots__:
        assert getattr(setup, name) == getattr(made, name), name
    assert setup._out is None and made._out is None  # made by the first queued bytes
    assert setup.headers is made.headers is NO_HEADERS == ()  # shared, never changed
    assert (setup.head_only, setup._capture_limit, setup.conn) == (True, 77, conn)


def test_a_request_set_up_from_its_scan_is_the_constructed_one() -> None:
    """``Request.scanned`` (after ``Request.__new__``) makes the request the constructor makes
    of the fields ``scan_request`` read."""
    scan = RequestScan()
    head = b"HEAD /v2/a/manifests/1?n=x HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
    assert scan_request(head, 8192, 8192, 100, scan)
    for keep_alive, ip in ((True, "10.0.0.1"), (False, "")):
        made = Request(scan.method, scan.path, scan.query, scan.headers, scan.http11, keep_alive,
                       ip)  # fmt: skip
        setup = Request.__new__(Request)
        setup.scanned(scan, keep_alive, ip)
        for name in Request.__slots__:
            assert getattr(setup, name) == getattr(made, name), name
        assert (setup.method, setup.path, setup.query) == ("HEAD", "/v2/a/manifests/1", "n=x")
        assert (setup.http11, setup.keep_alive, setup.client_ip) == (False, keep_alive, ip)
        assert (setup.error, setup.fast, setup.route, setup.kind) == (None, None, None, OTHER_KIND)
