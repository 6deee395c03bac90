"""The hit path's response-head deadlines (``relay.HeadDeadlines``), without a network: relays
on hand-made connections of a pool, as the forwarder arms them after sending a head."""

from __future__ import annotations

import asyncio

from harbor_router.forwarding import IDENTITY
from harbor_router.protocol import HttpProtocol, Request
from harbor_router.relay import CAPTURE_ALL, HeadDeadlines, HeadTimeout, Relay
from harbor_router.upstream import UpstreamConnection, UpstreamError, UpstreamPool

TICK = 0.02


async def _handler(request: Request, client: HttpProtocol) -> None:
    raise AssertionError("no request is answered here")


def pool() -> UpstreamPool:
    return UpstreamPool("127.0.0.1", 1, ssl_context=None, max_idle=4, idle_timeout=30.0,
                        connect_timeout=1.0)  # fmt: skip


def sent(deadlines: HeadDeadlines, pool: UpstreamPool, seconds: float) -> Relay:
    """A relay in flight on one of ``pool``'s open connections, its head due in ``seconds``."""
    conn = UpstreamConnection(pool)
    pool._connections.add(conn)  # the pool's own, as if it had opened it
    relay = Relay(HttpProtocol(_handler, 8192), conn, IDENTITY, False, CAPTURE_ALL)
    conn._sink = relay  # what send() makes it
    relay.arm_timeout(deadlines, seconds)
    return relay


async def test_a_head_that_does_not_come_fails_the_relay_about_on_time() -> None:
    p = pool()
    deadlines = HeadDeadlines(p, tick=TICK)
    loop = asyncio.get_running_loop()
    started = loop.time()
    late = sent(deadlines, p, 0.1)
    later = sent(deadlines, p, 0.3)  # another timeout: its own deadline
    assert len(deadlines) == 2
    while not late.finished:
        await asyncio.sleep(TICK / 2)
    elapsed = loop.time() - started
    assert isinstance(late.error, HeadTimeout) and late.conn.closed
    assert 0.1 <= elapsed < 0.1 + 3 * TICK + 0.05, elapsed
    assert not later.finished and len(deadlines) == 1
    while not later.finished:
        await asyncio.sleep(TICK / 2)
    assert isinstance(later.error, HeadTimeout)
    assert 0.3 <= loop.time() - started < 0.3 + 3 * TICK + 0.05
    assert len(deadlines) == 0
    await asyncio.sleep(2 * TICK)
    assert deadlines._handle is None  # nothing waits: no ticker


async def test_a_relay_that_got_its_head_or_ended_is_no_longer_waited_for() -> None:
    p = pool()
    deadlines = HeadDeadlines(p, tick=TICK)
    headed, aborted, lost = (sent(deadlines, p, 0.05) for _ in range(3))
    assert len(deadlines) == 3
    headed.on_head(404, [])  # captured: the head came
    aborted.abort()  # the client left before the head
    lost.conn.connection_lost(None)  # Harbor closed the connection
    assert len(deadlines) == 0 and headed.head_due == 0
    assert isinstance(aborted.error, UpstreamError) and isinstance(lost.error, UpstreamError)
    await asyncio.sleep(0.05 + 3 * TICK)
    assert not headed.finished and headed.error is None and not headed.conn.closed
    assert not isinstance(aborted.error, HeadTimeout) and not isinstance(lost.error, HeadTimeout)
    assert deadlines._handle is None


async def test_closed_deadlines_let_the_relays_in_flight_be() -> None:
    p = pool()
    deadlines = HeadDeadlines(p, tick=TICK)
    relay = sent(deadlines, p, 0.05)
    deadlines.close()
    assert len(deadlines) == 0 and deadlines._handle is None
    relay.on_head(404, [])  # its head after the close: nothing more to take off the count
    assert len(deadlines) == 0
    other = sent(deadlines, p, 0.05)
    left = sent(deadlines, p, 10.0)
    left.on_head(404, [])
    while not other.finished:
        await asyncio.sleep(TICK / 2)
    assert isinstance(other.error, HeadTimeout) and relay.error is None and left.error is None
