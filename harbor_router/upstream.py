"""Keep-alive connections to Harbor, raw sockets read and written directly (the data plane's
client side; a TLS one through its asyncio transport, as its Protocol).

Theory of operation: a request borrows a connection from :class:`UpstreamPool`, writes one joined
request head and hands the connection a *sink* (``relay.Relay``) that receives the response as
httptools parses it: ``on_head`` once, ``on_body`` per chunk, then ``on_complete`` or ``on_lost``,
and ``flush`` after every read, so that what one read produced reaches the client in one write.
A response that comes whole in its first read and is of the plainest kind (``_wire.scan_response``:
a small manifest, a HEAD answer) is read by one compiled scan instead, and the sink gets
``on_scanned`` (the status and the end-to-end header lines already joined), then its body (unless
the sink took it with the head, in one bytes for the client: ``on_scanned``'s answer). Every
other response goes through httptools: the connection keeps one parser for its GET responses
(httptools starts over at each message end); a HEAD response, which the response parser cannot
finish by itself, gets a fresh parser and simply ends at its headers, and so does the response
after a spliced body (the parser never saw those bytes). A connection goes back to the idle
stack only after a complete response that allows keep-alive; idle ones are closed after
``IDLE_CONN_TIMEOUT`` and never more than ``MAX_IDLE_CONNS_PER_HOST`` are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from typing import cast

import httptools

from ._wire import (
    ResponseScan,
    Seconds,
    perf_counter,
    read_from,
    scan_response,
    send_to,
    write_to,
)
from .splice import plain_fd

NO_BODY_STATUSES = frozenset({204, 304})
READ_HIGH_WATER = 256 * 1024


class Sink:
    """What a response is read into (``relay.Relay``). A base class rather than a typing
    protocol: compiled, a connection calls its sink's methods through the C method table."""

    __slots__ = ()

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def on_scanned(self, scan: ResponseScan, data: bytes) -> bool:
        """The head of a whole response, ``data``, as ``scan`` read it; True when the sink took
        its body (``data[scan.body_at:]``) too, else :meth:`on_body` gives it."""
        raise NotImplementedError

    def on_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_complete(self) -> None:
        raise NotImplementedError

    def on_lost(self, exc: BaseException | None, received_any: bool) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError


class UpstreamError(Exception):
    """The upstream connection failed; ``received_any`` tells whether a response had begun."""

    def __init__(self, message: str, received_any: bool = False) -> None:
        super().__init__(message)
        self.received_any = received_any


