"""Fan-out on a cache miss: ask every candidate project at once, keep the first good answer.

Runs on aiohttp (control plane): a miss costs one request per project, so convenience wins over
the raw pool here. What counts as a good answer depends on the route (``_WINS``); when nothing
wins, the outcomes of all projects decide the client's error (DESIGN §3.2): a 404 only when every
project said a definite 404, 429 only when every project was rate limited, else 502 naming each
project's outcome. Concurrent identical misses share one fan-out (singleflight).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict

from . import errors, routes
from .auth import Credentials
from .projects import Project

SECTIONS = {
    routes.MANIFEST: "manifests",
    routes.BLOB: "blobs",
    routes.REFERRERS: "referrers",
}
_NOT_FOUND = {
    routes.MANIFEST: errors.ManifestUnknown,
    routes.REFERRERS: errors.ManifestUnknown,
    routes.BLOB: errors.BlobUnknown,
    routes.TAGS: errors.NameUnknown,
}
_UNKNOWN_MESSAGES = {
    routes.MANIFEST: "manifest unknown to every proxy-cache project",
    routes.REFERRERS: "manifest unknown to every proxy-cache project",
    routes.BLOB: "blob unknown to every proxy-cache project",
    routes.TAGS: "repository unknown to every proxy-cache project",
}


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


@dataclass(slots=True)
class Outcome:
    project: str
    kind: str  # found | empty | not_found | rate_limited | timeout | error | status
    text: str
    retry_after: str | None = None
    winner: Winner | None = None


def _tags_non_empty(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("tags"))


class Resolver:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        harbor_url: str,
        credentials: Credentials,
        *,
        timeout: float,
        max_body: int,
    ) -> None:
        self._session = session
        self._harbor_url = harbor_url
        self._credentials = credentials
        self._timeout = timeout
        self._max_body = max_body
        self._inflight: dict[tuple[object, ...], asyncio.Future[Winner]] = {}

    def url(self, project: Project, route: routes.Route) -> str:
        name = project.upstream_name(route.name)
        base = f"{self._harbor_url}/v2/{project.name}/{name}"
        if route.kind == routes.TAGS:
            return f"{base}/tags/list" + (f"?{route.query}" if route.query else "")
        url = f"{base}/{SECTIONS[route.kind]}/{route.reference}"
        return url + (f"?{route.query}" if route.query else "")

    async def resolve(
        self,
        method: str,
        route: routes.Route,
        candidates: Sequence[Project],
        forward: list[tuple[str, str]],
    ) -> Winner:
        """Buffered fan-out (manifests, referrers, tags, blob HEAD), shared by identical misses."""
        key = (method, route.kind, route.name, route.reference, route.query, tuple(forward))
        shared = self._inflight.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        future: asyncio.Future[Winner] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            winner = await self._fanout(method, route, candidates, forward, stream=False)
        except BaseException as exc:
            if not future.done():
                if isinstance(exc, asyncio.CancelledError):
                    exc = errors.Unavailable("the shared resolution was interrupted")
                future.set_exception(exc)
                future.exception()  # retrieved: followers re-raise it themselves
            raise
        else:
            future.set_result(winner)
            return winner
        finally:
            del self._inflight[key]

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
        if not candidates:
            raise errors.Unavailable("no proxy-cache project is known yet")
        headers: CIMultiDict[str] = CIMultiDict(forward)
        if self._credentials.header:
            headers["Authorization"] = self._credentials.header.decode("ascii")
        wins = self._win_rule(route, stream)
        tasks = {
            asyncio.ensure_future(self._probe(method, p, route, headers, wins, stream)): p
            for p in candidates
        }
        outcomes: list[Outcome] = []
        empty: Winner | None = None
        chosen: Winner | None = None
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    outcome = task.result()
                    if outcome.kind == "found" and outcome.winner is not None:
                        chosen = outcome.winner
                        return chosen
                    if outcome.kind == "empty" and empty is None:
                        empty = outcome.winner
                    outcomes.append(outcome)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:  # close the losers' open responses
                if isinstance(result, Outcome):
                    loser = result.winner
                    if loser is not None and loser is not chosen:
                        loser.release()
        if empty is not None:
            return empty
        raise self._failure(route, outcomes)

    @staticmethod
    def _win_rule(route: routes.Route, stream: bool) -> Callable[[int, bytes], str]:
        if route.kind == routes.TAGS:

            def tags(status: int, body: bytes) -> str:
                if status != 200:
                    return ""
                return "found" if _tags_non_empty(body) else "empty"

            return tags
        if stream:
            return lambda status, _: (
                "found" if 200 <= status < 300 or status in (302, 303, 307) else ""
            )
        # 304: the client's If-None-Match matched, which also proves the project has it
        return lambda status, _: "found" if 200 <= status < 300 or status == 304 else ""

    async def _probe(
        self,
        method: str,
        project: Project,
        route: routes.Route,
        headers: CIMultiDict[str],
        wins: Callable[[int, bytes], str],
        stream: bool,
    ) -> Outcome:
        name = project.name
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self._timeout):
                resp = await self._session.request(
                    method,
                    self.url(project, route),
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=self._timeout),
                )
                raw = [(bytes(k), bytes(v)) for k, v in resp.raw_headers]
                if stream:
                    verdict = wins(resp.status, b"")
                    if verdict:
                        winner = Winner(project, resp.status, raw, response=resp)
                        resp = None
                        return Outcome(name, verdict, str(winner.status), winner=winner)
                    body = b""
                else:
                    body = await resp.content.read(self._max_body + 1)
                    if len(body) > self._max_body:
                        return Outcome(
                            name, "error", f"response larger than {self._max_body} bytes"
                        )
                    verdict = wins(resp.status, body)
                    if verdict:
                        winner = Winner(project, resp.status, raw, body=body)
                        return Outcome(name, verdict, str(resp.status), winner=winner)
                status = resp.status
                if status == 404:
                    return Outcome(name, "not_found", "404")
                if status == 429:
                    return Outcome(name, "rate_limited", "429", resp.headers.get("Retry-After"))
                return Outcome(name, "status", str(status))
        except TimeoutError:
            return Outcome(name, "timeout", f"timeout after {self._timeout:g}s")
        except aiohttp.ClientError as exc:
            return Outcome(name, "error", type(exc).__name__)
        finally:
            if resp is not None:
                resp.release()

    @staticmethod
    def _failure(route: routes.Route, outcomes: list[Outcome]) -> errors.RegistryError:
        kinds = {o.kind for o in outcomes}
        detail = {o.project: o.text for o in outcomes}
        if kinds == {"not_found"}:
            return _NOT_FOUND[route.kind](_UNKNOWN_MESSAGES[route.kind], {"name": route.name})
        if kinds == {"rate_limited"}:
            retry = max(
                (int(o.retry_after) for o in outcomes if o.retry_after and o.retry_after.isdigit()),
                default=60,
            )
            return errors.TooManyRequests(
                "every proxy-cache project is rate limited upstream",
                detail,
                headers=((b"Retry-After", str(retry).encode()),),
            )
        return errors.BadGateway("no proxy-cache project could answer", detail)
