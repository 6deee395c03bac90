"""The metrics port (``METRICS_ADDR``): ``/metrics`` and the debug endpoints.

Theory of operation: the port is a small aiohttp application of its own, on the worker's event
loop but never on the request path — the main port's protocol does not know it exists, so a
``/debug/...`` request on the main port is an ordinary 404. A scrape does two things: it reads
the live counters into metric families on the loop (plain dict reads, well under a
millisecond), then renders the text format in a thread executor, so the loop goes back to
requests while the text is built. The read has to be on the loop: the counters are plain dicts
written by the loop thread, and reading them from another thread could see a dict change size.

With ``WORKERS`` > 1 (``server.run``), each worker serves the same application on a private
unix socket instead (plus ``GET /snapshot``, its families as JSON), and the parent process
serves ``METRICS_ADDR`` with :class:`Aggregator`: a scrape asks every worker for its snapshot
at once (bounded by :data:`WORKER_TIMEOUT`), sums them (``metrics.merge``) with the parent's own
``process_*``, and renders. ``GET /debug/...`` goes to the first worker, ``DELETE /debug/cache``
to every worker (each has its own L1; Redis is shared).

Debug endpoints (JSON):

- ``GET /debug/projects``: discovered projects in priority order, registry type, breaker state.
- ``GET /debug/resolve?name=library/nginx``: where the repository maps and from which tier
  (``l1``, ``redis`` or ``none``), with the entry's age in seconds. Read-only: a Redis answer is
  not copied into L1 (the L1 read does count in the cache's hit/miss counters).
- ``DELETE /debug/cache?name=...``: drop the mapping from L1 and Redis (negative entries are per
  reference and are left to expire).

``name`` is validated with the router's own name grammar and length limit: 400 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from . import errors, metrics

if TYPE_CHECKING:
    from .breaker import Breakers
    from .discovery import Discovery
    from .mapping import MappingCache
    from .routes import Router
    from .shared import SharedStore

log = logging.getLogger("harbor_router.admin")

WORKER_TIMEOUT: Final = 2.0
_TEXT_FORMAT: Final = "text/plain; version=0.0.4; charset=utf-8"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, indent=1).encode(), status=status, content_type="application/json"
    )


def _bad_name(detail: str) -> web.Response:
    return _json({"errors": [{"code": "NAME_INVALID", "message": detail}]}, 400)


class Admin:
    """The endpoints of one worker, over its services."""

    def __init__(
        self,
        *,
        metrics: metrics.Metrics,
        router: Router,
        discovery: Discovery,
        breakers: Breakers,
        mapping: MappingCache,
        shared: SharedStore | None,
    ) -> None:
        self.metrics = metrics
        self._router = router
        self._discovery = discovery
        self._breakers = breakers
        self._mapping = mapping
        self._shared = shared
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def application(self, *, snapshot: bool) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_text)
        if snapshot:
            app.router.add_get("/snapshot", self.snapshot)
        app.router.add_get("/debug/projects", self.projects)
        app.router.add_get("/debug/resolve", self.resolve)
        app.router.add_delete("/debug/cache", self.drop)
        return app

    async def start(self, host: str, port: int) -> None:
        """Serve on TCP (one worker: this process is the metrics port)."""
        self._runner = await _start(self.application(snapshot=False), host=host, port=port)
        self.port = _bound_port(self._runner)

    async def start_unix(self, path: str) -> None:
        """Serve on a private unix socket for the parent's aggregator."""
        self._runner = await _start(self.application(snapshot=True), path=path)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # /metrics
    async def metrics_text(self, request: web.Request) -> web.Response:
        families = self.metrics.collect()
        body = await asyncio.get_running_loop().run_in_executor(None, metrics.render, families)
        return web.Response(body=body, headers={"Content-Type": _TEXT_FORMAT})

    async def snapshot(self, request: web.Request) -> web.Response:
        families = self.metrics.collect()
        body = await asyncio.get_running_loop().run_in_executor(None, metrics.snapshot, families)
        return web.Response(body=body, content_type="application/json")

    # /debug
    async def projects(self, request: web.Request) -> web.Response:
        discovery = self._discovery
        out = []
        for project in discovery.projects.ordered:
            breaker = self._breakers.get(project.name)
            out.append(
                {
                    "name": project.name,
                    "registry_type": project.registry_type,
                    "hosts": list(project.hosts),
                    "breaker": breaker.state,
                    "breaker_value": metrics.BREAKER_STATES.get(breaker.state, 0),
                    "failures": breaker.failures,
                    "retry_after_seconds": round(breaker.retry_after(), 3),
                }
            )
        last = self.metrics.discovery_last_success
        return _json(
            {
                "projects": out,
                "last_error": discovery.last_error,
                "last_success": last or None,
            }
        )

    def _name(self, request: web.Request) -> str | web.Response:
        name = request.query.get("name", "")
        if not name:
            return _bad_name("the query parameter name is required")
        try:
            self._router.check_name(name)
        except errors.NameInvalid:
            return _bad_name("invalid repository name")
        return name

    async def resolve(self, request: web.Request) -> web.Response:
        name = self._name(request)
        if isinstance(name, web.Response):
            return name
        mapping = self._mapping
        entry = mapping.positive.get(name)
        if entry is not None:
            project, stored_at = entry
            age = max(0.0, mapping.now() - stored_at)
            return _json(_where(name, project, "l1", age, mapping))
        shared = self._shared
        if shared is not None and shared.available:
            remote = await shared.get_mapping(name)
            if remote is not None:
                project, stored_wall = remote
                age = max(0.0, time.time() - stored_wall)
                return _json(_where(name, project, "redis", age, mapping))
        redis_state = None if shared is None else shared.state
        return _json(
            {
                "name": name,
                "project": None,
                "tier": "none",
                "age_seconds": None,
                "redis": redis_state,
            }
        )

    async def drop(self, request: web.Request) -> web.Response:
        name = self._name(request)
        if isinstance(name, web.Response):
            return name
        mapping = self._mapping
        l1 = mapping.positive.delete(name)
        redis: bool | None = None
        if self._shared is not None:
            redis = await self._shared.delete_mapping(name)
        return _json({"name": name, "l1": bool(l1), "redis": redis})