class PoolFull(UpstreamError):
    """``MAX_UPSTREAM_CONNECTIONS`` were in use for the whole connect timeout: nothing is
    wrong with Harbor, the router has as many requests towards it as it allows."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; its own httptools callbacks feed the current sink.

    A plain TCP connection (no TLS) is a non-blocking socket of its own (:meth:`attach`): the
    loop calls :meth:`readable` when it has bytes, each read is one ``recv`` into
    :meth:`data_received`, and a request head is one ``send`` (the rest, should the kernel not
    take it all, when the socket is writable again). One callback per read instead of a
    transport's two, and no transport bookkeeping per write. A TLS connection is a uvloop
    transport with this object as its protocol. Both end the same way: ``connection_lost``,
    once, after the socket is closed (by the peer: at once; by :meth:`close`: on the next loop
    turn, as a transport reports it)."""

    __slots__ = (
        "_fd",
        "_fresh",
        "_head_only",
        "_headers",
        "_loop",
        "_parser",
        "_paused",
        "_pending",
        "_pending_at",
        "_queued",
        "_reader",
        "_retired",
        "_scan",
        "_sink",
        "_sock",
        "closed",
        "idle_since",
        "in_use",
        "pool",
        "received_any",
        "reused",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._fd = -1  # the plain socket, written directly (_wire.send_to / write_to)
        self._sock: socket.socket | None = None  # a plain connection's own socket (attach)
        self._loop: asyncio.AbstractEventLoop | None = None  # its loop, once attached
        self._pending = b""  # a request head the kernel did not take all of (plain socket)
        self._pending_at = 0  # how much of it it took
        self._queued = False  # a write may wait in the transport's buffer
        self._sink: Sink | None = None  # the response in progress (None: none asked for)
        self._parser = httptools.HttpResponseParser(self)  # GET responses, reused
        # the current one (None: a HEAD response's, made when the scan does not take it)
        self._reader: httptools.HttpResponseParser | None = self._parser
        self._fresh = False  # nothing of the current response read yet
        self._head_only = False
        self._retired = False  # closed after the current response instead of pooled
        self._paused = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._scan = ResponseScan()  # what scan_response read of the current response
        self.closed = False
        self.idle_since: Seconds = 0.0  # when it was last released (the pool's clock)
        self.in_use = False  # lent out by the pool (counted in its active_count)
        self.received_any = False
        self.reused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        self._fd = plain_fd(transport)

    # a plain connection's own socket
    def attach(self, sock: socket.socket) -> None:
        """Read and write ``sock`` (connected, non-blocking, plain TCP) without a transport."""
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self.readable)

    def readable(self) -> None:
        """The socket has bytes, or its end, or an error."""
        try:
            data = read_from(self._fd)
            if data is None:  # a wake-up with nothing to read
                return
            if data:
                self.data_received(data)
                return
        except OSError as exc:
            self._gone(exc)
            return
        except Exception as exc:  # a bug: reported, and the connection ends (as uvloop does)
            assert self._loop is not None
            self._loop.call_exception_handler(
                {"message": "reading a response from Harbor failed", "exception": exc}
            )
            self._gone(exc)
            return
        self._gone(None)  # Harbor closed the connection

    def writable(self) -> None:
        """The socket takes more of the pending request head."""
        head = self._pending
        try:
            sent = send_to(self._fd, head, self._pending_at)
        except OSError as exc:
            self._gone(exc)
            return
        self._pending_at += sent
        if self._pending_at >= len(head):
            self._pending = b""
            self._pending_at = 0
            assert self._loop is not None
            self._loop.remove_writer(self._fd)

    def _detach(self) -> None:
        """Close the plain socket (no more callbacks for it)."""
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        self._sock = None
        loop.remove_reader(self._fd)
        if self._pending:
            self._pending = b""
            loop.remove_writer(self._fd)
        sock.close()

    def _gone(self, exc: Exception | None) -> None:
        """The plain socket ended (Harbor closed it, or an error): as a transport's loss."""
        if self._sock is not None:
            self._detach()
            self.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        self.received_any = True
        if self._fresh:
            self._fresh = False
            if scan_response(data, self._head_only, self._scan):
                self._scanned(sink, data)
                return
            self._headers = []  # the parser's, of this response (the relay may keep them)
        reader = self._reader
        if reader is None:  # a HEAD response the scan did not take
            reader = self._reader = httptools.HttpResponseParser(self)
        try:
            reader.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lost(exc)
            self.close()
            return
        sink.flush()  # what this read produced goes to the client in one write

    def _scanned(self, sink: Sink, data: bytes) -> None:
        """The whole response came in ``data`` and the scan read it (``_scan``): the sink gets
        what the parser's callbacks would have given it, in the same order."""
        scan = self._scan
        body_at, keep_alive = scan.body_at, scan.keep_alive
        took = sink.on_scanned(scan, data)
        if self._sink is not sink:
            return
        if not took and body_at < len(data):
            sink.on_body(data[body_at:])
        if self._head_only:
            self._reader = self._parser
        self._finish(keep_alive)
        sink.flush()

    # httptools callbacks (of the current response)
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        sink = self._sink
        if sink is None:
            return
        reader = self._reader
        assert reader is not None
        status: int = reader.get_status_code()
        if status < 200:  # interim response: the real one follows
            self._headers = []
            return
        sink.on_head(status, self._headers)
        if self._head_only or status in NO_BODY_STATUSES:
            self._end()

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink.on_body(body)

    def on_message_complete(self) -> None:
        reader = self._reader
        if self._sink is not None and reader is not None:
            keep_alive = bool(reader.should_keep_alive())
            # the parser is still inside that body: the next response starts on a fresh one
            self._parser = self._reader = httptools.HttpResponseParser(self)
            self._finish(keep_alive)

    def _end(self) -> None:
        reader = self._reader
        assert reader is not None
        keep_alive = bool(reader.should_keep_alive())
        if self._head_only:
            self._reader = self._parser  # the HEAD parser is done with
        self._finish(keep_alive)

    def _finish(self, keep_alive: bool) -> None:
        sink = self._sink
        assert sink is not None
        self._sink = None
        self.response_ended(keep_alive)
        sink.on_complete()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._lost(exc)

    # used by the data plane
    def send(self, head: bytes, sink: Sink, head_only: bool) -> None:
        self._sink = sink
        self._head_only = head_only
        self._fresh = True  # (the parser's header list made new if it is needed)
        if head_only:
            self._reader = None  # a fresh parser, made only if the scan does not take it
        self.received_any = False
        if self._sock is None:
            assert self.transport is not None
            self._queued = write_to(self.transport, self._fd, self._queued, head)
            return
        loop = self._loop
        assert loop is not None
        try:
            sent = send_to(self._fd, head, 0)
        except OSError as exc:  # reported from the loop, as a transport reports a failed write
            loop.call_soon(self._gone, exc)
            return
        if sent < len(head):  # (a connection is lent out with nothing pending)
            self._pending = head
            self._pending_at = sent
            loop.add_writer(self._fd, self.writable)

    def pause_reading(self) -> None:
        # Only a response in progress is paused. The one that just ended may still ask: its
        # sink's last write (``on_complete``, after the release to the pool) can fill the
        # client's buffer, and that client's back-pressure must not stop the next borrower.
        if self.closed or self._sink is None:
            return
        if self._sock is not None:
            assert self._loop is not None
            self._paused = True
            self._loop.remove_reader(self._fd)
        elif self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._paused or self.closed:
            return
        if self._sock is not None:
            assert self._loop is not None
            self._paused = False
            self._loop.add_reader(self._fd, self.readable)
        elif self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    @property
    def paused(self) -> bool:
        """Reading is paused (the client's back-pressure, or a splice)."""
        return self._paused

    @property
    def plain(self) -> bool:
        """Plain TCP (no TLS): the socket itself carries the body bytes."""
        return (self.pool.tls is False and not self.closed
                and (self._sock is not None or self.transport is not None))  # fmt: skip

    def fileno(self) -> int:
        if self._sock is not None:
            return self._fd
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def body_moved(self) -> None:
        """The rest of the current response's body was moved past the parser (``splice``):
        end the response as if the parser had seen it, keep-alive rules unchanged."""
        reader = self._reader
        if self._sink is not None and reader is not None:
            keep_alive = bool(reader.should_keep_alive())
            # the parser is still inside that body: the next response starts on a fresh one
            self._parser = self._reader = httptools.HttpResponseParser(self)
            self._finish(keep_alive)

    def feed(self, data: bytes) -> None:
        """Bytes taken from the socket past the transport (a refused splice): parse them."""
        if data:
            self.data_received(data)

    def abandon(self) -> None:
        """The client went away mid-response: the rest of it is not worth reading."""
        self._sink = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self._sock is not None:
                loop = self._loop
                assert loop is not None
                self._detach()
                loop.call_soon(self._lost, None)  # as a closed transport's connection_lost
            elif self.transport is not None:
                self.transport.close()

    # internal
    def retire(self) -> None:
        """Close this connection once the current response is done (never pooled again)."""
        self._retired = True

    def response_ended(self, keep_alive: bool) -> None:
        self.resume_reading()
        self.pool.release(self, keep_alive and not self._retired)

    def _lost(self, exc: BaseException | None) -> None:
        sink = self._sink
        self._sink = None
        if sink is not None:
            sink.on_lost(exc, self.received_any)


