"""Fan-out on a cache miss: ask every candidate project at once, keep the best good answer.

Theory of operation: a miss costs one request per project, so this runs on aiohttp (control
plane), never on the hit path. Every candidate whose breaker allows it is asked at once, each
bounded by ``RESOLVER_TIMEOUT`` (one deadline for them all: those still waiting when it passes
are cancelled, and count as timed out). The first good answer (``_WIN_RULES``) opens a short
grace window (``FANOUT_GRACE``) in which a *better* answer may still arrive: one whose
Content-Type matches the client's Accept (a non-matching 2xx is only a fallback), or one from a
project earlier in priority order — so every pod maps an image to the same project. The window
closes early as soon as no pending project could do better. The rest of a blob race are then
cancelled; the rest of a buffered fan-out (small answers) are let finish unwatched, so their
keep-alive connections survive, and count for nothing, exactly as if cancelled.

When nothing wins, the outcomes of all candidates decide the client's error (DESIGN §3.2,
``_failure``): 404 only when every candidate said a definite 404 (a project skipped by its
breaker is not a 404), 429 only when every candidate was rate limited, 503 when no project could
be asked at all, otherwise 502 naming each project's outcome. Identical concurrent misses share
one fan-out (singleflight); followers wait at most ``RESOLVER_TIMEOUT`` + a margin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from . import __version__, errors, routes
from .auth import Credentials
from .bodies import read_body
from .breaker import Breaker, Breakers, is_failure
from .logs import event
from .metrics import Metrics
from .projects import Project

#: The fan-out's User-Agent when the client sent none.
USER_AGENT = f"harbor-router/{__version__}"

log = logging.getLogger("harbor_router.resolver")

SECTIONS: Final = {
    routes.MANIFEST: "manifests",
    routes.BLOB: "blobs",
    routes.REFERRERS: "referrers",
}
NOT_FOUND_ERRORS: Final[dict[int, type[errors.RegistryError]]] = {
    routes.MANIFEST: errors.ManifestUnknown,
    routes.REFERRERS: errors.ManifestUnknown,
    routes.BLOB: errors.BlobUnknown,
    routes.TAGS: errors.NameUnknown,
}
_UNKNOWN_MESSAGES: Final = {
    routes.MANIFEST: "manifest unknown to every proxy-cache project",
    routes.REFERRERS: "manifest unknown to every proxy-cache project",
    routes.BLOB: "blob unknown to every proxy-cache project",
    routes.TAGS: "repository unknown to every proxy-cache project",
}
FOLLOWER_MARGIN: Final = 1.0
# Request headers that change the answer: misses share a fan-out only when these are equal.
_KEY_HEADERS: Final = frozenset({"Accept", "Range", "If-None-Match", "If-Range"})

# Outcome kinds.
FOUND, EMPTY, NOT_FOUND, RATE_LIMITED, TIMEOUT, ERROR, STATUS, BREAKER_OPEN = (
    "found", "empty", "not_found", "rate_limited", "timeout", "error", "status", "breaker_open",
)  # fmt: skip


class _Round:
    """What the probes of one fan-out share. ``over``: its deadline has passed, so a probe
    cancelled now has timed out (a breaker failure) rather than lost. Once the answer is chosen
    (``losers`` set), the probes still running are losers, let finish (their connections stay
    usable) but counted for nothing, as if cancelled; ``timer`` gives them up at the deadline."""

    __slots__ = ("losers", "over", "timer")

    def __init__(self) -> None:
        self.over = False
        self.losers: set[asyncio.Task[Outcome]] | None = None
        self.timer: asyncio.TimerHandle | None = None


class _Arrivals:
    """The probes of one fan-out as they end, in that order: one callback per probe, where
    ``asyncio.wait`` registers and unregisters itself on every pending task at every wake-up."""

    __slots__ = ("_ended", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ended: list[asyncio.Task[Outcome]] = []
        self._waiter: asyncio.Future[None] | None = None

    def __call__(self, task: asyncio.Task[Outcome]) -> None:
        self._ended.append(task)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, until: float | None) -> list[asyncio.Task[Outcome]]:
        """The probes that ended since the last call; none if loop time ``until`` came first."""
        if not self._ended:
            waiter = self._waiter = self._loop.create_future()
            timer = None if until is None else self._loop.call_at(until, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        ended, self._ended = self._ended, []
        return ended


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(slots=True)
class Winner:
    project: Project
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    response: aiohttp.ClientResponse | None = field(default=None, repr=False)

    def release(self) -> None:
        if self.response is not None:
            self.response.release()
            self.response = None

    @property
    def content_type(self) -> bytes:
        for name, value in self.headers:
            if name.lower() == b"content-type":
                return value
        return b""


@dataclass(slots=True)
class Outcome:
    project: str
    kind: str
    text: str
    retry_after: str | None = None
    winner: Winner | None = None
    reason: str = ""  # of a connection error (upstream_connection_errors_total)


def definite_not_found(kind: int, name: str) -> errors.RegistryError:
    error = NOT_FOUND_ERRORS[kind](_UNKNOWN_MESSAGES[kind], {"name": name})
    error.definite = True
    return error


def _failure_result(exc: BaseException) -> str:
    """The ``result`` label of a fan-out that nothing won."""
    if isinstance(exc, errors.RegistryError):
        if exc.definite:
            return "not_found"
        if isinstance(exc, errors.TooManyRequests):
            return "rate_limited"
        if isinstance(exc, errors.Unavailable):
            return "unavailable"
        return "error"
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"


def _error_reason(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return "reset"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    return "protocol"


def accepted_types(forward: Sequence[tuple[str, str]]) -> frozenset[str] | None:
    """Media types the client accepts, or None when it accepts anything."""
    types: set[str] = set()
    for name, value in forward:
        if name == "Accept":
            for part in value.split(","):
                media = part.split(";", 1)[0].strip().lower()
                if media:
                    types.add(media)
    if not types or "*/*" in types:
        return None
    return frozenset(types)


def _matches(content_type: bytes, accepted: frozenset[str] | None) -> bool:
    if accepted is None:
        return True
    media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
    if not media:
        return True  # no Content-Type (HEAD of a blob, 304): nothing to judge
    return media in accepted or media.split("/", 1)[0] + "/*" in accepted


def _tags_non_empty(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("tags"))


def _tags_rule(status: int, body: bytes) -> str:
    if status != 200:
        return ""
    return FOUND if _tags_non_empty(body) else EMPTY


def _buffered_rule(status: int, _: bytes) -> str:
    # 304: the client's If-None-Match matched, which also proves the project has it
    return FOUND if 200 <= status < 300 or status == 304 else ""


def _stream_rule(status: int, _: bytes) -> str:
    # a redirect to object storage is a blob found: the client follows it, never the router
    return FOUND if 200 <= status < 300 or status in (302, 303, 307) else ""


class Resolver:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        harbor_url: str,
        credentials: Credentials,
        breakers: Breakers,
        *,
        timeout: float,
        max_body: int,
        grace: float = 0.05,
        read_timeout: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``timeout``: each project's time to answer (head, and a buffered body);
        ``read_timeout``: the longest silence within a streamed winner's body (default:
        ``timeout``)."""
        self._metrics = metrics if metrics is not None else Metrics()
        read_timeout = timeout if read_timeout is None else read_timeout
        self._client_timeout = aiohttp.ClientTimeout(total=None, sock_read=read_timeout)
        # A buffered answer (head and body) is bounded by ``timeout`` as a whole: only a shorter
        # silence limit can still end it earlier, so a longer one costs no timer per read.
        self._buffered_timeout = aiohttp.ClientTimeout(
            total=None, sock_read=read_timeout if read_timeout < timeout else None
        )
        self._session = session
        self._harbor_url = harbor_url
        self._credentials = credentials
        self._breakers = breakers
        self._timeout = timeout
        self._max_body = max_body
        self._timed_out = f"timeout after {timeout:g}s"
        self._grace = grace
        self._inflight: dict[tuple[object, ...], asyncio.Future[Winner]] = {}
        self._rounds: set[_Round] = set()  # decided, with losers still running
        self._bases: dict[str, URL] = {}  # per project: Harbor's URL up to the repository

    def url(self, project: Project, route: routes.Route) -> URL:
        name = project.upstream_name(route.upstream)
        if route.kind == routes.TAGS:
            tail = f"{name}/tags/list"
        else:
            tail = f"{name}/{SECTIONS[route.kind]}/{route.reference}"
        if route.query:
            return URL(f"{self._harbor_url}/v2/{project.name}/{tail}?{route.query}")
        base = self._bases.get(project.name)
        if base is None:
            base = self._bases[project.name] = URL(f"{self._harbor_url}/v2/{project.name}/")
        # Name and reference passed the route's grammar: nothing in them to encode or resolve.
        return base.with_path(base.raw_path + tail, encoded=True)

    async def resolve(
        self,
        method: str,
        route: routes.Route,
        candidates: Sequence[Project],
        forward: list[tuple[str, str]],
    ) -> Winner:
        """Buffered fan-out (manifests, referrers, tags, blob HEAD), shared by identical misses."""
        key = (
            method, route.kind, route.key, route.reference, route.query,
            tuple(h for h in forward if h[0] in _KEY_HEADERS),
        )  # fmt: skip
        shared = self._inflight.get(key)
        if shared is not None:
            self._metrics.dedup += 1
            try:
                async with asyncio.timeout(self._timeout + FOLLOWER_MARGIN):
                    return await asyncio.shield(shared)
            except TimeoutError:
                raise errors.Unavailable("timed out waiting for a shared resolution") from None
        future: asyncio.Future[Winner] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        start = time.perf_counter()
        try:
            winner = await self._fanout(method, route, candidates, forward, stream=False)
        except BaseException as exc:
            self._record(method, route, _failure_result(exc), start, None)
            if isinstance(exc, asyncio.CancelledError):
                exc = errors.Unavailable("the shared resolution was interrupted")
            future.set_exception(exc)
            future.exception()  # retrieved: followers re-raise it themselves
            raise
        else:
            empty = route.kind == routes.TAGS and not _tags_non_empty(winner.body)
            self._record(method, route, "empty" if empty else FOUND, start, winner.project.name)
            future.set_result(winner)
            return winner
        finally:
            del self._inflight[key]

    @property
    def inflight(self) -> int:
        """Fan-outs in flight that identical misses may join (singleflight)."""
        return len(self._inflight)

    def _record(
        self, method: str, route: routes.Route, result: str, start: float, project: str | None
    ) -> None:
        duration = time.perf_counter() - start
        self._metrics.resolved(route.kind == routes.TAGS, result, duration)
        log.info(
            "resolved %s %s: %s%s in %.1f ms",
            method,
            route.name,
            result,
            f" in {project}" if project else "",
            duration * 1000.0,
            extra=event(
                "resolve",
                method=method,
                name=route.name,
                kind=routes.KIND_NAMES[route.kind],
                result=result,
                project=project or "",
                duration_ms=round(duration * 1000.0, 3),
            ),
        )

    async def race(
        self, route: routes.Route, candidates: Sequence[Project], forward: list[tuple[str, str]]
    ) -> Winner:
        """GET race for a blob nobody mapped: the winner's response stays open for streaming."""
        return await self._fanout("GET", route, candidates, forward, stream=True)

    async def _fanout(
        self,
        method: str,
        route: routes.Route,
        candidates: Sequence[Project],
        forward: list[tuple[str, str]],
        *,
        stream: bool,
    ) -> Winner:
        headers: CIMultiDict[str] = CIMultiDict(forward)
        # What aiohttp would add otherwise: the encoding as it is, and no client name of its own
        headers.setdefault("Accept-Encoding", "identity")
        headers.setdefault("User-Agent", USER_AGENT)
        if self._credentials.header:
            headers["Authorization"] = self._credentials.header.decode("ascii")
        if route.kind == routes.TAGS:
            rule: Callable[[int, bytes], str] = _tags_rule
        else:
            rule = _stream_rule if stream else _buffered_rule
        accepted = None if stream else accepted_types(forward)
        outcomes: list[Outcome] = []
        rank: dict[asyncio.Task[Outcome], int] = {}
        loop = asyncio.get_running_loop()
        # One deadline for all the probes (RESOLVER_TIMEOUT: a head, and a buffered body), not
        # a timer each: when it passes, those still waiting are cancelled as timed out.
        expires = loop.time() + self._timeout
        shared = _Round()
        arrivals = _Arrivals(loop)
        for i, project in enumerate(candidates):
            breaker = self._breakers.get(project.name)
            if breaker.allow():
                url = self.url(project, route)
                task = loop.create_task(
                    self._probe(method, project, breaker, url, headers, rule, stream, shared)
                )
                task.add_done_callback(arrivals)
                rank[task] = i
            else:
                outcomes.append(Outcome(project.name, BREAKER_OPEN, "circuit breaker open"))
        self._metrics.observe_fanout(len(rank))
        best: Outcome | None = None
        best_key = (2, 0)
        empty: Winner | None = None
        deadline: float | None = None  # of the grace window
        pending = set(rank)
        decided = False
        try:
            while pending:
                grace = deadline is not None and deadline <= expires
                wake = deadline if grace and deadline is not None else expires
                done = await arrivals.next(wake)
                if not done:
                    if grace:
                        decided = True
                        break  # grace window over: the best so far wins
                    shared.over = True
                    for task in pending:
                        task.cancel()
                    while len(done) < len(pending):  # each ends with its timeout outcome
                        done += await arrivals.next(None)
                pending.difference_update(done)
                for task in done:
                    if task.cancelled():  # given up before it ever ran
                        name = candidates[rank[task]].name
                        outcomes.append(Outcome(name, TIMEOUT, self._timed_out))
                        continue
                    outcome = task.result()
                    if outcome.kind == FOUND and outcome.winner is not None:
                        key = (
                            0 if _matches(outcome.winner.content_type, accepted) else 1,
                            rank[task],
                        )
                        if key < best_key:
                            best, best_key = outcome, key
                        if deadline is None:
                            deadline = loop.time() + (0.0 if stream else self._grace)
                        continue
                    if outcome.kind == EMPTY and empty is None:
                        empty = outcome.winner
                    outcomes.append(outcome)
                if best is not None:
                    non_matching, best_rank = best_key
                    could_beat = bool(non_matching and pending) or any(
                        rank[t] < best_rank for t in pending
                    )
                    if stream or not could_beat:
                        decided = True
                        break  # nothing pending could beat it
        finally:
            # a probe may have ended since the last arrival was taken (its callback not run
            # yet): it counted itself as any probe does, and is no loser to wait for
            running = [task for task in pending if not task.done()]
            if decided and running and not stream:
                self._linger(shared, running, [candidates[rank[t]] for t in running], expires)
            else:  # a blob race's losers would download; an interrupted fan-out has no use
                for task in running:
                    task.cancel()
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
            chosen = best.winner if best is not None else None
            for task in rank:  # close every open response but the chosen one
                if task.done() and not task.cancelled() and task.exception() is None:
                    loser = task.result().winner
                    if loser is not None and loser is not chosen:
                        loser.release()
        if best is not None and best.winner is not None:
            return best.winner
        if empty is not None:
            return empty
        raise self._failure(route, outcomes)

    def _linger(
        self,
        shared: _Round,
        losers: list[asyncio.Task[Outcome]],
        projects: list[Project],
        expires: float,
    ) -> None:
        """The answer is chosen and some probes are still running: they are neither waited for
        nor cancelled (a request cancelled in flight costs its connection, and the next miss a
        new one), but count for nothing, exactly as if cancelled (their breakers are told so
        now); those still running at the fan-out's deadline are cancelled then."""
        for project in projects:
            self._breakers.get(project.name).abandon()
        shared.losers = set(losers)
        shared.timer = asyncio.get_running_loop().call_at(expires, self._give_up, shared)
        self._rounds.add(shared)

    def _give_up(self, shared: _Round) -> None:
        self._rounds.discard(shared)
        for task in shared.losers or ():
            task.cancel()

    def _lost(self, shared: _Round) -> None:
        """A loser of a decided fan-out has ended (the running task)."""
        losers = shared.losers
        assert losers is not None
        task = asyncio.current_task()
        if task is not None:
            losers.discard(task)
        if not losers and shared.timer is not None:
            shared.timer.cancel()
            self._rounds.discard(shared)

    @property
    def lingering(self) -> int:
        """Losers of decided fan-outs still running (each ends by its fan-out's deadline)."""
        return sum(len(shared.losers or ()) for shared in list(self._rounds))

    async def close(self) -> None:
        """Give up the losers still running."""
        tasks = [task for shared in self._rounds for task in shared.losers or ()]
        for shared in list(self._rounds):
            self._give_up(shared)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe(
        self,
        method: str,
        project: Project,
        breaker: Breaker,
        url: URL,
        headers: CIMultiDict[str],
        rule: Callable[[int, bytes], str],
        stream: bool,
        shared: _Round,
    ) -> Outcome:
        """Ask one project: its outcome, counted in the metrics and in its breaker."""
        name = project.name
        start = time.perf_counter()
        resp: aiohttp.ClientResponse | None = None
        status = 0  # of the answer, if one came
        try:
            resp = response = await self._session.request(
                method,
                url,
                headers=headers,
                allow_redirects=False,
                timeout=self._client_timeout if stream else self._buffered_timeout,
            )
            status = response.status
            outcome: Outcome | None = None
            if stream:
                verdict = rule(status, b"")
                if verdict:
                    winner = Winner(project, status, list(response.raw_headers), response=resp)
                    resp = None  # the winner's to release
                    outcome = Outcome(name, verdict, str(status), winner=winner)
            else:
                size = response.content_length
                if status >= 300 and size is not None and size <= self._max_body:
                    body = b""  # no rule looks at the body of a 3xx/4xx/5xx, only its size
                else:
                    body = await read_body(response.content, self._max_body)
                if len(body) > self._max_body:
                    outcome = Outcome(name, STATUS, f"{status} (larger than {self._max_body} B)")
                else:
                    verdict = rule(status, body)
                    if verdict:
                        winner = Winner(project, status, list(response.raw_headers), body=body)
                        outcome = Outcome(name, verdict, str(status), winner=winner)
            if outcome is None:
                if status == 404:
                    outcome = Outcome(name, NOT_FOUND, "404")
                elif status == 429:
                    retry_after = response.headers.get("Retry-After")
                    outcome = Outcome(name, RATE_LIMITED, "429", retry_after)
                else:
                    outcome = Outcome(name, STATUS, str(status))
        except asyncio.CancelledError:
            if shared.losers is not None:  # a loser still running at its deadline
                self._lost(shared)
                raise
            if not shared.over:
                breaker.abandon()  # a loser of a blob race, or the fan-out interrupted
                raise
            outcome = Outcome(name, TIMEOUT, self._timed_out)
        except TimeoutError:
            outcome = Outcome(name, TIMEOUT, self._timed_out)
        except aiohttp.ClientError as exc:
            outcome = Outcome(name, ERROR, f"connection error ({type(exc).__name__})")
            outcome.reason = _error_reason(exc)
        finally:
            if resp is not None:
                resp.release()
        if shared.losers is not None:  # a loser: its breaker was told when the answer was chosen
            self._lost(shared)
            return outcome
        metrics = self._metrics
        kind = outcome.kind
        if kind == TIMEOUT:
            metrics.connection_error("timeout")
            metrics.upstream_done(name, "timeout", time.perf_counter() - start)
            breaker.failure()
        elif kind == ERROR:
            metrics.connection_error(outcome.reason)
            metrics.upstream_done(name, "error", time.perf_counter() - start)
            breaker.failure()
        else:
            metrics.upstream_answered(name, status, time.perf_counter() - start)
            if kind == STATUS and is_failure(status):
                breaker.failure()
            else:
                breaker.success()
        return outcome

    @staticmethod
    def _failure(route: routes.Route, outcomes: list[Outcome]) -> errors.RegistryError:
        """The decision table of DESIGN §3.2 for a fan-out that nothing won."""
        kinds = {o.kind for o in outcomes}
        detail = {o.project: o.text for o in outcomes}
        if not outcomes:
            return errors.Unavailable("no proxy-cache project is known yet")
        if kinds == {NOT_FOUND}:
            return definite_not_found(route.kind, route.name)
        if kinds == {RATE_LIMITED}:
            retry = max(
                (int(o.retry_after) for o in outcomes
                 if o.retry_after and o.retry_after.isdigit()),
                default=60,
            )  # fmt: skip
            return errors.TooManyRequests(
                "every proxy-cache project is rate limited upstream",
                detail,
                headers=((b"Retry-After", str(retry).encode()),),
            )
        if kinds == {BREAKER_OPEN}:
            return errors.Unavailable(
                "every proxy-cache project is failing (breakers open)", detail
            )
        return errors.BadGateway("no proxy-cache project could answer", detail)
