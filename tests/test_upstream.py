"""The raw keep-alive pool to Harbor, against a scripted HTTP/1.1 server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable

import pytest

from harbor_router._wire import ResponseScan, head_fields, perf_counter
from harbor_router.upstream import Sink, UpstreamConnection, UpstreamError, UpstreamPool

Script = Callable[[bytes], bytes | None]  # request head -> raw response (None: close at once)


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                answer = self.script(head)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


class Recorder(Sink):
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.block: bytes | None = None
        self.scanned = False  # on_scanned (the whole response in one read) or on_head
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, headers

    def on_scanned(self, scan: ResponseScan, data: bytes) -> bool:
        self.scanned, self.block = True, scan.block
        self.on_head(scan.status, head_fields(data))
        return False  # on_body gives the body

    def flush(self) -> None:
        pass

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_complete(self) -> None:
        self.done.set_result("complete")

    def on_lost(self, exc: BaseException | None, received_any: bool) -> None:
        self.done.set_result(f"lost received_any={received_any}")


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


@pytest.fixture
async def pool_for() -> AsyncIterator[Callable[..., asyncio.Future[tuple[UpstreamPool, Server]]]]:
    made: list[tuple[UpstreamPool, Server]] = []

    async def make(script: Script, **kwargs: float) -> tuple[UpstreamPool, Server]:
        server = Server(script)
        port = await server.start()
        options = {"max_idle": 4, "idle_timeout": 30.0, "connect_timeout": 2.0, **kwargs}
        pool = UpstreamPool("127.0.0.1", port, ssl_context=None, **options)  # type: ignore[arg-type]
        pool.start()
        made.append((pool, server))
        return pool, server

    yield make  # type: ignore[misc]
    for pool, server in made:
        pool.close()
        await server.close()


class Taker(Recorder):
    """A sink that takes a scanned response's body with its head."""

    def on_scanned(self, scan: ResponseScan, data: bytes) -> bool:
        super().on_scanned(scan, data)
        self.body += b"taken:" + data[scan.body_at :]
        return True


async def exchange(
    conn: UpstreamConnection,
    head: bytes = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
    *,
    head_only: bool = False,
    sink: type[Recorder] = Recorder,
) -> Recorder:
    recorder = sink()
    conn.send(head, recorder, head_only)
    await asyncio.wait_for(recorder.done, 5)
    return recorder