class UpstreamPool:
    """Keep-alive connections to one Harbor address: idle ones reused LIFO, bounded, expiring;
    at most ``max_connections`` in use (a new one beyond waits for a release, FIFO, up to
    ``connect_timeout``, then :class:`PoolFull`)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        max_idle: int,
        idle_timeout: float,
        connect_timeout: float,
        max_connections: int = 1024,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._max_idle = max_idle
        self._idle_timeout: Seconds = idle_timeout
        self._connect_timeout = connect_timeout
        # the idle stack: its top (the last released, None when taken) and the rest below it,
        # in order; with one connection in turn, releasing and taking it changes no list
        self._top: UpstreamConnection | None = None
        self._idle: list[UpstreamConnection] = []
        # connections in use: each has ``in_use`` set, and they are counted (no container
        # operation per request); every open connection is also in ``_connections``, from its
        # connect to its close, for closing them all
        self._in_use = 0
        self._connections: set[UpstreamConnection] = set()
        self._max_connections = max_connections
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def tls(self) -> bool:
        return self._ssl is not None

    @property
    def idle_count(self) -> int:
        return len(self._idle) + (self._top is not None)

    @property
    def active_count(self) -> int:
        return self._in_use

    def start(self) -> None:
        self._schedule_sweep()

    def try_acquire(self, now: Seconds = 0.0) -> UpstreamConnection | None:
        """An idle keep-alive connection, or None (then :meth:`acquire` connects). ``now``:
        the pool's clock (``_wire.perf_counter``) as the caller read it (0: read here)."""
        conn: UpstreamConnection | None = self._top
        idle = self._idle
        if conn is not None:
            self._top = None
        elif idle:
            conn = idle.pop()
        else:
            return None
        if not now:
            now = perf_counter()
        while True:
            if not conn.closed:
                if now - conn.idle_since <= self._idle_timeout:
                    conn.reused = True
                    conn.in_use = True
                    self._in_use += 1
                    return conn
                conn.close()
            if not idle:
                return None
            conn = idle.pop()

    async def acquire(self) -> UpstreamConnection:
        conn = self.try_acquire()
        if conn is not None:
            return conn
        return await self.connect()

    async def connect(self) -> UpstreamConnection:
        if self._closed:
            raise UpstreamError("the upstream pool is closed")
        loop = asyncio.get_running_loop()
        if self._in_use + self._connecting >= self._max_connections:
            conn = await self._wait_for_slot(loop)
            if conn is not None:
                return conn
        self._connecting += 1
        try:
            return await self._open(loop)
        finally:
            self._connecting -= 1

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop) -> UpstreamConnection | None:
        """Until a connection is released (then an idle one, or None: open one)."""
        deadline = loop.time() + self._connect_timeout
        while self._in_use + self._connecting >= self._max_connections:
            remaining = deadline - loop.time()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    await waiter
            except TimeoutError:
                raise PoolFull(
                    f"{self._max_connections} connections to Harbor in use "
                    f"(MAX_UPSTREAM_CONNECTIONS) for {self._connect_timeout:g}s"
                ) from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if self._closed:
                raise UpstreamError("the upstream pool is closed")
            conn = self.try_acquire()
            if conn is not None:
                return conn
        return None

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _open(self, loop: asyncio.AbstractEventLoop) -> UpstreamConnection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._ssl is None:
                    conn = UpstreamConnection(self)
                    conn.attach(await self._plain_socket(loop))
                else:
                    _, conn = await loop.create_connection(
                        lambda: UpstreamConnection(self),
                        self.host,
                        self.port,
                        ssl=self._ssl,
                        server_hostname=self.host,
                    )
        except TimeoutError:
            raise UpstreamError(
                f"connecting to Harbor timed out after {self._connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to Harbor: {exc.strerror or exc}") from None
        conn.reused = False
        conn.in_use = True
        self._in_use += 1
        self._connections.add(conn)
        return conn

    async def _plain_socket(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """A connected non-blocking TCP socket to Harbor: each address of its name in turn."""
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"no address for {self.host}")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:  # cancelled (the connect timeout): nothing is left open
                sock.close()
                raise
            return sock
        raise error

    def release(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        self._give_back(conn)
        if len(self._waiters) != 0:  # (a length, not a truth test of a deque)
            self._wake()
        top = self._top
        if (not keep_alive or conn.closed or self._closed
                or len(self._idle) + (top is not None) >= self._max_idle):  # fmt: skip
            conn.close()
            return
        conn.idle_since = perf_counter()
        self._push(conn)

    def _push(self, conn: UpstreamConnection) -> None:
        """``conn`` on top of the idle stack."""
        top = self._top
        if top is not None:
            self._idle.append(top)
        self._top = conn

    def _stack(self) -> list[UpstreamConnection]:
        """The idle stack, bottom to top."""
        top = self._top
        return self._idle if top is None else [*self._idle, top]

    def _give_back(self, conn: UpstreamConnection) -> None:
        """``conn`` is no longer in use (if it was)."""
        if conn.in_use:
            conn.in_use = False
            self._in_use -= 1

    def sinks(self) -> list[Sink]:
        """The sinks of the responses in progress on the open connections."""
        return [conn._sink for conn in self._connections if conn._sink is not None]

    def forget(self, conn: UpstreamConnection) -> None:
        """``conn`` is closed."""
        self._give_back(conn)
        self._connections.discard(conn)
        if self._waiters:
            self._wake()
        # closed idle connections are skipped lazily by acquire() and the sweeper

    def _schedule_sweep(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        interval = max(0.5, min(self._idle_timeout / 2, 15.0))
        self._sweeper = loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        deadline = perf_counter() - self._idle_timeout
        stack = self._stack()
        self._top = None
        self._idle = []
        for conn in stack:
            if conn.closed:
                continue
            if conn.idle_since < deadline:
                conn.close()
            else:
                self._push(conn)
        self._schedule_sweep()

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in [*self._connections]:  # (idle ones too: each open one is there)
            conn.close()
        self._top = None
        self._idle.clear()
        self._connections.clear()
