"""The request path: route → limits → auth → mapping → hit (raw pool) or miss (fan-out).

Theory of operation (DESIGN §3): a repository's mapping serves every tag, digest, blob and tag
list of it. A *hit* is one request to the mapped project (``forwarding.py``), unless that
project's breaker is open (503 at once). A *stale* hit is served the same way and starts one
background refresh for the repository. A mapped project that answers 404 is dropped and the
other projects are asked before the client hears 404. A *miss* fans out (``resolver.py``) and
records the winner; a miss every project answered with a definite 404 is remembered in the
negative cache, and a negative hit costs no upstream request at all.

Routing hints (``routes.Route.host``) narrow the candidates to the projects that mirror the
host: a host-prefixed name (``ghcr.io/acme/tool``) never fans out beyond them, and a host no
project mirrors is a 404; an ``ns`` parameter no project mirrors is dropped and the request
resolves as if it had none. Hinted requests keep their mapping under a host-qualified key, so
they never disturb (or follow) the mapping of the bare name.

With ``AUTH_MODE=harbor`` (``auth.HarborAuth``) the client's right to pull is checked for the
project that will answer, right before anything is sent to it: the mapped project on a hit, the
fan-out's winner on a miss (the fan-out itself runs with the robot, as the router must find the
project first). Credentials are checked on their own before a fan-out, so that a client with a
wrong password costs no fan-out and learns nothing from a 404. A cached allow keeps the hit on
the fast path; everything else takes the task path.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Final, Protocol

from . import errors, replies, responses, routes
from ._wire import Seconds
from .auth import HEADER, ChallengeCache, HarborAuth, client_credentials
from .breaker import CLOSED, Breaker, Breakers
from .discovery import Discovery
from .forwarding import IDENTITY, Forwarder, forward_headers, translate
from .headers import Rewriter
from .logs import event
from .mapping import STALE
from .metrics import HIT, MISS, NEGATIVE, REDIS_HIT, Metrics
from .metrics import STALE as STALE_HIT
from .projects import Project, ProjectSet
from .protocol import FastPath, HttpProtocol, Request
from .relay import CAPTURE_ALL, RELAY_ALL, RELAY_PULL, RENAME_TAGS, Relay
from .resolver import NOT_FOUND_ERRORS, Resolver, Winner, definite_not_found
from .routes import TAGS
from .tiers import Tiers

log = logging.getLogger("harbor_router.handler")

_BASE_BODY: Final = b"{}"
_BASE_GET: Final = responses.simple(200, _BASE_BODY)
_BASE_HEAD: Final = responses.simple(200, _BASE_BODY, head_only=True)
_NEGATIVE_MESSAGE: Final = "unknown to every proxy-cache project (remembered)"
# by route kind: True for the kinds the fast path takes whatever the method (a tag list: GET)
_FAST_KIND: Final = tuple(
    kind in (routes.MANIFEST, routes.BLOB, routes.REFERRERS)
    for kind in range(len(routes.KIND_NAMES))
)
# The method a background refresh uses per route kind: HEAD where Harbor answers it.
_REFRESH_METHOD: Final = {
    routes.MANIFEST: "HEAD",
    routes.REFERRERS: "GET",
    TAGS: "GET",
    routes.BLOB: "HEAD",
}
#: At most one rate-limit log line per this many seconds (a flood must not flood the log).
RATE_LIMIT_LOG_INTERVAL: Final = 10.0


def _hint_rewriter(route: routes.Route, project: Project) -> Rewriter:
    """The response rewriter for ``route`` answered by ``project``."""
    if not route.host:
        return project.rewriter
    return project.rewriter_for(route.host if route.prefixed else "", route.ns)


def _unmirrored(route: routes.Route, hosts: list[str]) -> errors.RegistryError:
    listed = ", ".join(hosts) or "none"
    return errors.NameUnknown(
        f"no proxy-cache project mirrors {route.host}; mirrored hosts: {listed}",
        {"host": route.host, "mirrored": hosts},
    )


class Guard(Protocol):
    def check(self, request: Request) -> None: ...


class RequestHandler(FastPath):
    def __init__(
        self,
        *,
        router: routes.Router,
        proxy_project: str,
        tiers: Tiers,
        discovery: Discovery,
        forwarder: Forwarder,
        resolver: Resolver,
        breakers: Breakers,
        challenges: ChallengeCache | None,
        auth_mode: str,
        max_fanout: int,
        limiter: Guard | None = None,
        metrics: Metrics | None = None,
        harbor_auth: HarborAuth | None = None,
    ) -> None:
        self._router = router
        self._proxy_project = proxy_project
        self._proxy_prefix = proxy_project + "/"  # of the client's repository names
        self._tiers = tiers
        self._discovery = discovery
        # the fast path's table of the discovered projects: name → (project, its rewriter),
        # made again when discovery has a new project set (``_fast_projects``)
        self._fast_set: ProjectSet | None = None
        self._fast_by_name: dict[str, tuple[Project, Rewriter]] = {}
        # the last name the fast path found in that table (by identity: the mapping hands out
        # the name it holds), what it found and the name's breaker (the breakers give the same
        # one for a name as long as they live), while the table is the same
        self._fast_name: str | None = None
        self._fast_project: Project | None = None
        self._fast_rewriter: Rewriter | None = None
        self._fast_breaker: Breaker | None = None
        self._forwarder = forwarder
        self._resolver = resolver
        self._breakers = breakers
        self._challenges = challenges
        self._auth_header = auth_mode == HEADER
        self._harbor_auth = harbor_auth
        self._auth_allowed = harbor_auth.allowed if harbor_auth is not None else None
        self._max_fanout = max_fanout
        self._limiter = limiter
        self._metrics = metrics if metrics is not None else Metrics()
        self._rejected_since_log = 0
        self._rejection_logged_at = -RATE_LIMIT_LOG_INTERVAL
        self._refreshing: set[str] = set()
        self.draining = False  # shutting down: /readyz answers 503
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def __call__(self, request: Request, client: HttpProtocol) -> None:
        route = request.route  # parsed already when the fast path looked at it
        if route is None:
            route = self._router.parse(request.method, request.path, request.query)
        kind = request.kind = route.kind
        if kind >= routes.HEALTHZ:
            self._health(request, client)
            return
        if self._limiter is not None:
            try:
                self._limiter.check(request)
            except errors.TooManyRequests:
                self._rejected(request)
                raise
        if kind == routes.PASSTHROUGH:
            await self._passthrough(request, client, route)
            return
        if self._auth_header and request.header(b"authorization") is None:
            await self._challenge(request)
        if kind == routes.BASE:
            if self._harbor_auth is not None:
                await self._harbor_auth.login(request.header(b"authorization"))
            client.write(_BASE_HEAD if request.method == "HEAD" else _BASE_GET)
            return
        await self._repository(request, client, route)

    async def _repository(
        self, request: Request, client: HttpProtocol, route: routes.Route
    ) -> None:
        projects = self._discovery.projects
        hinted: tuple[Project, ...] | None = None
        if route.host:
            hinted = projects.for_host(route.host)
            if not hinted:
                if route.prefixed:
                    raise _unmirrored(route, projects.hosts())
                route = request.route = route.plain()  # an ns nobody mirrors: no hint
                hinted = None
        kind, key, reference = route.kind, route.key, route.reference
        tiers = self._tiers
        lookups = self._metrics.lookups
        if tiers.is_negative(kind, key, reference):
            request.cache = NEGATIVE
            lookups[NEGATIVE] += 1
            await self._verify(request)
            raise NOT_FOUND_ERRORS[kind](_NEGATIVE_MESSAGE, {"name": route.name})
        exclude: str | None = None
        found = await tiers.lookup_from(key)
        if found is not None:
            mapped, state, remote = found
            result = REDIS_HIT if remote else STALE_HIT if state == STALE else HIT
            request.cache = result
            lookups[result] += 1
            project = projects.get(mapped)
            if project is not None and (hinted is None or project in hinted):
                request.project = mapped
                await self._authorize(request, project, route.upstream)
                if state == STALE:
                    self._metrics.stale_serves += 1
                    self._revalidate(request, route, mapped)
                if await self._hit(request, client, route, project):
                    return
                tiers.forget(key, mapped)  # the mapped project said 404: ask the others
                exclude = mapped
        elif await tiers.is_negative_shared(kind, key, reference):
            request.cache = NEGATIVE
            lookups[NEGATIVE] += 1
            await self._verify(request)
            raise NOT_FOUND_ERRORS[kind](_NEGATIVE_MESSAGE, {"name": route.name})
        else:
            request.cache = MISS
            lookups[MISS] += 1
        await self._miss(request, client, route, exclude, hinted)

    @property
    def fast_starts(self) -> int:
        """Requests started on the fast path (tests, benchmarks): the metrics' count of them."""
        return self._metrics.fast_hits

    # the fast path: a fresh L1 hit answered without a task
    def fast(self, request: Request, client: HttpProtocol, now: Seconds) -> Relay | None:
        """Start a plain cache hit synchronously: a fresh L1 mapping, a closed breaker and an
        idle pooled connection, nothing that needs I/O first. The relay streams the answer
        from the upstream protocol's callbacks; when it ends in anything but a complete
        relayed response, the protocol hands the request to :meth:`resume` on a task. None
        (nothing done, nothing counted) for every other request: the normal path takes it."""
        if self._limiter is not None:
            return None
        try:
            route = request.route = self._router.parse(request.method, request.path, request.query)
        except errors.RegistryError:
            return None
        kind = route.kind
        tags: bool = False  # a tag list's GET, renamed (compiled, C truth tests from here on)
        if not _FAST_KIND[kind]:
            if kind != TAGS or request.method != "GET":
                return None
            tags = True
        if self._auth_header and request.header(b"authorization") is None:
            return None
        tiers = self._tiers
        key = route.key
        if tiers.is_negative(kind, key, route.reference):
            return None
        name = tiers.l1.fresh(key)  # the mapped project
        if name is None:
            return None
        projects = self._discovery.projects
        breaker: Breaker | None
        if name is self._fast_name and projects is self._fast_set:
            project, rewriter = self._fast_project, self._fast_rewriter
            breaker = self._fast_breaker
        else:
            by_name = self._fast_by_name
            if projects is not self._fast_set:
                by_name = self._fast_projects(projects)
            try:
                project, rewriter = by_name[name]
            except KeyError:  # not discovered now
                return None
            breaker = self._breakers.get(name)
            self._fast_name, self._fast_project, self._fast_rewriter = name, project, rewriter
            self._fast_breaker = breaker
        assert project is not None and rewriter is not None and breaker is not None
        if route.host != "":  # (compiled, a comparison is cheaper than a truth test)
            if project not in projects.for_host(route.host):
                return None
            rewriter = _hint_rewriter(route, project)
        if breaker.state is not CLOSED:
            return None
        allowed = self._auth_allowed
        if allowed is not None and not allowed(
            request.header(b"authorization"), name, route.upstream
        ):
            return None
        relay = self._forwarder.try_start(
            client,
            self._forwarder.request_head(request, route, project),
            # a repository's route is a GET's or a HEAD's (routes.Router.parse): compiled, a GET
            # is the interned "GET" itself, no string comparison
            head_only=request.method != "GET",
            rewriter=rewriter,
            now=now,
            relay_status=RENAME_TAGS if tags else RELAY_PULL,
        )
        if relay is None:
            return None
        if tags:  # (its answer is read on a later loop turn)
            relay.tag_name = self._proxy_prefix + route.name
        request.kind = kind
        request.cache = HIT
        request.project = name
        request.fast, request.fast_project, request.fast_breaker = relay, project, breaker
        self._metrics.fast_hits += 1
        if tiers.shared is not None:
            tiers.shared.touch(key)
        return relay

    def _fast_projects(self, projects: ProjectSet) -> dict[str, tuple[Project, Rewriter]]:
        by_name = {name: (p, p.rewriter) for name, p in projects.by_name.items()}
        self._fast_set, self._fast_by_name, self._fast_name = projects, by_name, None
        return by_name

    def finish_fast(self, request: Request, client: HttpProtocol, now: Seconds) -> bool:
        """The fast path's relay is done: True when it was a complete answer (accounted)."""
        relay, breaker = request.fast, request.fast_breaker
        assert relay is not None and breaker is not None
        # fast() set request.kind, and request.project, from the route; a tag list the relay
        # renamed itself is written too
        if request.kind != TAGS or relay.started:
            return self._forwarder.finish_started(relay, request.project, breaker, now)
        # any other tag list is captured, then written with its name rewritten
        if not relay.finished or relay.error is not None or relay.status != 200:
            return False  # translated, or asked elsewhere, by resume()
        project = request.fast_project
        assert project is not None
        winner = Winner(project, 200, list(relay.headers), bytes(relay.body))
        try:
            self._write(request, client, request.route, winner)
        except errors.RegistryError:
            return False  # resume() answers it at the boundary
        self._forwarder.account(relay, project.name, breaker, now)
        return True

    async def resume(self, request: Request, client: HttpProtocol) -> None:
        """Everything after a fast start that did not simply succeed: retries, translation,
        a 404 from the mapped project (then the others are asked)."""
        route: routes.Route = request.route
        project = request.fast_project
        assert request.fast is not None and project is not None
        if await self._hit(request, client, route, project, started=request.fast):
            return
        self._tiers.forget(route.key, project.name)
        hinted = self._discovery.projects.for_host(route.host) if route.host else None
        await self._miss(request, client, route, project.name, hinted)

    # miss path
    def _candidates(
        self,
        method: str,
        route: routes.Route,
        exclude: str | None,
        hinted: tuple[Project, ...] | None,
    ) -> list[Project]:
        if hinted is not None:
            if route.kind == routes.BLOB and method == "HEAD":
                exclude = None  # a HEAD 404 may only mean "not cached": the GET race decides
            return [p for p in hinted if p.name != exclude]
        ordered = self._discovery.projects.ordered
        return [p for p in ordered[: self._max_fanout] if p.name != exclude]

    async def _miss(
        self,
        request: Request,
        client: HttpProtocol,
        route: routes.Route,
        exclude: str | None,
        hinted: tuple[Project, ...] | None = None,
    ) -> None:
        kind, key, reference = route.kind, route.key, route.reference
        tiers = self._tiers
        candidates = self._candidates(request.method, route, exclude, hinted)
        if client_credentials(request.header(b"authorization")) is not None:
            await self._verify(request)
        try:
            if not candidates and hinted is not None:
                raise definite_not_found(kind, route.name)  # every mirror of the host said 404
            if kind == routes.BLOB:
                await self._blob_miss(request, client, route, candidates)
                return
            winner = await self._resolver.resolve(
                request.method, route, candidates, forward_headers(request)
            )
        except errors.RegistryError as exc:
            if exc.definite:
                tiers.record_negative(kind, key, reference)
                await self._verify(request)
            raise
        tiers.record(key, winner.project.name)
        request.project = winner.project.name
        await self._authorize(request, winner.project, route.upstream)
        self._write(request, client, route, winner)

    def _write(
        self, request: Request, client: HttpProtocol, route: routes.Route, winner: Winner
    ) -> None:
        rewriter = _hint_rewriter(route, winner.project)
        if route.kind == TAGS:
            replies.write_tags(
                request, client, winner, f"{self._proxy_project}/{route.name}", rewriter
            )
        else:
            replies.write_winner(request, client, winner, rewriter)

    # hit path
    async def _hit(
        self,
        request: Request,
        client: HttpProtocol,
        route: routes.Route,
        project: Project,
        *,
        started: Relay | None = None,
    ) -> bool:
        """Answer from the mapped project; False when it said 404 (the caller asks the others).
        ``started``: the relay of the request the fast path already sent (its breaker was
        closed)."""
        breaker = self._breakers.get(project.name)
        if started is None and not breaker.allow():
            retry = max(1, int(breaker.retry_after() + 0.999))
            raise errors.Unavailable(
                f"project {project.name} is failing: its circuit breaker is open",
                {project.name: "circuit breaker open"},
                headers=((b"Retry-After", str(retry).encode()),),
            )
        tags = route.kind == TAGS
        forwarder = self._forwarder
        for attempt in (0, 1):
            relay = await forwarder.forward(
                client,
                forwarder.request_head(request, route, project),
                head_only=request.method == "HEAD",
                label=project.name,
                rewriter=_hint_rewriter(route, project),
                breaker=breaker,
                relay_status=CAPTURE_ALL if tags else RELAY_PULL,
                started=started if attempt == 0 else None,
            )
            # Harbor refused the robot: if its secret files were rotated since they were last
            # read, ask once more with the new credentials (else the next discovery pass would).
            if relay.started or relay.status not in (401, 403) or attempt:
                break
            if not forwarder.reload_credentials():
                break
        if relay.started:
            return True
        if tags and relay.status == 200:
            winner = Winner(project, relay.status, list(relay.headers), bytes(relay.body))
            self._write(request, client, route, winner)
            return True
        if relay.status == 404:
            return False
        raise translate(project, relay.status, relay.headers)

    def _revalidate(self, request: Request, route: routes.Route, mapped: str) -> None:
        """One background refresh per stale repository, never more."""
        key = route.key
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        task = asyncio.get_running_loop().create_task(
            self._refresh(route, forward_headers(request), mapped)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(
        self, route: routes.Route, forward: list[tuple[str, str]], mapped: str
    ) -> None:
        try:
            projects = self._discovery.projects
            if route.host:
                candidates: Sequence[Project] = projects.for_host(route.host)
            else:
                candidates = projects.ordered[: self._max_fanout]
            winner = await self._resolver.resolve(
                _REFRESH_METHOD[route.kind], route, candidates, forward
            )
        except errors.RegistryError as exc:
            # A repository gone from every project is forgotten; a blob HEAD 404 only means
            # "not cached yet", and errors say nothing: the stale entry then simply ages out.
            if exc.definite and route.kind != routes.BLOB:
                self._tiers.forget(route.key, mapped)
        except Exception:
            log.exception("background refresh of %s failed", route.name)
        else:
            self._tiers.record(route.key, winner.project.name)
        finally:
            self._refreshing.discard(route.key)

    # miss path
    async def _blob_miss(
        self,
        request: Request,
        client: HttpProtocol,
        route: routes.Route,
        candidates: Sequence[Project],
    ) -> None:
        forward = forward_headers(request)
        try:
            found = await self._resolver.resolve("HEAD", route, candidates, forward)
        except errors.RegistryError:
            found = None  # Harbor answers HEAD only for blobs it has cached: race GETs
        if found is not None:
            request.project = found.project.name
            self._tiers.record(route.key, found.project.name)
            await self._authorize(request, found.project, route.upstream)
            if request.method == "HEAD":
                replies.write_winner(request, client, found, _hint_rewriter(route, found.project))
                return
            if await self._hit(request, client, route, found.project):
                return
        winner = await self._resolver.race(route, candidates, forward)
        request.project = winner.project.name
        try:
            self._tiers.record(route.key, winner.project.name)
            await self._authorize(request, winner.project, route.upstream)
            await replies.stream_winner(
                request, client, winner, _hint_rewriter(route, winner.project)
            )
        finally:
            winner.release()

    # the rest
    def _rejected(self, request: Request) -> None:
        self._metrics.rate_limited += 1
        self._rejected_since_log += 1
        now = asyncio.get_running_loop().time()
        if now - self._rejection_logged_at >= RATE_LIMIT_LOG_INTERVAL:
            count, self._rejected_since_log = self._rejected_since_log, 0
            self._rejection_logged_at = now
            log.warning(
                "rate limit: %d request(s) refused since the last report, last from %s",
                count,
                request.client_ip,
                extra=event("rate_limit", rejected=count, client=request.client_ip),
            )

    async def _passthrough(
        self, request: Request, client: HttpProtocol, route: routes.Route
    ) -> None:
        await self._forwarder.forward(
            client,
            self._forwarder.passthrough_head(request, route),
            head_only=request.method == "HEAD",
            label="harbor",
            rewriter=IDENTITY,
            breaker=None,
            relay_status=RELAY_ALL,
        )

    async def _authorize(self, request: Request, project: Project, name: str) -> None:
        """AUTH_MODE=harbor: may this client pull ``name`` from ``project``? (else it raises)"""
        if self._harbor_auth is not None:
            await self._harbor_auth.authorize(request.header(b"authorization"), project, name)

    async def _verify(self, request: Request) -> None:
        """AUTH_MODE=harbor, before an answer that names no project (a fan-out, a 404): the
        credentials must be good; a client without any is asked for them."""
        if self._harbor_auth is not None:
            await self._harbor_auth.login(request.header(b"authorization"))

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
        state = "ok" if count else "no proxy-cache project known"
        if self.draining and request.kind == routes.READYZ:
            status, state = 503, "shutting down"
        body = json.dumps({"status": state, "projects": count}).encode()
        head_only = request.method == "HEAD"
        client.write(responses.simple(status, body, head_only=head_only,
                                      close=not client.keep_alive))  # fmt: skip
