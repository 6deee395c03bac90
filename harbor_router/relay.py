"""Relay: the sink that streams one upstream response to the client, or captures it.

Theory of operation: the relay decides at the response head, inside the upstream parser callback,
whether the status is the client's to see (``relay_status``). If so the head is rewritten and
written at once and every body chunk goes straight from the upstream protocol to the client
transport, with no task switch and no buffering beyond the transports' own; when the client's
write buffer fills, the upstream connection stops reading until it drains. If not (a miss, an
error the router must translate), the head and a bounded prefix of the body are captured for the
handler, which decides what the client gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import responses
from .headers import Rewriter
from .upstream import UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from .protocol import HttpProtocol

# What happens to the body.
CAPTURE, RAW, CHUNKED = 0, 1, 2

CAPTURE_LIMIT = 64 * 1024


def default_relay_status(status: int) -> bool:
    """Statuses passed through as Harbor sent them; the rest are translated (DESIGN §3.2)."""
    return status < 400 or status in (412, 416)


class HeadTimeout(Exception):
    """No response head within the deadline; the upstream connection was closed."""


class Relay:
    __slots__ = (
        "_capture_limit",
        "_client",
        "_relay_status",
        "_rewriter",
        "_timer",
        "body",
        "conn",
        "done",
        "head_only",
        "headers",
        "mode",
        "started",
        "status",
    )

    def __init__(
        self,
        client: HttpProtocol,
        conn: UpstreamConnection,
        rewriter: Rewriter,
        *,
        head_only: bool,
        relay_status: Callable[[int], bool] = default_relay_status,
        capture_limit: int = CAPTURE_LIMIT,
    ) -> None:
        self._client = client
        self.conn = conn
        self._rewriter = rewriter
        self._relay_status = relay_status
        self._capture_limit = capture_limit
        self.head_only = head_only
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.mode = CAPTURE
        self.started = False  # the client has seen the response head
        self._timer: asyncio.TimerHandle | None = None

    def arm_timeout(self, seconds: float) -> None:
        """Fail with :class:`HeadTimeout` unless the response head arrives in time."""
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.status == 0 and not self.done.done():
            self.done.set_exception(HeadTimeout())
            self.conn.abandon()

    # Sink
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.status = status
        client = self._client
        if not self._relay_status(status) or client.closing:
            self.headers = headers
            return
        out, length_known = self._rewriter.end_to_end(headers)
        framing = b""
        if length_known or self.head_only or status in (204, 304):
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
        client.write(responses.head(status, out, close=not client.keep_alive, extra=framing))

    def on_body(self, data: bytes) -> None:
        mode = self.mode
        if mode == RAW:
            self._client.write(data)
        elif mode == CHUNKED:
            self._client.write(b"%x\r\n%b\r\n" % (len(data), data))
        elif len(self.body) < self._capture_limit:
            self.body += data[: self._capture_limit - len(self.body)]

    def on_complete(self) -> None:
        if self.mode == CHUNKED and not self.head_only:
            self._client.write(b"0\r\n\r\n")
        if self.started:
            self._client.end_response(self)
        if not self.done.done():
            self.done.set_result(None)

    def on_lost(self, exc: BaseException | None, received_any: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.started:
            self._client.end_response(self)
        if not self.done.done():
            reason = f": {exc}" if exc else ""
            self.done.set_exception(
                UpstreamError(f"Harbor closed the connection{reason}", received_any)
            )

    # flow control, called by the client protocol
    def pause(self) -> None:
        self.conn.pause_reading()

    def resume(self) -> None:
        self.conn.resume_reading()

    def abort(self) -> None:
        """The client is gone: drop the upstream connection, nothing more will be read."""
        self.conn.abandon()
        if not self.done.done():
            self.done.set_exception(UpstreamError("the client closed the connection", True))