async def test_get_is_relayed_and_connection_reused(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, server = await pool_for(lambda head: ok(b"hello"))
    for _ in range(3):
        conn = await pool.acquire()
        rec = await exchange(conn)
        assert (rec.status, rec.body, rec.done.result()) == (200, b"hello", "complete")
    assert server.connections == 1
    assert pool.idle_count == 1 and pool.active_count == 0


async def test_head_response_ends_at_headers(pool_for) -> None:  # type: ignore[no-untyped-def]
    def script(head: bytes) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        return ok(b"after-head")

    pool, server = await pool_for(script)
    conn = await pool.acquire()
    rec = await exchange(conn, b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n", head_only=True)
    assert rec.status == 200 and rec.body == b""
    assert (b"Content-Length", b"1000") in rec.headers
    conn2 = await pool.acquire()
    assert conn2 is conn  # a HEAD response leaves the connection reusable
    rec2 = await exchange(conn2)
    assert rec2.body == b"after-head"
    assert server.connections == 1


async def test_whole_plain_responses_are_scanned_the_rest_parsed(pool_for) -> None:  # type: ignore[no-untyped-def]
    """On one connection, in turn: a plain response read by the scan, a chunked one the
    parser reads, a HEAD answer (scanned: no parser made for it), a redirect (scanned, its
    Location left to the rewriter), then a HEAD answer the scan refuses (parsed)."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    answers = {
        b"/plain": ok(b"hello", b"Connection: keep-alive\r\nX-A: 1\r\n"),
        b"/chunked": chunked,
        b"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"/moved": ok(b"", b"Location: /v2/p/x\r\n"),
        b"/head-spaced": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-A: 1 \r\n\r\n",
    }
    pool, server = await pool_for(lambda head: answers[head.split(b" ")[1]])
    conn = await pool.acquire()
    rec = await exchange(conn, b"GET /plain HTTP/1.1\r\n\r\n")
    assert (rec.scanned, rec.status, rec.body) == (True, 200, b"hello")
    assert rec.block == b"Content-Length: 5\r\nX-A: 1\r\n"
    rec = await exchange(await pool.acquire(), b"GET /chunked HTTP/1.1\r\n\r\n")
    assert (rec.scanned, rec.body) == (False, b"abc")
    rec = await exchange(await pool.acquire(), b"HEAD /head HTTP/1.1\r\n\r\n", head_only=True)
    assert (rec.scanned, rec.body, rec.headers) == (True, b"", [(b"Content-Length", b"1000")])
    rec = await exchange(await pool.acquire(), b"GET /moved HTTP/1.1\r\n\r\n")
    assert (rec.scanned, rec.block, rec.headers[1]) == (True, None, (b"Location", b"/v2/p/x"))
    rec = await exchange(await pool.acquire(), b"HEAD /head-spaced HTTP/1.1\r\n\r\n",
                         head_only=True)  # fmt: skip
    assert (rec.scanned, rec.status, rec.body) == (False, 200, b"")
    rec = await exchange(await pool.acquire(), b"GET /plain HTTP/1.1\r\n\r\n")
    assert (rec.scanned, rec.body) == (True, b"hello")
    # a sink that takes the body with the head is not given it again
    rec = await exchange(await pool.acquire(), b"GET /plain HTTP/1.1\r\n\r\n", sink=Taker)
    assert (rec.scanned, rec.body, rec.done.result()) == (True, b"taken:hello", "complete")
    rec = await exchange(await pool.acquire(), b"HEAD /head HTTP/1.1\r\n\r\n", head_only=True,
                         sink=Taker)  # fmt: skip
    assert (rec.scanned, rec.body) == (True, b"taken:")
    assert server.connections == 1 and pool.idle_count == 1


async def test_each_parsed_response_has_header_fields_of_its_own(pool_for) -> None:  # type: ignore[no-untyped-def]
    """Responses the parser reads on one connection, between others the scan takes, each get
    a list of header fields of their own, left as they were given by the next ones."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-N: %d\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    count = iter(range(100))
    answers = {b"/plain": lambda: ok(b"hello"), b"/chunked": lambda: chunked % next(count)}
    pool, server = await pool_for(lambda head: answers[head.split(b" ")[1]]())
    seen: list[Recorder] = []
    for path in (b"/chunked", b"/plain", b"/chunked", b"/chunked", b"/plain", b"/chunked"):
        rec = await exchange(await pool.acquire(), b"GET %b HTTP/1.1\r\n\r\n" % path)
        assert rec.done.result() == "complete" and rec.scanned == (path == b"/plain")
        if path == b"/chunked":
            seen.append(rec)
    assert server.connections == 1
    assert [rec.headers for rec in seen] == [
        [(b"Transfer-Encoding", b"chunked"), (b"X-N", b"%d" % n)] for n in range(4)
    ]
    assert len({id(rec.headers) for rec in seen}) == 4


async def test_chunked_body_is_dechunked(pool_for) -> None:  # type: ignore[no-untyped-def]
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    pool, _ = await pool_for(lambda head: response)
    rec = await exchange(await pool.acquire())
    assert rec.body == b"hello world"
    assert pool.idle_count == 1


async def test_connection_close_is_not_pooled(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, server = await pool_for(lambda head: ok(b"x", b"Connection: close\r\n"))
    await exchange(await pool.acquire())
    await exchange(await pool.acquire())
    assert pool.idle_count == 0
    assert server.connections == 2


async def test_lost_mid_body_reports_received(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, _ = await pool_for(
        lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\npartial"
    )
    rec = await exchange(await pool.acquire())
    assert rec.done.result() == "lost received_any=True"
    assert rec.body == b"partial"
    assert pool.idle_count == 0


async def test_closed_before_answer_reports_nothing_received(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, _ = await pool_for(lambda head: None)
    rec = await exchange(await pool.acquire())
    assert rec.done.result() == "lost received_any=False"


async def test_idle_connections_expire(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, server = await pool_for(lambda head: ok(b"x"), idle_timeout=0.05)
    await exchange(await pool.acquire())
    assert pool.idle_count == 1
    await asyncio.sleep(0.1)
    conn = await pool.acquire()
    assert not conn.reused
    await exchange(conn)
    assert server.connections == 2


async def test_idle_connections_are_capped(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, _ = await pool_for(lambda head: ok(b"x"), max_idle=2)
    conns = [await pool.acquire() for _ in range(4)]
    for conn in conns:
        await exchange(conn)
    assert pool.idle_count == 2


async def test_connect_failure_is_an_upstream_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = UpstreamPool(
        "127.0.0.1", port, ssl_context=None, max_idle=1, idle_timeout=1, connect_timeout=1
    )
    with pytest.raises(UpstreamError, match="cannot connect"):
        await pool.acquire()
    pool.close()


def idle_pool(max_idle: int = 8, idle_timeout: float = 30.0) -> UpstreamPool:
    """A pool whose idle stack is filled by hand, with connections that never connected."""
    return UpstreamPool("127.0.0.1", 1, ssl_context=None, max_idle=max_idle,
                        idle_timeout=idle_timeout, connect_timeout=1.0)  # fmt: skip


def released(pool: UpstreamPool, count: int) -> list[UpstreamConnection]:
    conns = [UpstreamConnection(pool) for _ in range(count)]
    for conn in conns:
        pool._connections.add(conn)  # the pool's own, as if it had opened them
        pool.release(conn, True)
    return conns


def test_idle_connections_are_reused_last_released_first() -> None:
    pool = idle_pool()
    a, b, c = released(pool, 3)
    assert pool.idle_count == 3
    assert pool.try_acquire() is c
    pool.release(c, True)
    assert [pool.try_acquire() for _ in range(4)] == [c, b, a, None]
    assert pool.active_count == 3 and pool.idle_count == 0
    for conn in (a, b):
        pool.release(conn, True)
    assert [pool.try_acquire(), pool.try_acquire()] == [b, a]


def test_closed_and_expired_idle_connections_are_passed_over() -> None:
    pool = idle_pool()
    a, b, c = released(pool, 3)
    c.close()  # the top: the one below it is taken
    assert pool.try_acquire() is b
    assert pool.idle_count == 1
    pool.release(b, True)
    b.idle_since -= 60  # the top expired (and, released earlier, the rest would have too)
    assert pool.try_acquire() is a and b.closed
    pool = idle_pool()
    a, b = released(pool, 2)
    for conn in (a, b):
        conn.idle_since -= 60
    assert pool.try_acquire() is None and a.closed and b.closed
    assert pool.idle_count == 0


def test_a_reading_passed_in_is_the_idle_check_s_clock() -> None:
    """A release is stamped with the data plane's clock (``_wire.perf_counter``, which the
    caller's reading comes from); ``try_acquire(now)`` judges idleness by that reading, not
    by one of its own (0: it reads the clock)."""
    pool = idle_pool(idle_timeout=30.0)
    before = perf_counter()
    (a,) = released(pool, 1)
    assert before <= a.idle_since <= perf_counter()
    assert pool.try_acquire(a.idle_since + 29.5) is a and not a.closed  # idle for 29.5 s
    pool.release(a, True)
    assert pool.try_acquire(a.idle_since + 30.5) is None and a.closed  # idle for longer
    b, c = released(pool, 2)
    assert pool.try_acquire(0.0) is c  # the clock read: released a moment ago
    b.idle_since -= 60
    assert pool.try_acquire(0.0) is None and b.closed  # the clock read: a minute ago


def test_the_idle_cap_counts_the_top() -> None:
    pool = idle_pool(max_idle=2)
    a, b, c = released(pool, 3)
    assert (a.closed, b.closed, c.closed) == (False, False, True)
    assert pool.idle_count == 2
    pool.release(pool.try_acquire(), False)  # type: ignore[arg-type]
    assert b.closed and pool.idle_count == 1


async def test_the_sweep_keeps_the_idle_stack_in_order() -> None:
    pool = idle_pool()
    a, b, c, d = released(pool, 4)
    a.idle_since -= 60
    c.close()
    pool._sweep()
    assert a.closed and pool.idle_count == 2
    assert [pool.try_acquire(), pool.try_acquire(), pool.try_acquire()] == [d, b, None]
    a, b = released(pool, 2)
    b.idle_since -= 60  # the top alone (a clock is not this exact in a real pool)
    pool._sweep()
    assert b.closed and pool.idle_count == 1 and pool.try_acquire() is a
    pool.close()


def test_closing_the_pool_closes_every_idle_connection() -> None:
    pool = idle_pool()
    conns = released(pool, 3)
    active = pool.try_acquire()
    pool.close()
    assert all(conn.closed for conn in conns) and active is conns[-1]
    assert pool.idle_count == 0 and pool.try_acquire() is None
    lone = idle_pool()
    (only,) = released(lone, 1)
    lone.close()
    assert only.closed and lone.idle_count == 0


def test_active_count_counts_each_connection_in_use_once() -> None:
    """Taken: counted; released or closed: not, however often either is said of it."""
    pool = idle_pool()
    a, b = released(pool, 2)
    assert pool.active_count == 0
    assert pool.try_acquire() is b and pool.try_acquire() is a
    assert pool.active_count == 2 and a.in_use and b.in_use
    pool.release(b, True)
    pool.release(b, True)  # once more: nothing more to give back
    assert pool.active_count == 1 and not b.in_use
    a.close()  # closed in use (forget)
    assert pool.active_count == 0 and not a.in_use
    pool.release(a, True)  # and then released: still not counted twice
    assert pool.active_count == 0
    b.close()  # an idle one closed: nothing was counted for it
    assert pool.active_count == 0


async def test_closing_the_pool_closes_open_connections_in_use_and_idle(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, _ = await pool_for(lambda head: ok(b"x"))
    idle, busy, gone = await pool.connect(), await pool.connect(), await pool.connect()
    await exchange(idle)  # back on the idle stack
    gone.close()  # closed: no longer one of the open connections
    assert pool.active_count == 1 and pool.idle_count == 1
    assert pool._connections == {idle, busy}
    pool.close()
    assert idle.closed and busy.closed and pool.active_count == 0 and not pool._connections


# a plain connection's own socket (no transport): reads, a head sent in parts, pause, close
def open_fds() -> set[str]:
    """What this process's descriptors are open on (``socket:[inode]``, paths)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor, closed by now)
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


async def test_a_plain_connection_reads_and_writes_its_own_socket(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, server = await pool_for(lambda head: ok(b"hello"))
    conn = await pool.acquire()
    assert conn.transport is None and conn.plain and conn.fileno() >= 0
    rec = await exchange(conn)
    assert (rec.status, rec.body, rec.done.result()) == (200, b"hello", "complete")
    assert server.requests == [b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"]


async def test_a_head_the_kernel_does_not_take_at_once_goes_when_it_can(pool_for) -> None:  # type: ignore[no-untyped-def]
    received: list[bytes] = []

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)  # the router's socket buffer fills meanwhile
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(ok(b"late"))
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0, limit=64 << 20)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool("127.0.0.1", port, ssl_context=None, max_idle=1, idle_timeout=30,
                        connect_timeout=2)  # fmt: skip
    try:
        conn = await pool.acquire()
        big = b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * (24 << 20) + b"\r\n\r\n"
        recorder = Recorder()
        conn.send(big, recorder, False)
        assert conn._pending is big  # the rest waits for the socket to take it
        await asyncio.wait_for(recorder.done, 10)
        assert recorder.done.result() == "complete" and recorder.body == b"late"
        assert received == [big] and conn._pending == b""
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_closing_a_plain_connection_reports_the_loss_on_the_next_turn(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, _ = await pool_for(lambda head: b"")  # never answers
    conn = await pool.acquire()
    ours = f"socket:[{os.fstat(conn.fileno()).st_ino}]"
    assert ours in open_fds()
    recorder = Recorder()
    conn.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", recorder, False)
    conn.close()
    assert conn.closed and not recorder.done.done()  # as a transport reports it: later
    assert pool.active_count == 0 and conn not in pool._connections
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.done.result() == "lost received_any=False"
    assert ours not in open_fds()  # the socket is closed


async def test_a_paused_plain_connection_reads_nothing_until_resumed(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, _ = await pool_for(lambda head: ok(b"later"))
    conn = await pool.acquire()
    recorder = Recorder()
    conn.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", recorder, False)
    conn.pause_reading()
    assert conn.paused
    await asyncio.sleep(0.1)
    assert not recorder.done.done() and recorder.status == 0
    conn.resume_reading()
    await asyncio.wait_for(recorder.done, 5)
    assert recorder.done.result() == "complete" and recorder.body == b"later"


class PausedAtTheEnd(Recorder):
    """A sink whose last write fills the client's buffer: as a relay's ``on_complete`` does when
    the client protocol's ``pause_writing`` comes from that write and pauses the upstream."""

    conn: UpstreamConnection | None = None

    def on_complete(self) -> None:
        assert self.conn is not None
        self.conn.pause_reading()
        super().on_complete()


async def test_a_pause_after_the_end_leaves_the_pooled_connection_reading(pool_for) -> None:  # type: ignore[no-untyped-def]
    # The connection is back in the pool before the sink's last write: a pause then is for a
    # response that is over, and must not leave the next borrower waiting for its head.
    pool, server = await pool_for(lambda head: ok(b"x" * 1000))
    conn = await pool.acquire()
    PausedAtTheEnd.conn = conn
    first = await exchange(conn, sink=PausedAtTheEnd)
    assert first.done.result() == "complete" and len(first.body) == 1000
    assert not conn.paused and pool.idle_count == 1
    again = await pool.acquire()
    assert again is conn
    second = await exchange(again)
    assert (second.done.result(), second.body) == ("complete", b"x" * 1000)
    assert server.connections == 1


class Broken(Recorder):
    """A sink with a bug: it raises at the head."""

    def on_scanned(self, scan: ResponseScan, data: bytes) -> bool:
        raise RuntimeError("bug")


async def test_an_error_reading_a_response_is_reported_and_ends_the_connection(pool_for) -> None:  # type: ignore[no-untyped-def]
    pool, _ = await pool_for(lambda head: ok(b"x"))
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    try:
        conn = await pool.acquire()
        recorder = Broken()
        conn.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", recorder, False)
        await asyncio.wait_for(recorder.done, 5)
    finally:
        loop.set_exception_handler(None)
    assert recorder.done.result() == "lost received_any=True"  # told, not left waiting
    assert conn.closed and conn not in pool._connections
    assert [type(context["exception"]) for context in reported] == [RuntimeError]


async def test_harbor_closing_an_idle_plain_connection_is_seen_at_once() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok(b"x"))
        writers.append(writer)

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool("127.0.0.1", port, ssl_context=None, max_idle=1, idle_timeout=30,
                        connect_timeout=2)  # fmt: skip
    try:
        conn = await pool.acquire()
        await exchange(conn)
        assert pool.idle_count == 1 and not conn.closed
        writers[0].close()  # Harbor ends the idle keep-alive connection
        for _ in range(100):
            if conn.closed:
                break
            await asyncio.sleep(0.01)
        assert conn.closed and conn not in pool._connections
        assert pool.try_acquire() is None  # passed over: a new one is opened
        fresh = await pool.acquire()
        assert fresh is not conn and not fresh.reused
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_a_connect_that_times_out_leaves_no_socket_open() -> None:
    """A listener whose accept queue is full drops new SYNs: the connect hangs until the
    pool's connect timeout, and the socket it made is closed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # the queue's one place, and then some
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    await asyncio.sleep(0.05)
    pool = UpstreamPool("127.0.0.1", port, ssl_context=None, max_idle=1, idle_timeout=1,
                        connect_timeout=0.3)  # fmt: skip
    before = open_fds()
    try:
        with pytest.raises(UpstreamError, match="timed out"):
            await pool.acquire()
        assert open_fds() <= before
        assert pool.active_count == 0
    finally:
        pool.close()
        for filler in fillers:
            filler.close()
        listener.close()


# a TLS connection keeps a uvloop transport (the same sink calls, the same pooling)
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is needed for the TLS upstream test (CI=true)")
        pytest.skip("openssl is not installed")
    root = tmp_path_factory.mktemp("tls")
    cert, key = str(root / "cert.pem"), str(root / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out",
         cert],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_a_tls_connection_relays_through_its_transport(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = Server(lambda head: ok(b"secret"))
    server.server = await asyncio.start_server(server._handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=cert)
    pool = UpstreamPool("127.0.0.1", port, ssl_context=client_ctx, max_idle=1, idle_timeout=30,
                        connect_timeout=5)  # fmt: skip
    try:
        for _ in range(2):
            conn = await pool.acquire()
            assert conn.transport is not None and not conn.plain
            rec = await exchange(conn)
            assert (rec.status, rec.body, rec.done.result()) == (200, b"secret", "complete")
        conn = await pool.acquire()
        recorder = Recorder()
        conn.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", recorder, False)
        conn.pause_reading()
        await asyncio.sleep(0.1)
        assert not recorder.done.done()
        conn.resume_reading()
        await asyncio.wait_for(recorder.done, 5)
        assert recorder.body == b"secret"
        assert server.connections == 1  # one connection, reused
    finally:
        pool.close()
        await server.close()
