"""The client side of the data plane: one asyncio Protocol per connection, httptools parser.

Theory of operation: parser callbacks only record what arrived; a complete request goes on a
queue, and one task per connection answers the queue in order, so pipelined requests get their
responses in the order they were sent. Reading pauses while too many requests wait (pipelining
backpressure) and while a response is being relayed and the client reads slower than Harbor
sends (write backpressure: ``pause_writing`` pauses the upstream connection of the relay). All
registry errors become responses in :meth:`HttpProtocol._answer`, the one boundary.

That boundary is also where every request is accounted (metrics, access log): the handler
leaves what it learnt on the :class:`Request` (route kind, project, cache result), the
response's status is read from the first bytes written for it, and :meth:`write` counts the
bytes. The accounting is a few integer updates; the access line is a tuple appended to a
buffer that a timer formats later (``logs.AccessLog``).

A request head that comes whole in one read, between requests, and is of the plainest kind
(``_wire.scan_request``: a GET or HEAD without a body, within the limits) is read by one
compiled scan instead of the parser; everything else, and every error, is the parser's.

Limits (``MAX_HEADERS``, ``MAX_URL_BYTES``) are checked in the parser callbacks; the three
timeouts (``HEADER_TIMEOUT``, ``KEEPALIVE_TIMEOUT``, ``CLIENT_SEND_TIMEOUT``) are not timers per
request but one periodic sweep over every connection (:class:`Connections`): a request costs
two timestamps, and a connection is judged a few times per timeout, which is as precise as a
slowloris defence needs. ``CLIENT_SEND_TIMEOUT`` judges a connection only while it is the
client's turn (the transport's writing paused, or a splice waiting for the client) and cuts it
off once nothing moved for that long: a client that stops reading cannot hold its upstream
connection, nor the buffered rest of its response, for good.
The same registry of connections enforces ``MAX_CONNECTIONS`` and drains them on shutdown.
A refusal at the limit and a close by a timeout are counted where they happen
(``Metrics.connections_rejected``, ``Metrics.connections_closed``): nothing per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, cast

import httptools

from . import errors, responses
from ._wire import RequestScan, Seconds, perf_counter, scan_request, write_to
from .metrics import (
    CLIENT_CLOSED,
    HEADER_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    KIND_TYPES,
    OTHER_KIND,
    SEND_TIMEOUT,
    Count,
    Metrics,
)
from .responses import Status
from .routes import ALLOW_HEADER, BLOB, PULL_METHODS
from .splice import plain_fd, unsent

if TYPE_CHECKING:
    from .breaker import Breaker
    from .logs import AccessLog
    from .projects import Project
    from .relay import Relay

log = logging.getLogger("harbor_router.protocol")

MAX_PIPELINED = 16
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
_HTTP_VERSIONS = frozenset({"1.0", "1.1"})
_UNPARSED_VERSIONS = _HTTP_VERSIONS | {"0.0"}  # 0.0: the parser failed before the version
_TOO_MANY_CONNECTIONS = responses.for_error(
    errors.Unavailable("too many client connections"),
    close=True,
)
MAX_SWEEP_INTERVAL = 1.0


class Connections:
    """Every client connection of one listener, the limits they share, and the sweep.

    ``draining`` (set by :meth:`drain` on shutdown) makes every connection close once its
    current response is complete; idle ones are closed at once."""

    __slots__ = (
        "_timer",
        "active",
        "draining",
        "header_timeout",
        "interval",
        "keepalive_timeout",
        "max_connections",
        "max_headers",
        "max_url_bytes",
        "send_timeout",
    )

    def __init__(
        self,
        *,
        max_connections: int = 10_000,
        max_headers: int = 100,
        max_url_bytes: int = 8192,
        header_timeout: float = 10.0,
        keepalive_timeout: float = 75.0,
        send_timeout: float = 60.0,
    ) -> None:
        self.active: set[HttpProtocol] = set()
        self.draining = False
        self.max_connections = max_connections
        self.max_headers = max_headers
        self.max_url_bytes = max_url_bytes
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.send_timeout = send_timeout
        self.interval = min(
            MAX_SWEEP_INTERVAL, header_timeout / 4, keepalive_timeout / 4, send_timeout / 4
        )
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._sweep)
        now = monotonic()
        for conn in tuple(self.active):
            conn.check_time(now)

    def drain(self) -> None:
        """Shutdown: no more keep-alive; idle connections are closed now. One whose request
        head is arriving is answered first (within HEADER_TIMEOUT)."""
        self.draining = True
        for conn in tuple(self.active):
            if conn.idle:
                conn.close()

    def abort_all(self) -> None:
        for conn in tuple(self.active):
            conn.close()


class Request:
    """What the client sent: method, raw target split, lowercased header names with values.

    ``kind`` (route kind, -1 until parsed), ``project`` and ``cache`` (a ``metrics`` lookup
    result) are set by the handler for the accounting at the boundary."""

    __slots__ = (
        "cache",
        "client_ip",
        "error",
        "fast",
        "fast_breaker",
        "fast_project",
        "headers",
        "http11",
        "keep_alive",
        "kind",
        "method",
        "path",
        "project",
        "query",
        "route",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        http11: bool,
        keep_alive: bool,
        client_ip: str,
        error: errors.RegistryError | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.client_ip = client_ip
        self.error = error
        self._unanswered()

    def scanned(self, scan: RequestScan, keep_alive: bool, client_ip: str) -> None:
        """What ``__init__`` does with the fields of a head ``_wire.scan_request`` read (no
        error; ``keep_alive``: the connection's verdict): a request made by
        ``Request.__new__(Request)`` and set up by this call is the one the constructor makes
        of them (compiled, C calls instead of the constructor's argument matching)."""
        self.method = scan.method
        self.path = scan.path
        self.query = scan.query
        self.headers = scan.headers
        self.http11 = scan.http11
        self.keep_alive = keep_alive
        self.client_ip = client_ip
        self.error = None
        self._unanswered()

    def _unanswered(self) -> None:
        """What the handler learns of the request, as yet unknown."""
        self.kind = OTHER_KIND
        self.project = ""
        self.cache = ""
        # a request started on the fast path: its relay, and the project and breaker it went to
        self.fast: Relay | None = None
        self.fast_project: Project | None = None
        self.fast_breaker: Breaker | None = None
        self.route: Any = None  # the parsed route, once the handler has parsed it

    def header(self, lower_name: bytes) -> bytes | None:
        for name, value in self.headers:
            if name == lower_name:
                return value
        return None


Handler = Callable[[Request, "HttpProtocol"], Awaitable[None]]


class FastPath:
    """A handler that can start some requests without a task (``handler.RequestHandler``).
    A base class rather than a typing protocol: compiled, the protocol calls these through
    the C method table."""

    __slots__ = ()

    def fast(self, request: Request, client: HttpProtocol, now: Seconds) -> Relay | None:
        """Start ``request`` from this callback if it is a plain cache hit (None: it is not);
        ``now``: ``_wire.perf_counter()`` read at its start, the reading its clocks use."""
        raise NotImplementedError

    def finish_fast(self, request: Request, client: HttpProtocol, now: Seconds) -> bool:
        """The fast start's relay ended: True when that was a complete answer (accounted)."""
        raise NotImplementedError

    async def resume(self, request: Request, client: HttpProtocol) -> None:
        """Everything after a fast start that did not simply succeed."""
        raise NotImplementedError


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_access",
        "_broken",
        "_client_ip",
        "_conns",
        "_drain",
        "_fast",
        "_fast_path",
        "_fast_start",
        "_fd",
        "_handler",
        "_head_bytes",
        "_head_since",
        "_headers",
        "_idle_since",
        "_in_headers",
        "_max_header_bytes",
        "_metrics",
        "_paused_reading",
        "_paused_writing",
        "_queue",
        "_queued",
        "_relay",
        "_scan",
        "_sent",
        "_spliced",
        "_stall_mark",
        "_stall_since",
        "_status",
        "_task",
        "_url",
        "_version",
        "closing",
        "http11",
        "keep_alive",
        "parser",
        "transport",
    )

    def __init__(
        self,
        handler: Handler,
        max_header_bytes: int,
        metrics: Metrics | None = None,
        access: AccessLog | None = None,
        fast_path: FastPath | None = None,
        connections: Connections | None = None,
    ) -> None:
        self._handler = handler
        self._conns = connections if connections is not None else Connections()
        self._fast_path = fast_path
        self._fast: Request | None = None  # the request in flight on the fast path
        self._fast_start: Seconds = 0.0
        self._max_header_bytes = max_header_bytes
        self._metrics = metrics if metrics is not None else Metrics()
        self._access = access
        self._status: Status = 0  # of the response being written (0: no head yet)
        self._sent: Count = 0  # bytes written for it
        self._spliced = False
        self.transport: asyncio.Transport | None = None
        self._fd = -1  # the transport's plain socket, written directly (_wire.write_to)
        self._queued = False  # a write may wait in the transport's buffer
        self.parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._relay: Relay | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._client_ip = ""
        self._url = b""
        self._version = ""  # of the request whose head is complete
        self._headers: list[tuple[bytes, bytes]] = []
        self._scan = RequestScan()  # what scan_request read of the last head it took
        self._head_bytes = 0
        self._in_headers = False
        self._head_since = 0.0  # when the pending request head began (0: none pending)
        self._idle_since = 0.0  # when a sweep first saw the connection idle (0: not idle)
        # when a sweep first saw the client taking nothing of its response (0: not seen), and
        # where things stood then (the socket's unacknowledged bytes, the transport's buffered
        # ones, the relay's progress)
        self._stall_since = 0.0
        self._stall_mark: object = None
        self._broken = False
        self.closing = False
        self.http11 = True
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        conns = self._conns
        if len(conns.active) >= conns.max_connections:
            self.closing = True
            self._metrics.connections_rejected += 1
            transport.write(_TOO_MANY_CONNECTIONS)
            transport.close()
            return
        conns.active.add(self)
        self._fd = plain_fd(transport)
        self._head_since = monotonic()  # the first head is due HEADER_TIMEOUT from now
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        peer = transport.get_extra_info("peername")
        self._client_ip = peer[0] if isinstance(peer, tuple) else ""

    def data_received(self, data: bytes) -> None:
        if self.closing or self._broken:
            return
        if not self._in_headers:  # between requests: a whole plain head needs no parser
            conns = self._conns
            scan = self._scan
            if scan_request(data, self._max_header_bytes, conns.max_url_bytes, conns.max_headers,
                            scan):  # fmt: skip
                self._head_since = self._idle_since = 0.0
                keep_alive = scan.keep_alive and not conns.draining
                # made and set up in two C calls (compiled) rather than through the constructor
                request: Request = Request.__new__(Request)
                request.scanned(scan, keep_alive, self._client_ip)
                self._enqueue(request)
                return
        if self._in_headers:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_header_bytes:
                self._refuse(errors.HeadersTooLarge("request line and headers are too large"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(errors.BadRequestClose("protocol upgrades are not supported"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, errors.RegistryError):
                self._refuse(cause)
            else:
                self._refuse(errors.BadRequestClose("malformed HTTP request"))
        except httptools.HttpParserError as exc:
            if self.parser.get_http_version() not in _UNPARSED_VERSIONS:  # HTTP/2.0 preface too
                self._refuse(
                    errors.VersionNotSupported("HTTP version not supported: 1.0 and 1.1 only")
                )
            else:
                self._refuse(errors.BadRequestClose("malformed HTTP request", str(exc)[:200]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._conns.active.discard(self)
        self._queue.clear()
        relay = self._relay
        if relay is not None:
            self._relay = None
            relay.abort()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("client closed the connection"))
        if self._task is not None and relay is None:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._paused_writing = True
        if self._relay is not None:
            self._relay.pause()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._stall_since = 0.0
        if self._relay is not None:
            self._relay.resume()
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._in_headers = True
        self._head_bytes = 0
        self._head_since = monotonic()
        self._idle_since = 0.0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._conns.max_url_bytes:
            raise errors.UriTooLong("request target is too long")
        self._head_bytes += len(url)
        if self._head_bytes > self._max_header_bytes:
            raise errors.HeadersTooLarge("request line and headers are too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name.lower(), value))
        if len(headers) > self._conns.max_headers:
            raise errors.HeadersTooLarge("too many header fields")
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_header_bytes:
            raise errors.HeadersTooLarge("request line and headers are too large")

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._head_since = 0.0
        self._version = version = self.parser.get_http_version()
        if version not in _HTTP_VERSIONS:
            raise errors.VersionNotSupported("HTTP version not supported: 1.0 and 1.1 only")
        if self._url[:1] != b"/":
            # absolute-form (a proxy request), authority-form or "*": never a registry path
            raise errors.BadRequestClose("the request target must be a path")
        error = None
        for name, _ in self._headers:
            if name in _BODY_HEADERS:
                error = self._body_error()
                break
        if error is not None:
            # The body is not read: answer (in order) and close. Nothing after such a request
            # can be trusted to start at a message boundary, and a push is not worth receiving.
            self._enqueue(self._make_request(error))
            self._broken = True
            if self.transport is not None:
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if not self._broken:
            self._enqueue(self._make_request())

    def _body_error(self) -> errors.RegistryError | None:
        headers = self._headers
        lengths = [v for n, v in headers if n == b"content-length"]
        chunked = any(n == b"transfer-encoding" for n, _ in headers)
        if chunked and lengths:
            return errors.BadRequestClose("both Content-Length and Transfer-Encoding were sent")
        if not chunked and all(v.strip() == b"0" for v in lengths):
            return None
        method = self.parser.get_method().decode("ascii", "replace")
        if method not in PULL_METHODS:
            error: errors.RegistryError = errors.MethodNotAllowed(
                "harbor-router serves pulls only", {"method": method}, headers=ALLOW_HEADER
            )
        else:
            error = errors.BadRequest("request bodies are not accepted", {"method": method})
        error.close = True
        return error

    def _enqueue(self, request: Request) -> None:
        if self.closing:
            return
        queue = self._queue
        if (
            self._fast_path is not None
            and self._task is None
            and self._fast is None
            and len(queue) == 0  # (compiled, cheaper than a deque's truth test)
            and request.error is None
            and self._start_fast(request)
        ):
            return
        queue.append(request)
        if len(queue) >= MAX_PIPELINED and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()
        if self._task is None and self._fast is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    # the fast path: a plain cache hit answered from callbacks, with no task
    def _start_fast(self, request: Request) -> bool:
        assert self._fast_path is not None
        self.http11 = request.http11
        self.keep_alive = request.keep_alive
        self._status = self._sent = 0
        self._spliced = False
        start: Seconds = perf_counter()  # one reading: the request's start and its clocks'
        relay = self._fast_path.fast(request, self, start)
        if relay is None:
            return False
        self._metrics.inflight += 1
        self._fast = request
        self._fast_start = start
        relay.waiter = self  # told from the upstream's callbacks at the end
        if relay.finished:
            relay.waiter = None
            self.fast_done(relay)
        return True

    def fast_done(self, relay: Relay) -> None:
        request = self._fast
        assert request is not None and self._fast_path is not None
        self._fast = None
        now: Seconds = perf_counter()
        if not self._fast_path.finish_fast(request, self, now):
            # anything but a complete answer: the normal path takes over, in order
            self._task = asyncio.get_running_loop().create_task(self._run(request))
            return
        self._metrics.inflight -= 1
        if not self.closing and (not self.keep_alive or self._conns.draining):
            self.close()
        self._account(request, self._fast_start, now)
        if len(self._queue) != 0 and self._task is None and not self.closing:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _make_request(self, error: errors.RegistryError | None = None) -> Request:
        parser = self.parser
        method = parser.get_method().decode("ascii", "replace")
        http11 = self._version == "1.1"
        keep_alive = bool(parser.should_keep_alive()) and not self._conns.draining
        headers = self._headers
        path = query = ""
        try:
            url = httptools.parse_url(self._url)
            path = (url.path or b"").decode("latin-1")
            query = (url.query or b"").decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            error = error or errors.BadRequest("malformed request target")
        return Request(
            method,
            path,
            query,
            headers,
            http11=http11,
            keep_alive=keep_alive,
            client_ip=self._client_ip,
            error=error,
        )

    # answering
    async def _run(self, resumed: Request | None = None) -> None:
        queue = self._queue
        try:
            if resumed is not None:
                await self._answer(resumed, resumed=True)
            while queue and not self.closing:
                request = queue.popleft()
                if self._paused_reading and len(queue) < MAX_PIPELINED // 2 and self.transport:
                    self._paused_reading = False
                    self.transport.resume_reading()
                await self._answer(request)
        finally:
            self._task = None

    async def _answer(self, request: Request, *, resumed: bool = False) -> None:
        if resumed:  # started on the fast path: state and accounting carry on
            start = self._fast_start
        else:
            self.http11 = request.http11
            self.keep_alive = request.keep_alive
            self._status = self._sent = 0
            self._spliced = False
            self._metrics.inflight += 1
            start = perf_counter()
        try:
            if request.error is not None:
                raise request.error
            if resumed:
                assert self._fast_path is not None
                await self._fast_path.resume(request, self)
            else:
                await self._handler(request, self)
            return
        except errors.RegistryError as exc:
            if self.closing:
                return
            head_only = request.method == "HEAD"
            close = exc.close or not self.keep_alive
            self.write(responses.for_error(exc, head_only=head_only, close=close))
            if exc.close:
                self.keep_alive = False
        except errors.ResponseAborted:
            self.keep_alive = False  # the client has part of a response: only closing is left
        except asyncio.CancelledError:
            raise
        except Exception:
            if self.closing:
                return
            log.exception("unexpected error answering %s %s", request.method, request.path)
            error = errors.RegistryError("internal error")
            head_only = request.method == "HEAD"
            self.write(responses.for_error(error, head_only=head_only, close=True))
            self.keep_alive = False
        finally:
            if not self.closing and (not self.keep_alive or self._conns.draining):
                self.close()
            self._metrics.inflight -= 1
            self._account(request, start)

    def _account(self, request: Request, start: Seconds, now: Seconds = 0.0) -> None:
        duration = (now or perf_counter()) - start
        status: Status = self._status
        if status == 0:
            status = CLIENT_CLOSED
        method, kind, sent = request.method, request.kind, self._sent
        metrics = self._metrics
        metrics.request_done(method, kind, status, duration, sent)
        if kind == BLOB and method == "GET":
            metrics.blob_done(_blob_result(status, self._spliced), duration)
        access = self._access
        if access is not None:
            access.append((time.time(), method, request.path, status, KIND_TYPES[kind],
                           duration, request.client_ip, request.project, request.cache,
                           sent))  # fmt: skip

    # used by handlers and relays
    def write_response(self, data: bytes, status: Status) -> None:
        """Write bytes that begin with the head of a response with ``status``."""
        if self.transport is not None and not self.closing:
            if self._status == 0:
                self._status = status
            self._sent += len(data)
            self._queued = write_to(self.transport, self._fd, self._queued, data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            if self._status == 0 and data[:5] == b"HTTP/":
                self._status = int(data[9:12])
            self._sent += len(data)
            self._queued = write_to(self.transport, self._fd, self._queued, data)

    def count_spliced(self, moved: int) -> None:
        """Body bytes the kernel moved to this client (``splice.py``) for this response."""
        self._sent += moved
        self._spliced = True

    async def drain(self) -> None:
        if not self._paused_writing or self.closing:
            return
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()
        await self._drain

    def begin_response(self, relay: Relay) -> None:
        self._relay = relay
        if self._paused_writing:
            relay.pause()

    def end_response(self, relay: Relay) -> None:
        if self._relay is relay:
            self._relay = None

    @property
    def idle(self) -> bool:
        """No response in progress, none waiting, no request head arriving."""
        return not (self._task is not None or self._fast is not None or self._queue
                    or self._in_headers)  # fmt: skip

    def check_time(self, now: float) -> None:
        """The sweep's look at this connection: a client that takes nothing of its response,
        an overdue head, or idle for too long."""
        if self.closing or self._broken:
            return
        relay = self._relay
        if self._paused_writing or (relay is not None and relay.client_turn()):
            if self._send_stalled(now, relay):
                return
        else:
            self._stall_since = 0.0
        if self._task is not None or self._fast is not None or self._queue:
            self._idle_since = 0.0
            return
        conns = self._conns
        if self._in_headers:
            if now - self._head_since > conns.header_timeout:
                self._metrics.connections_closed[HEADER_TIMEOUT] += 1
                self._refuse(errors.RequestTimeout("the request head took too long"))
        elif conns.draining:
            self.close()
        elif self._head_since:  # connected, sent nothing yet
            if now - self._head_since > conns.header_timeout:
                self._metrics.connections_closed[HEADER_TIMEOUT] += 1
                self.close()
        elif not self._idle_since:
            self._idle_since = now
        elif now - self._idle_since > conns.keepalive_timeout:
            self._metrics.connections_closed[KEEPALIVE_TIMEOUT] += 1
            self.close()

    def _send_stalled(self, now: float, relay: Relay | None) -> bool:
        """The client's turn: cut it off (True) once nothing moved for CLIENT_SEND_TIMEOUT:
        the client acknowledged nothing of the socket's send queue, the transport's buffer
        and the relay (its splice) stood still."""
        transport = self.transport
        if transport is None:
            return False
        progress = None if relay is None else relay.progress()
        mark = (unsent(self._fd), transport.get_write_buffer_size(), progress)
        if not self._stall_since or mark != self._stall_mark:
            self._stall_since = now
            self._stall_mark = mark
            return False
        if now - self._stall_since <= self._conns.send_timeout:
            return False
        self._metrics.connections_closed[SEND_TIMEOUT] += 1
        self._stall_mark = None
        self.closing = True
        transport.abort()  # its buffer is dropped: the client has taken nothing of it
        return True

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if self.transport is not None:
                self.transport.close()

    def _refuse(self, error: errors.RegistryError) -> None:
        """Answer unparseable input after the responses already owed, then close."""
        if self.closing:
            return
        self._broken = True
        if self.transport is not None:
            self.transport.pause_reading()
        if self._task is None and self._fast is None and not self._queue:
            start = perf_counter()
            self._status = self._sent = 0
            self.write(responses.for_error(error, close=True))
            self.close()
            self._account(Request("", "", "", [], http11=True, keep_alive=False,
                                  client_ip=self._client_ip), start)  # fmt: skip
            return
        request = Request("", "", "", [], http11=True, keep_alive=False, client_ip="", error=error)
        self._queue.append(request)


def _blob_result(status: int, spliced: bool) -> str:
    if 200 <= status < 300:
        return "splice" if spliced else "copy"
    if status == 304:
        return "not_modified"
    if 300 <= status < 400:
        return "redirect"
    return "error"