def _where(name: str, project: str, tier: str, age: float, mapping: MappingCache) -> dict[str, Any]:
    ttl = mapping.ttl
    return {
        "name": name,
        "project": project,
        "tier": tier,
        "age_seconds": round(age, 3),
        "state": "fresh" if age <= ttl else "stale",
    }


async def _start(
    app: web.Application, *, host: str = "", port: int = 0, path: str = ""
) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        if path:
            site: web.BaseSite = web.UnixSite(runner, path)
        else:
            site = web.TCPSite(runner, host or None, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class Aggregator:
    """The parent's ``METRICS_ADDR`` with ``WORKERS`` > 1: sums the workers' snapshots."""

    def __init__(self, sockets: Sequence[str]) -> None:
        self._sockets = tuple(sockets)
        self._sessions: list[aiohttp.ClientSession] = []
        self._runner: web.AppRunner | None = None
        self.failed_scrapes = 0

    async def start(self, host: str, port: int) -> None:
        self._sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path),
                timeout=aiohttp.ClientTimeout(total=WORKER_TIMEOUT),
            )
            for path in self._sockets
        ]
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_text)
        app.router.add_get("/debug/projects", self.first)
        app.router.add_get("/debug/resolve", self.first)
        app.router.add_delete("/debug/cache", self.every)
        self._runner = await _start(app, host=host, port=port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for session in self._sessions:
            await session.close()
        self._sessions = []

    async def _ask(
        self, session: aiohttp.ClientSession, method: str, target: str
    ) -> tuple[int, bytes]:
        async with session.request(method, f"http://worker{target}") as resp:
            return resp.status, await resp.read()

    async def metrics_text(self, request: web.Request) -> web.Response:
        answers = await asyncio.gather(
            *(self._ask(s, "GET", "/snapshot") for s in self._sessions), return_exceptions=True
        )
        snapshots: list[Sequence[Any]] = [metrics.as_rows(metrics.process_families())]
        for answer in answers:
            if isinstance(answer, BaseException) or answer[0] != 200:
                self.failed_scrapes += 1  # a worker starting or gone: the others still count
                continue
            with contextlib.suppress(ValueError):
                snapshots.append(metrics.parse_snapshot(answer[1]))
        scraped = GaugeMetricFamily(
            metrics.PREFIX + "workers_scraped", "Worker processes summed in this scrape", labels=[]
        )
        scraped.add_metric([], len(snapshots) - 1)
        snapshots.append(metrics.as_rows([scraped]))
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, _merge_render, snapshots)
        return web.Response(body=body, headers={"Content-Type": _TEXT_FORMAT})

    async def first(self, request: web.Request) -> web.Response:
        try:
            status, body = await self._ask(self._sessions[0], request.method, request.path_qs)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _json({"error": f"worker 0 did not answer: {type(exc).__name__}"}, 502)
        return web.Response(body=body, status=status, content_type="application/json")

    async def every(self, request: web.Request) -> web.Response:
        answers = await asyncio.gather(
            *(self._ask(s, request.method, request.path_qs) for s in self._sessions),
            return_exceptions=True,
        )
        workers: list[Any] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                workers.append({"error": type(answer).__name__})
                continue
            status, body = answer
            if status != 200:  # the same validation runs in every worker
                return web.Response(body=body, status=status, content_type="application/json")
            workers.append(json.loads(body))
        redis = [w.get("redis") for w in workers]
        return _json(
            {
                "name": request.query.get("name", ""),
                "l1": any(w.get("l1") for w in workers),
                # the first worker deletes the shared key; the others find it gone
                "redis": True if True in redis else False if False in redis else None,
                "workers": workers,
            }
        )


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return None


def _merge_render(snapshots: list[Sequence[Any]]) -> bytes:
    return metrics.render(metrics.merge(snapshots))
