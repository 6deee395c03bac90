"""The hit path: one request to one known project over the raw keep-alive pool.

Builds the upstream request head (only the prefix changes, DESIGN §2), sends it on a pooled
connection, and waits for the relay to finish streaming. Breaker accounting happens here: every
outcome of a request to a project is a success or a failure for that project's breaker.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import errors, routes
from ._wire import ForwardLines, Seconds, forward_head, perf_counter
from .auth import Credentials
from .breaker import Breaker
from .headers import FORWARD_REQUEST, FORWARD_REQUEST_LINES, HOP_BY_HOP, Rewriter
from .metrics import Metrics
from .projects import Project
from .protocol import HttpProtocol, Request
from .relay import (
    RELAY_PULL,
    SPLICE_MIN_BYTES,
    BodyWatch,
    HeadDeadlines,
    HeadTimeout,
    ReadTimeout,
    Relay,
)
from .resolver import SECTIONS
from .responses import Status
from .splice import AVAILABLE as SPLICE_AVAILABLE
from .splice import SpliceStats
from .upstream import PoolFull, UpstreamConnection, UpstreamError, UpstreamPool

# Client headers never passed through unchanged, even for PASSTHROUGH_UNMATCHED.
_PASSTHROUGH_DROP = HOP_BY_HOP | {b"host", b"x-forwarded-for", b"content-length"}
IDENTITY = Rewriter("", "")
_RETRY_SOON = ((b"Retry-After", b"1"),)
#: Request heads' first lines kept (``Forwarder._head_start``); emptied when full.
HEAD_STARTS = 4096
_FORWARD_LINES = ForwardLines(FORWARD_REQUEST_LINES)


def forward_headers(request: Request) -> list[tuple[str, str]]:
    """The client headers a fan-out sends on (aiohttp form), X-Forwarded-For appended."""
    out = []
    forwarded: list[str] = []
    for name, value in request.headers:
        canon = FORWARD_REQUEST.get(name)
        if canon is not None:
            out.append((canon, value.decode("latin-1")))
        elif name == b"x-forwarded-for":
            forwarded.append(value.decode("latin-1"))
    forwarded.append(request.client_ip)
    out.append(("X-Forwarded-For", ", ".join(forwarded)))
    return out


class Forwarder:
    """``splice_min_bytes``: bodies at least this large go by ``os.splice`` when both sockets
    are plain TCP (None: always copy; tests and benchmarks switch it); ``splice_stats``
    counts what was spliced."""

    def __init__(
        self,
        pool: UpstreamPool,
        credentials: Credentials,
        *,
        upstream_host: str,
        base_path: str,
        timeout: float,
        max_body: int,
        splice_min_bytes: int | None = SPLICE_MIN_BYTES,
        read_timeout: float = 60.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics if metrics is not None else Metrics()
        self.splice_min_bytes = splice_min_bytes if SPLICE_AVAILABLE else None
        self.splice_stats = SpliceStats()
        self._credentials = credentials
        self._host_line = b"Host: " + upstream_host.encode("idna") + b"\r\n"
        self._base_path = base_path
        self._timeout = timeout
        self._max_body = max_body
        self._deadlines = HeadDeadlines(pool)
        self._bodies = BodyWatch(read_timeout)
        # route → (project, credentials, its head's start after the method)
        self._starts: dict[routes.Route, tuple[str, bytes | None, bytes]] = {}
        # the last start returned, and its route, project and credentials (by identity)
        self._last_route: routes.Route | None = None
        self._last_project: Project | None = None
        self._last_auth: bytes | None = None
        self._last_start = b""
        # a client header's line start, if it is forwarded
        self._forward_lines = _FORWARD_LINES

    def close(self) -> None:
        self._deadlines.close()
        self._bodies.close()

    def _head_start(self, route: routes.Route, project: Project) -> bytes:
        """Request line (but its method), Host and Authorization of ``route`` at ``project``,
        kept per route (routes are shared, ``routes.Router.parse``) for the project it was last
        sent to, until the credentials change; the last one returned is also kept by the
        identity of its route, project and credentials, and returned again for the same three
        (the table holds it for them: only this method changes the table, and it keeps the
        start it returns)."""
        auth = self._credentials.header
        if route is self._last_route and project is self._last_project and auth is self._last_auth:
            return self._last_start
        known = self._starts.get(route)
        if known is not None and known[1] is auth and known[0] == project.name:
            return self._keep_last(route, project, auth, known[2])
        name = project.upstream_name(route.upstream)
        if route.kind == routes.TAGS:
            tail = "/tags/list"
        else:
            tail = f"/{SECTIONS[route.kind]}/{route.reference}"
        path = f"{self._base_path}/v2/{project.name}/{name}{tail}"
        if route.query:
            path += "?" + route.query
        parts = [path.encode(), b" HTTP/1.1\r\n", self._host_line]
        if auth is not None:
            parts += (b"Authorization: ", auth, b"\r\n")
        start = b"".join(parts)
        if len(self._starts) >= HEAD_STARTS:
            self._starts.clear()
        self._starts[route] = (project.name, auth, start)
        return self._keep_last(route, project, auth, start)

    def _keep_last(
        self, route: routes.Route, project: Project, auth: bytes | None, start: bytes
    ) -> bytes:
        self._last_route, self._last_project, self._last_auth = route, project, auth
        self._last_start = start
        return start

    def request_head(self, request: Request, route: routes.Route, project: Project) -> bytes:
        """The head of ``request`` (a pull) to send to ``project``: the client headers of
        FORWARD_REQUEST and X-Forwarded-For appended to, ``_wire.forward_head``."""
        return forward_head(request.method, self._head_start(route, project), request.headers,
                            self._forward_lines, request.client_ip)  # fmt: skip

    def passthrough_head(self, request: Request, route: routes.Route) -> bytes:
        """The client's request as it came (its own Authorization included), Host and
        X-Forwarded-For being the router's."""
        target = self._base_path + route.name + ("?" + route.query if route.query else "")
        parts = [request.method.encode(), b" ", target.encode("latin-1"), b" HTTP/1.1\r\n",
                 self._host_line]  # fmt: skip
        forwarded: bytes | None = None
        for hname, value in request.headers:
            if hname not in _PASSTHROUGH_DROP:
                parts += (hname, b": ", value, b"\r\n")
            elif hname == b"x-forwarded-for":
                forwarded = value if forwarded is None else forwarded + b", " + value
        ip = request.client_ip.encode()
        parts += (b"X-Forwarded-For: ", forwarded + b", " + ip if forwarded else ip, b"\r\n\r\n")
        return b"".join(parts)

    def try_start(
        self,
        client: HttpProtocol,
        head: bytes,
        head_only: bool,
        rewriter: Rewriter,
        now: Seconds,
        relay_status: int = RELAY_PULL,
    ) -> Relay | None:
        """Send ``head`` on an idle pooled connection, without awaiting anything; its relay
        (``relay.conn`` the connection, ``relay.start`` when it started), or None when no idle
        connection is at hand (then the caller takes :meth:`forward`'s path).
        ``now``: ``perf_counter()`` read at the request's start, for the pool's idle check and
        as the start of the upstream request's duration."""
        conn = self._pool.try_acquire(now)
        if conn is None:
            return None
        return self._send(client, conn, head, head_only, rewriter, relay_status, now)

    def finish_started(self, relay: Relay, label: str, breaker: Breaker, now: Seconds) -> bool:
        """Account a started request whose relay streamed a complete answer to the client
        (``now``: ``time.perf_counter()`` at its end); False (nothing accounted) for any other
        ending: :meth:`forward` takes it from there."""
        if not relay.started or not relay.finished or relay.error is not None:
            return False
        self.account(relay, label, breaker, now)
        return True

    def account(self, relay: Relay, label: str, breaker: Breaker, now: Seconds) -> None:
        """A started request's outcome, for its project's breaker and the metrics."""
        status: Status = relay.status
        breaker.answered(status)
        self._metrics.upstream_answered(label, status, now - relay.start)

    def reload_credentials(self) -> bool:
        """Re-read the robot's ``*_FILE`` credentials; True when they changed."""
        return self._credentials.refresh()

    def _send(
        self,
        client: HttpProtocol,
        conn: UpstreamConnection,
        head: bytes,
        head_only: bool,
        rewriter: Rewriter,
        relay_status: int,
        start: Seconds,
    ) -> Relay:
        # made and set up in two C calls (compiled) rather than through the constructor
        relay: Relay = Relay.__new__(Relay)
        relay.setup(client, conn, rewriter, head_only, relay_status, self._max_body,
                    self.splice_min_bytes, self.splice_stats, self._bodies)  # fmt: skip
        relay.start = start
        conn.send(head, relay, head_only)
        relay.arm_timeout(self._deadlines, self._timeout)
        return relay

    async def forward(
        self,
        client: HttpProtocol,
        head: bytes,
        *,
        head_only: bool,
        label: str,
        rewriter: Rewriter,
        breaker: Breaker | None,
        relay_status: int = RELAY_PULL,
        started: Relay | None = None,
    ) -> Relay:
        """Send ``head`` upstream (or take over the request ``try_start`` sent, its relay);
        the relay streams or captures the answer per its status."""
        metrics = self._metrics
        start: Seconds = perf_counter() if started is None else started.start
        for attempt in (0, 1):
            if attempt == 0 and started is not None:
                conn, relay = started.conn, started
            else:
                try:
                    conn = await self._pool.acquire()
                except PoolFull as exc:  # the router's own limit: nothing learnt about Harbor
                    metrics.connection_error("pool_full")
                    raise errors.Unavailable(
                        str(exc), {label: "too many connections"}, headers=_RETRY_SOON
                    ) from None
                except UpstreamError as exc:
                    if breaker is not None:
                        breaker.failure()
                    metrics.connection_error("connect")
                    metrics.upstream_done(label, "error", perf_counter() - start)
                    raise errors.BadGateway(str(exc), {label: "connection failed"}) from None
                relay = self._send(client, conn, head, head_only, rewriter, relay_status, start)
            try:
                await relay.wait()
            except HeadTimeout:
                if breaker is not None:
                    breaker.failure()
                metrics.connection_error("timeout")
                metrics.upstream_done(label, "timeout", perf_counter() - start)
                raise errors.BadGateway(
                    f"project {label} did not answer within {self._timeout:g}s",
                    {label: "timeout"},
                ) from None
            except UpstreamError as exc:
                if client.closing:  # the client left: nothing learnt about the project
                    if breaker is not None:
                        breaker.abandon()
                    raise errors.ResponseAborted() from None
                reason = "read_timeout" if isinstance(exc, ReadTimeout) else "reset"
                if relay.started:  # Harbor died mid-body: the client can only be cut off
                    if breaker is not None:
                        breaker.failure()
                    metrics.connection_error(reason)
                    metrics.upstream_done(label, "error", perf_counter() - start)
                    raise errors.ResponseAborted(str(exc)) from None
                if attempt == 0 and conn.reused and not exc.received_any:
                    metrics.connection_error("stale_keepalive")
                    continue  # a keep-alive connection Harbor had already closed: retry once
                if breaker is not None:
                    breaker.failure()
                metrics.connection_error(reason)
                metrics.upstream_done(label, "error", perf_counter() - start)
                raise errors.BadGateway(
                    f"connection to Harbor failed while asking project {label}",
                    {label: "connection error"},
                ) from None
            if breaker is not None:
                breaker.answered(relay.status)
            metrics.upstream_answered(label, relay.status, perf_counter() - start)
            return relay
        raise AssertionError("unreachable")


def translate(
    project: Project, status: int, headers: Sequence[tuple[bytes, bytes]]
) -> errors.RegistryError:
    """The client's error for a status a mapped project sent that is not relayed as it is."""
    if status == 429:
        retry = next((v for n, v in headers if n.lower() == b"retry-after"), b"60")
        return errors.TooManyRequests(
            f"project {project.name} is rate limited upstream",
            {project.name: "429"},
            headers=((b"Retry-After", retry),),
        )
    if status in (401, 403):
        return errors.BadGateway(
            f"Harbor refused the router's credentials for project {project.name}",
            {project.name: str(status)},
        )
    return errors.BadGateway(
        f"project {project.name} answered HTTP {status}", {project.name: str(status)}
    )
