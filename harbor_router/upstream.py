"""Keep-alive connections to Harbor, one raw asyncio Protocol each (the data plane's client side).

Theory of operation: a request borrows a connection from :class:`UpstreamPool`, writes one joined
request head and hands the connection a *sink* (``relay.Relay``) that receives the response as
httptools parses it: ``on_head`` once, ``on_body`` per chunk, then ``on_complete`` or ``on_lost``.
Each response gets a fresh parser, so a HEAD response (which the httptools response parser cannot
finish by itself) simply ends at its headers. A connection goes back to the idle stack only after
a complete response that allows keep-alive; idle ones are closed after ``IDLE_CONN_TIMEOUT`` and
never more than ``MAX_IDLE_CONNS_PER_HOST`` are kept.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Protocol, cast

import httptools

NO_BODY_STATUSES = frozenset({204, 304})
READ_HIGH_WATER = 256 * 1024


class Sink(Protocol):
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self) -> None: ...

    def on_lost(self, exc: BaseException | None, received_any: bool) -> None: ...


class UpstreamError(Exception):
    """The upstream connection failed; ``received_any`` tells whether a response had begun."""

    def __init__(self, message: str, received_any: bool = False) -> None:
        super().__init__(message)
        self.received_any = received_any


class _Response:
    """httptools callbacks for one upstream response; dead once it has ended."""

    __slots__ = ("conn", "head_only", "headers", "parser", "sink")

    def __init__(self, conn: UpstreamConnection, sink: Sink, head_only: bool) -> None:
        self.conn = conn
        self.sink: Sink | None = sink
        self.head_only = head_only
        self.headers: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        sink = self.sink
        if sink is None:
            return
        status: int = self.parser.get_status_code()
        if status < 200:  # interim response: the real one follows
            self.headers = []
            return
        sink.on_head(status, self.headers)
        if self.head_only or status in NO_BODY_STATUSES:
            self._end()

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.on_body(body)

    def on_message_complete(self) -> None:
        if self.sink is not None:
            self._end()

    def _end(self) -> None:
        sink = self.sink
        assert sink is not None
        self.sink = None
        keep_alive = bool(self.parser.should_keep_alive())
        self.conn.response_ended(keep_alive)
        sink.on_complete()


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("_response", "closed", "idle_since", "pool", "received_any", "reused", "transport")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._response: _Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self.received_any = False
        self.reused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        self.received_any = True
        try:
            response.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lost(exc)
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._lost(exc)

    # used by the data plane
    def send(self, head: bytes, sink: Sink, head_only: bool) -> None:
        assert self.transport is not None
        self._response = _Response(self, sink, head_only)
        self.received_any = False
        self.transport.write(head)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    @property
    def plain(self) -> bool:
        """Plain TCP (no TLS): the socket itself carries the body bytes."""
        return self.pool.tls is False and self.transport is not None and not self.closed

    def fileno(self) -> int:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def body_moved(self) -> None:
        """The rest of the current response's body was moved past the parser (``splice``):
        end the response as if the parser had seen it, keep-alive rules unchanged."""
        response = self._response
        if response is not None and response.sink is not None:
            response._end()

    def feed(self, data: bytes) -> None:
        """Bytes taken from the socket past the transport (a refused splice): parse them."""
        if data:
            self.data_received(data)

    def abandon(self) -> None:
        """The client went away mid-response: the rest of it is not worth reading."""
        self._response = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    # internal
    def response_ended(self, keep_alive: bool) -> None:
        self._response = None
        self.resume_reading()
        self.pool.release(self, keep_alive)

    def _lost(self, exc: BaseException | None) -> None:
        response = self._response
        self._response = None
        if response is not None and response.sink is not None:
            sink = response.sink
            response.sink = None
            sink.on_lost(exc, self.received_any)


class UpstreamPool:
    """Idle keep-alive connections to one Harbor address; LIFO reuse, bounded, expiring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        max_idle: int,
        idle_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._idle: list[UpstreamConnection] = []
        self._active: set[UpstreamConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def tls(self) -> bool:
        return self._ssl is not None

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def active_count(self) -> int:
        return len(self._active)

    def start(self) -> None:
        self._schedule_sweep()

    def try_acquire(self) -> UpstreamConnection | None:
        """An idle keep-alive connection, or None (then :meth:`acquire` connects)."""
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self._idle_timeout:
                conn.close()
                continue
            conn.reused = True
            self._active.add(conn)
            return conn
        return None

    async def acquire(self) -> UpstreamConnection:
        conn = self.try_acquire()
        if conn is not None:
            return conn
        return await self.connect()

    async def connect(self) -> UpstreamConnection:
        if self._closed:
            raise UpstreamError("the upstream pool is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamError(
                f"connecting to Harbor timed out after {self._connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to Harbor: {exc.strerror or exc}") from None
        conn.reused = False
        self._active.add(conn)
        return conn

    def release(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        self._active.discard(conn)
        if not keep_alive or conn.closed or self._closed or len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._active.discard(conn)
        # closed idle connections are skipped lazily by acquire() and the sweeper

    def _schedule_sweep(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        interval = max(0.5, min(self._idle_timeout / 2, 15.0))
        self._sweeper = loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        deadline = time.monotonic() - self._idle_timeout
        keep = []
        for conn in self._idle:
            if conn.closed:
                continue
            if conn.idle_since < deadline:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep
        self._schedule_sweep()

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in [*self._idle, *self._active]:
            conn.close()
        self._idle.clear()
        self._active.clear()
