"""Relay: the sink that streams one upstream response to the client, or captures it.

Theory of operation: the relay decides at the response head, inside the upstream parser callback,
whether the status is the client's to see (its ``relay_status``: a pull's, all or none). If so
the head is rewritten and written with the body bytes of the same read: what one upstream read
produced goes to the client in one write (``flush``), with no task switch and no buffering
beyond that read and the transports' own; when the client's write buffer fills, the upstream
connection stops reading until it drains. If not (a miss, an error the router must translate),
the head and a bounded prefix of the body are captured for the handler, which decides what the
client gets.

A large body with a ``Content-Length`` between two plain TCP sockets is *spliced* instead
(``splice.py``): at the head the upstream transport is paused, the body bytes that came with the
head are written like any chunk, and on the next loop turn the rest moves socket → pipe →
socket in the kernel, never entering Python. When it is done the connection goes back to the
pool as after any complete response. If the kernel refuses the splice, the copy path finishes
the response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from . import responses, splice
from ._wire import ResponseScan, Seconds, head_fields, renamed_tag_response, whole_response
from .headers import Rewriter
from .responses import Status, status_line
from .splice import Splice, SpliceStats
from .upstream import Sink, UpstreamConnection, UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from .metrics import Count
    from .protocol import HttpProtocol

# What happens to the body.
CAPTURE, RAW, CHUNKED, SPLICE = 0, 1, 2, 3

CAPTURE_LIMIT = 64 * 1024
# Smallest body worth a splice. Setting one up costs two dups, a pipe, two fcntl, two epoll
# registrations and a loop turn; a body this small usually arrives whole with its head (uvloop
# reads up to 256 KiB at a time) and the copy path moves it in one write.
SPLICE_MIN_BYTES = 64 * 1024
SPLICE_STATUSES = frozenset({200, 206})
# the headers of a relay no captured head has come to (shared: never changed, a relay only
# replaces its own)
NO_HEADERS: Final[Sequence[tuple[bytes, bytes]]] = ()


# Which statuses a relay streams to the client (``relay_status``); the rest it captures:
# RELAY_PULL, those a pull passes through as Harbor sent them (the rest are translated,
# DESIGN §3.2); CAPTURE_ALL, none; RELAY_ALL, every one; RENAME_TAGS, a tag list's 200 that
# came whole in one read, in the plain form, written with the relay's ``tag_name`` in it
# (``_wire.renamed_tag_response``), and nothing else (the rest are captured, for the handler
# to rename).
RELAY_PULL, CAPTURE_ALL, RELAY_ALL, RENAME_TAGS = 0, 1, 2, 3


class HeadTimeout(Exception):
    """No response head within the deadline; the upstream connection was closed."""


class ReadTimeout(UpstreamError):
    """Harbor sent nothing of a response body for ``UPSTREAM_READ_TIMEOUT`` while the router
    was ready to read it; the upstream connection was closed."""


class BodyWatch:
    """Response bodies that outlast one read, checked once per ``tick`` for a stalled Harbor.

    A relay is watched from the end of the first read that leaves its response unfinished
    (a manifest that comes whole in one read never is) to its end. Each tick compares its
    progress with the last tick's; time counts only while the relay waits on Harbor (reading
    enabled, or a splice with an empty pipe), not while a slow client holds it back. No
    timer per read: a stall is seen within ``timeout + tick``.
    """

    __slots__ = ("_handle", "_tick", "_watched", "timeout")

    def __init__(self, timeout: float, tick: float = 1.0) -> None:
        self.timeout = timeout
        self._tick = min(tick, timeout / 2)
        self._watched: dict[Relay, tuple[object, float]] = {}
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, relay: Relay) -> None:
        loop = asyncio.get_running_loop()
        self._watched[relay] = (relay.progress(), loop.time())
        if self._handle is None:
            self._handle = loop.call_later(self._tick, self._check)

    def unwatch(self, relay: Relay) -> None:
        self._watched.pop(relay, None)

    def __len__(self) -> int:
        return len(self._watched)

    def _check(self) -> None:
        self._handle = None
        watched = self._watched
        if not watched:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        stalled = []
        for relay, (seen, since) in watched.items():
            progress = relay.progress()
            if progress != seen or not relay.waiting_on_upstream():
                watched[relay] = (progress, now)
            elif now - since >= self.timeout:
                stalled.append(relay)
        for relay in stalled:
            del watched[relay]
            relay.stall(self.timeout)
        if watched:
            self._handle = loop.call_later(self._tick, self._check)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._watched.clear()


class HeadDeadlines:
    """Response-head deadlines of the relays in flight on ``pool``'s connections, checked by
    one coarse ticker.

    A timer per request costs more than the rest of a cache hit's bookkeeping, and so does a
    container the relay is put in and taken out of; a head deadline only needs to fire about on
    time. So a relay waiting for its head holds its deadline itself (``head_due``, 0: none) and
    is its connection's sink; the deadlines only count the waiting relays, and one callback
    every ``tick`` seconds (only while some wait) looks through the pool's connections for the
    overdue ones and expires them.
    """

    __slots__ = ("_due", "_handle", "_now", "_pool", "_seconds", "_tick", "waiting")

    def __init__(self, pool: UpstreamPool, tick: float = 0.1) -> None:
        self._pool = pool
        self._tick: Seconds = tick
        self.waiting: Count = 0  # relays watched and not yet unwatched
        self._handle: asyncio.TimerHandle | None = None
        # the loop's clock at the last tick (a deadline may be a tick late)
        self._now: Seconds = 0.0
        # the deadline of a head asked for now with ``_seconds`` to go (0: to be computed),
        # the same for every relay until the next tick
        self._due: Seconds = 0.0
        self._seconds: Seconds = 0.0

    def watch(self, relay: Relay, seconds: Seconds) -> None:
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._now = loop.time()
            self._handle = loop.call_later(min(self._tick, seconds), self._check)
            self._due = 0.0
        if self._due == 0.0 or seconds != self._seconds:
            self._seconds = seconds
            self._due = self._now + self._tick + seconds
        relay.head_due = self._due
        self.waiting += 1

    def unwatch(self, relay: Relay) -> None:
        if relay.head_due != 0.0:
            relay.head_due = 0.0
            self.waiting -= 1

    def __len__(self) -> int:
        return self.waiting

    def _watched(self) -> list[Relay]:
        """The relays in flight on the pool's connections that wait for their head."""
        found: list[Relay] = []
        for sink in self._pool.sinks():
            if isinstance(sink, Relay) and sink.head_due:
                found.append(sink)
        return found

    def _check(self) -> None:
        self._handle = None
        if self.waiting <= 0:
            return
        loop = asyncio.get_running_loop()
        now = self._now = loop.time()
        self._due = 0.0
        for relay in self._watched():
            if relay.head_due <= now:
                relay.expire()
        if self.waiting > 0:
            self._handle = loop.call_later(self._tick, self._check)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for relay in self._watched():
            self.unwatch(relay)


