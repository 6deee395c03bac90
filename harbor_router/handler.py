"""The request path: route → auth → mapping → raw pool (hit) or fan-out (miss) → response.

A cache hit never leaves this module's fast branch: one mapping lookup, one request head, one
relay over a pooled keep-alive connection. Misses go to the resolver (aiohttp), whose winner is
written back here; the mapping is recorded so the next request for the repository is a hit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Final

from . import errors, responses, routes
from .auth import HEADER, ChallengeCache, Credentials
from .discovery import Discovery
from .headers import FORWARD_REQUEST, FORWARD_REQUEST_LINES
from .mapping import MappingCache
from .projects import Project
from .protocol import HttpProtocol, Request
from .relay import HeadTimeout, Relay, default_relay_status
from .resolver import SECTIONS, Resolver, Winner
from .upstream import UpstreamError, UpstreamPool

_BASE_BODY: Final = b"{}"
_BASE_GET: Final = responses.simple(200, _BASE_BODY)
_BASE_HEAD: Final = responses.simple(200, _BASE_BODY, head_only=True)


def _capture_all(status: int) -> bool:
    return False


class RequestHandler:
    def __init__(
        self,
        *,
        router: routes.Router,
        proxy_project: str,
        mapping: MappingCache,
        discovery: Discovery,
        pool: UpstreamPool,
        resolver: Resolver,
        credentials: Credentials,
        challenges: ChallengeCache | None,
        auth_mode: str,
        upstream_host: str,
        base_path: str,
        timeout: float,
        max_fanout: int,
        max_body: int,
    ) -> None:
        self._router = router
        self._proxy_project = proxy_project
        self._mapping = mapping
        self._discovery = discovery
        self._pool = pool
        self._resolver = resolver
        self._credentials = credentials
        self._challenges = challenges
        self._auth_header = auth_mode == HEADER
        self._host_line = b"Host: " + upstream_host.encode("idna") + b"\r\n"
        self._base_path = base_path
        self._timeout = timeout
        self._max_fanout = max_fanout
        self._max_body = max_body

    async def __call__(self, request: Request, client: HttpProtocol) -> None:
        route = self._router.parse(request.method, request.path, request.query)
        kind = route.kind
        if kind >= routes.HEALTHZ:
            self._health(request, client)
            return
        if self._auth_header and request.header(b"authorization") is None:
            await self._challenge(request)
        if kind == routes.BASE:
            client.write(_BASE_HEAD if request.method == "HEAD" else _BASE_GET)
            return
        projects = self._discovery.projects
        exclude: str | None = None
        mapped = self._mapping.get(route.name)
        if mapped is not None:
            project = projects.get(mapped)
            if project is not None:
                if kind == routes.TAGS:
                    relay = await self._forward(request, client, route, project, _capture_all)
                    if relay.status == 200:
                        self._write_tags(
                            request,
                            client,
                            route,
                            project,
                            relay.status,
                            relay.headers,
                            bytes(relay.body),
                        )
                        return
                else:
                    relay = await self._forward(request, client, route, project)
                    if relay.started:
                        return
                if relay.status != 404:
                    raise self._translate(project, relay.status, relay.headers)
                self._mapping.forget(route.name, mapped)
                exclude = mapped
        candidates = [p for p in projects.ordered[: self._max_fanout] if p.name != exclude]
        if kind == routes.BLOB:
            await self._blob_miss(request, client, route, candidates)
            return
        winner = await self._resolver.resolve(
            request.method, route, candidates, self._forward_headers(request)
        )
        self._mapping.set(route.name, winner.project.name)
        if kind == routes.TAGS:
            self._write_tags(
                request, client, route, winner.project, winner.status, winner.headers, winner.body
            )
        else:
            self._write_winner(request, client, winner)

    # hit path
    def _request_head(self, request: Request, route: routes.Route, project: Project) -> bytes:
        name = project.upstream_name(route.name)
        if route.kind == routes.TAGS:
            tail = "/tags/list"
        else:
            tail = f"/{SECTIONS[route.kind]}/{route.reference}"
        path = f"{self._base_path}/v2/{project.name}/{name}{tail}"
        if route.query:
            path += "?" + route.query
        parts = [request.method.encode(), b" ", path.encode(), b" HTTP/1.1\r\n", self._host_line]
        auth = self._credentials.header
        if auth is not None:
            parts += (b"Authorization: ", auth, b"\r\n")
        forwarded: bytes | None = None
        lines = FORWARD_REQUEST_LINES
        for hname, value in request.headers:
            line = lines.get(hname)
            if line is not None:
                parts += (line, value, b"\r\n")
            elif hname == b"x-forwarded-for":
                forwarded = value if forwarded is None else forwarded + b", " + value
        ip = request.client_ip.encode()
        parts += (b"X-Forwarded-For: ", forwarded + b", " + ip if forwarded else ip, b"\r\n\r\n")
        return b"".join(parts)

    async def _forward(
        self,
        request: Request,
        client: HttpProtocol,
        route: routes.Route,
        project: Project,
        relay_status: Callable[[int], bool] = default_relay_status,
    ) -> Relay:
        """Send the request to one project over the raw pool; relayed or captured per status."""
        head = self._request_head(request, route, project)
        head_only = request.method == "HEAD"
        for attempt in (0, 1):
            try:
                conn = await self._pool.acquire()
            except UpstreamError as exc:
                raise errors.BadGateway(str(exc), {project.name: "connection failed"}) from None
            relay = Relay(
                client,
                conn,
                project.rewriter,
                head_only=head_only,
                relay_status=relay_status,
                capture_limit=self._max_body,
            )
            conn.send(head, relay, head_only)
            relay.arm_timeout(self._timeout)
            try:
                await relay.done
                return relay
            except HeadTimeout:
                raise errors.BadGateway(
                    f"project {project.name} did not answer within {self._timeout:g}s",
                    {project.name: "timeout"},
                ) from None
            except UpstreamError as exc:
                if client.closing:
                    raise errors.ResponseAborted() from None
                if relay.started:
                    raise errors.ResponseAborted(str(exc)) from None
                if attempt == 0 and conn.reused and not exc.received_any:
                    continue  # a keep-alive connection Harbor had already closed: retry once
                raise errors.BadGateway(
                    f"connection to Harbor failed while asking project {project.name}",
                    {project.name: "connection error"},
                ) from None
        raise AssertionError("unreachable")

    def _translate(
        self, project: Project, status: int, headers: list[tuple[bytes, bytes]]
    ) -> errors.RegistryError:
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

    # miss path
    async def _blob_miss(
        self,
        request: Request,
        client: HttpProtocol,
        route: routes.Route,
        candidates: Sequence[Project],
    ) -> None:
        forward = self._forward_headers(request)
        try:
            found = await self._resolver.resolve("HEAD", route, candidates, forward)
        except errors.RegistryError:
            found = None  # Harbor answers HEAD only for blobs it has cached: race GETs
        if found is not None:
            self._mapping.set(route.name, found.project.name)
            if request.method == "HEAD":
                self._write_winner(request, client, found)
                return
            relay = await self._forward(request, client, route, found.project)
            if relay.started:
                return
            raise self._translate(found.project, relay.status, relay.headers)
        winner = await self._resolver.race(route, candidates, forward)
        try:
            self._mapping.set(route.name, winner.project.name)
            await self._stream_winner(request, client, winner)
        finally:
            winner.release()

    async def _stream_winner(self, request: Request, client: HttpProtocol, winner: Winner) -> None:
        response = winner.response
        assert response is not None
        headers, has_length = winner.project.rewriter.end_to_end(winner.headers)
        head_only = request.method == "HEAD"
        chunked = not head_only and not has_length and winner.status not in (204, 304)
        if chunked and not client.http11:
            client.keep_alive = False
            chunked = False
        extra = b"Transfer-Encoding: chunked\r\n" if chunked else b""
        client.write(
            responses.head(winner.status, headers, close=not client.keep_alive, extra=extra)
        )
        if head_only:
            return
        try:
            async for chunk in response.content.iter_any():
                client.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await client.drain()
            if chunked:
                client.write(b"0\r\n\r\n")
        except Exception as exc:
            raise errors.ResponseAborted(str(exc)) from exc

    def _write_winner(self, request: Request, client: HttpProtocol, winner: Winner) -> None:
        headers, _ = winner.project.rewriter.end_to_end(winner.headers)
        if request.method == "HEAD" or winner.status in (204, 304):
            client.write(responses.head(winner.status, headers, close=not client.keep_alive))
            return
        headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        client.write(
            responses.head(
                winner.status, headers, content_length=len(winner.body), close=not client.keep_alive
            )
            + winner.body
        )

    def _write_tags(
        self,
        request: Request,
        client: HttpProtocol,
        route: routes.Route,
        project: Project,
        status: int,
        upstream_headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        try:
            data = json.loads(body)
        except ValueError:
            raise errors.BadGateway(f"project {project.name} sent an invalid tag list") from None
        if isinstance(data, dict):
            data["name"] = f"{self._proxy_project}/{route.name}"
        new_body = json.dumps(data, separators=(",", ":")).encode()
        headers = [
            (n, v)
            for n, v in project.rewriter.end_to_end(upstream_headers)[0]
            if n.lower() != b"content-length"
        ]
        out = responses.head(
            status, headers, content_length=len(new_body), close=not client.keep_alive
        )
        client.write(out if request.method == "HEAD" else out + new_body)

    @staticmethod
    def _forward_headers(request: Request) -> list[tuple[str, str]]:
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

    # the rest
    async def _challenge(self, request: Request) -> None:
        assert self._challenges is not None
        challenge = await self._challenges.get(
            request.header(b"host"), request.header(b"x-forwarded-proto")
        )
        raise errors.Unauthorized(
            "authentication required", headers=((b"WWW-Authenticate", challenge),)
        )

    def _health(self, request: Request, client: HttpProtocol) -> None:
        count = len(self._discovery.projects)
        status = 200 if count else 503
        body = json.dumps(
            {"status": "ok" if count else "no proxy-cache project known", "projects": count}
        ).encode()
        client.write(
            responses.simple(
                status, body, head_only=request.method == "HEAD", close=not client.keep_alive
            )
        )