class Relay(Sink):
    __slots__ = (
        "_bodies",
        "_capture_limit",
        "_client",
        "_deadlines",
        "_early",
        "_future",
        "_head_status",
        "_length",
        "_out",
        "_received",
        "_relay_status",
        "_rewriter",
        "_splice",
        "_splice_min",
        "_stats",
        "_watching",
        "body",
        "conn",
        "error",
        "finished",
        "head_due",
        "head_only",
        "headers",
        "mode",
        "start",
        "started",
        "status",
        "tag_name",
        "waiter",
    )

    def __init__(
        self,
        client: HttpProtocol,
        conn: UpstreamConnection,
        rewriter: Rewriter,
        head_only: bool,
        relay_status: int = RELAY_PULL,
        capture_limit: int = CAPTURE_LIMIT,
        splice_min: int | None = None,
        stats: SpliceStats | None = None,
        bodies: BodyWatch | None = None,
    ) -> None:
        self.setup(client, conn, rewriter, head_only, relay_status, capture_limit, splice_min,
                   stats, bodies)  # fmt: skip

    def setup(
        self,
        client: HttpProtocol,
        conn: UpstreamConnection,
        rewriter: Rewriter,
        head_only: bool,
        relay_status: int,
        capture_limit: int,
        splice_min: int | None,
        stats: SpliceStats | None,
        bodies: BodyWatch | None,
    ) -> None:
        """What ``__init__`` does; a relay made by ``Relay.__new__(Relay)`` and set up by this
        call is the same relay (compiled, a C call instead of the constructor's argument
        matching)."""
        self._client = client
        self._bodies = bodies  # watches a body that outlasts a read (None: never)
        self._watching = False
        # body bytes from Harbor through the parser (the body watch's measure; not counted of
        # a scanned response, which ends in the call that brought it and is never watched)
        self._received = 0
        self.conn = conn
        self._rewriter = rewriter
        self._relay_status = relay_status
        self._capture_limit = capture_limit
        self.head_only = head_only
        # The ending: ``finished`` with ``error`` None (a complete response) or the exception;
        # ``waiter`` (the client's protocol, on the fast path) is told at once when it comes,
        # :meth:`wait` awaits it.
        self.finished = False
        self.error: BaseException | None = None
        self.waiter: HttpProtocol | None = None
        self._future: asyncio.Future[None] | None = None
        # what the current read produced for the client (None: nothing yet; made by the first
        # :meth:`_queue`, which a scanned response never needs)
        self._out: list[bytes] | None = None
        self._head_status = 0  # the status of a head waiting in _out
        self.status: Status = 0
        # a captured response's head fields (a relayed one's are not kept)
        self.headers: Sequence[tuple[bytes, bytes]] = NO_HEADERS
        self.body: bytes | bytearray = b""  # what was captured (a bytearray once any came)
        self.mode = CAPTURE
        self.started = False  # the client has seen the response head
        self.start: Seconds = 0.0  # when the request was sent (the forwarder's perf_counter)
        self._deadlines: HeadDeadlines | None = None
        self.head_due: Seconds = 0.0  # when the head is due (HeadDeadlines; 0: not waited for)
        self._splice_min = splice_min  # None: never splice
        self._stats = stats
        self._splice: Splice | None = None
        self._length = 0
        self._early = 0  # body bytes that came with the head (relayed by the copy path)
        # RENAME_TAGS: the client's name for the repository (set once the request is sent)
        self.tag_name = ""

    def arm_timeout(self, deadlines: HeadDeadlines, seconds: float) -> None:
        """Fail with :class:`HeadTimeout` unless the response head arrives in time."""
        self._deadlines = deadlines
        deadlines.watch(self, seconds)

    def _disarm(self) -> None:
        deadlines = self._deadlines
        if deadlines is not None:
            self._deadlines = None
            deadlines.unwatch(self)

    def expire(self) -> None:
        self._disarm()
        if self.status == 0 and not self.finished:
            self._finish(HeadTimeout())
            self.conn.abandon()

    def _finish(self, error: BaseException | None) -> None:
        if self.finished:
            return
        self.finished = True
        if self._deadlines is not None:  # ended before its head (the client left)
            self._disarm()
        if self._watching:
            self._watching = False
            assert self._bodies is not None
            self._bodies.unwatch(self)
        self.error = error
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.fast_done(self)
        future = self._future
        if future is not None and not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def wait(self) -> None:
        """Until the response has been relayed (or captured); raises how it failed."""
        if not self.finished:
            if self._future is None:
                self._future = asyncio.get_running_loop().create_future()
            await self._future
        elif self.error is not None:
            raise self.error

    def _relays(self, status: Status) -> bool:
        policy = self._relay_status
        if policy == RELAY_PULL:
            return status < 400 or status in (412, 416)
        return policy == RELAY_ALL

    # Sink
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self._deadlines is not None:
            self._disarm()
        self.status = status
        client = self._client
        if not self._relays(status) or client.closing:
            self.headers = headers
            return
        out, length = self._rewriter.end_to_end(headers)
        framing = b""
        if length >= 0 and self._splice_eligible(status, length):
            self.mode = SPLICE
            self.conn.pause_reading()  # uvloop must not read what the kernel will splice
            asyncio.get_running_loop().call_soon(self._begin_splice)
        elif length >= 0 or self.head_only or status in (204, 304):
            self.mode = RAW
        else:  # chunked or close-delimited upstream: the router frames the body itself
            out = [(n, v) for n, v in out if n.lower() != b"content-length"]
            if client.http11:
                self.mode = CHUNKED
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                self.mode = RAW
                client.keep_alive = False
        self.started = True
        client.begin_response(self)
        head = responses.head(status, out, close=not client.keep_alive, extra=framing)
        if self.mode == SPLICE:
            client.write(head)
        else:
            self._queue(head)  # goes out with the body bytes of the same read
            self._head_status = status

    def on_scanned(self, scan: ResponseScan, data: bytes) -> bool:
        """:meth:`on_head` of a response that came whole in one read, ``data``, and was
        scanned (``_wire.scan_response``): ``scan.block`` holds its end-to-end header lines, so
        a relayed one needs no rewriting (None: a Location or Link header, the rewriter's job);
        the header fields are only read out when something else needs them. A relayed one's
        body, ``data[scan.body_at:]``, goes out at once in one bytes with the head (True:
        taken; all that read produced, nothing is left for :meth:`flush`)."""
        status, block = scan.status, scan.block
        client = self._client
        if block is None or not self._relays(status) or client.closing:
            if self._relay_status == RENAME_TAGS and self._renamed(scan, data):
                return True
            self.on_head(status, head_fields(data))
            return False
        if self._deadlines is not None:
            self._disarm()
        self.status = status
        self.mode = RAW  # the whole body is at hand: nothing to splice or frame
        self.started = True
        client.begin_response(self)
        close = not client.keep_alive
        whole = whole_response(status_line(status), block, self._rewriter.lines, close, data,
                               scan.body_at)  # fmt: skip
        client.write_response(whole, status)
        return True

    def _renamed(self, scan: ResponseScan, data: bytes) -> bool:
        """:meth:`on_scanned` of a tag list (RENAME_TAGS): a 200 in the plain form, its
        ``Content-Length`` line as Harbor writes it, goes out renamed (True); anything else
        is captured as before (False)."""
        block, client = scan.block, self._client
        if scan.status != 200 or block is None or client.closing or self.tag_name == "":
            return False
        whole = renamed_tag_response(status_line(200), block, self._rewriter.lines,
                                     not client.keep_alive, data, scan.body_at,
                                     self.tag_name)  # fmt: skip
        if whole is None:
            return False
        if self._deadlines is not None:
            self._disarm()
        self.status = 200
        self.mode = RAW
        self.started = True
        client.begin_response(self)
        client.write_response(whole, 200)
        return True

    def on_body(self, data: bytes) -> None:
        self._received += len(data)
        mode = self.mode
        if mode == RAW:
            self._queue(data)
        elif mode == SPLICE:
            self._early += len(data)
            self._client.write(data)
        elif mode == CHUNKED:
            self._queue(b"%x\r\n%b\r\n" % (len(data), data))
        elif len(self.body) < self._capture_limit:
            if not self.body:
                self.body = bytearray()
            self.body += data[: self._capture_limit - len(self.body)]

    def flush(self) -> None:
        """After a read from Harbor: write what it produced; a response still unfinished is
        watched for a stall from now on."""
        if self._out:
            self._write_out()
        if not self._watching and not self.finished and self.status and self._bodies is not None:
            self._watching = True
            self._bodies.watch(self)

    def _queue(self, data: bytes) -> None:
        """``data`` goes out with the rest of what this read produced (:meth:`flush`)."""
        out = self._out
        if out is None:
            self._out = [data]
        else:
            out.append(data)

    def _write_out(self) -> None:
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            status = self._head_status
            if status != 0:
                self._head_status = 0
                self._client.write_response(data, status)
            else:
                self._client.write(data)

    def on_complete(self) -> None:
        if self.mode == CHUNKED and not self.head_only:
            self._queue(b"0\r\n\r\n")
        if self.started:
            self._write_out()
            self._client.end_response(self)
        self._finish(None)

    def on_lost(self, exc: BaseException | None, received_any: bool) -> None:
        if self._splice is not None:
            self._splice.cancel()
            self._splice = None
        if self._deadlines is not None:
            self._disarm()
        if self.started:
            self._write_out()  # the client has what arrived, then the forwarder cuts it off
            self._client.end_response(self)
        if not self.finished:
            reason = f": {exc}" if exc else ""
            self._finish(UpstreamError(f"Harbor closed the connection{reason}", received_any))

    # the body watch's questions, and its verdict
    def progress(self) -> object:
        """Changes whenever body bytes move (through the parser or the kernel)."""
        job = self._splice
        return self._received if job is None else (self._received, job.moved, job.in_pipe)

    def waiting_on_upstream(self) -> bool:
        """Is it Harbor's turn? Not when the client's back-pressure paused the reading, nor
        while a splice still has bytes in its pipe for the client."""
        job = self._splice
        if job is not None:
            return job.waits_for_src
        return not self.conn.paused

    def client_turn(self) -> bool:
        """Is it the client's turn only: a splice with bytes for it in its pipe, or waiting for
        the client's buffer to flush first (the copy path's turn is the client protocol's
        paused writing)."""
        job = self._splice
        return job is not None and not job.waits_for_src

    def stall(self, timeout: float) -> None:
        """Harbor sent nothing for ``timeout``: drop the connection, fail the response."""
        if self.finished:
            return
        if self._splice is not None:
            self._splice.cancel()
            self._splice = None
        self._out = None
        self.conn.abandon()
        if self.started:
            self._client.end_response(self)
        self._finish(ReadTimeout(f"Harbor sent nothing for {timeout:g}s", True))

    # flow control, called by the client protocol; a splice keeps the upstream paused itself
    def pause(self) -> None:
        if self.mode != SPLICE:
            self.conn.pause_reading()

    def resume(self) -> None:
        if self.mode != SPLICE:
            self.conn.resume_reading()

    def abort(self) -> None:
        """The client is gone: drop the upstream connection, nothing more will be read."""
        if self._splice is not None:
            self._splice.cancel()
            self._splice = None
        self._out = None
        self.conn.abandon()
        self._finish(UpstreamError("the client closed the connection", True))

    # splice
    def _splice_eligible(self, status: int, length: int) -> bool:
        minimum = self._splice_min
        if minimum is None or length < minimum or self.head_only or status not in SPLICE_STATUSES:
            return False
        if not self.conn.plain or splice.plain_fd(self._client.transport) < 0:
            return False
        self._length = length
        return True

    def _begin_splice(self) -> None:
        """Next loop turn after the head: the parser has handed over every byte of that read."""
        if self.finished or self.mode != SPLICE:
            return  # the whole body came with the head, or the response already failed
        client, conn = self._client, self.conn
        client_fd, upstream_fd = splice.plain_fd(client.transport), conn.fileno()
        transport = client.transport
        if client.closing or transport is None or client_fd < 0 or upstream_fd < 0:
            self._fall_back(b"")
            return
        try:
            job = Splice(
                asyncio.get_running_loop(),
                upstream_fd,
                client_fd,
                self._length - self._early,
                self._spliced,
            )
        except OSError:  # out of descriptors: copying needs none
            self._fall_back(b"")
            return
        self._splice = job
        job.start(gate=lambda: transport.get_write_buffer_size() == 0)
        if not self._watching and self._bodies is not None:
            self._watching = True
            self._bodies.watch(self)

    def _spliced(self, outcome: str, exc: OSError | None, leftover: bytes) -> None:
        job, self._splice = self._splice, None
        stats = self._stats
        if job is not None and job.moved:
            self._client.count_spliced(job.moved)
        if outcome == splice.COMPLETE:
            if stats is not None:
                stats.responses += 1
                stats.bytes += job.moved if job is not None else 0
            self.mode = RAW
            self.conn.body_moved()  # ends the response: on_complete, pool release
        elif outcome == splice.UNSUPPORTED:
            # The connection had a splice set up and refused on it: finish this response on
            # the copy path, then close it rather than pool it.
            self.conn.retire()
            self._fall_back(leftover)
        else:
            if stats is not None and job is not None:
                stats.bytes += job.moved
            if outcome == splice.CLIENT_GONE:
                self._client.close()  # the forwarder then sees the client leaving
                message = "the client closed the connection"
            else:
                reason = f": {exc}" if exc else " before the end of the body"
                message = f"Harbor closed the connection{reason}"
            self.conn.abandon()
            if self.started:
                self._client.end_response(self)
            self._finish(UpstreamError(message, True))

    def _fall_back(self, leftover: bytes) -> None:
        """Finish this response on the copy path; ``leftover`` was taken from the socket."""
        if self._stats is not None:
            self._stats.fallbacks += 1
        self.mode = RAW
        self.conn.resume_reading()
        self.conn.feed(leftover)
        if self.started and not self.finished:
            self._client.begin_response(self)  # re-applies the client's write back-pressure
