"""Wiring: builds the services from a :class:`~.config.Config`, serves, shuts down.

Everything is created in :meth:`App.start` and passed down explicitly; nothing happens at import.
With ``WORKERS`` > 1 the parent forks that many processes, each serving the same port with
``SO_REUSEPORT`` and keeping its own L1 cache (DESIGN §5). Each worker then serves its metrics
on a private unix socket (in a directory the parent creates), and the parent serves
``METRICS_ADDR``, summing the workers' metrics at scrape time (``admin.Aggregator``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from . import DATAPLANE, __version__, _cache, _wire, logs, routes
from .admin import Admin, Aggregator
from .auth import HARBOR, HEADER, ChallengeCache, Credentials, HarborAuth
from .breaker import OPEN, Breakers
from .config import SCHED_POLICIES, Config
from .discovery import Discovery
from .forwarding import Forwarder
from .handler import RequestHandler
from .mapping import MappingCache
from .metrics import Metrics
from .projects import ProjectSet
from .protocol import Connections, HttpProtocol
from .ratelimit import RateLimitGuard
from .resolver import Resolver
from .shared import SharedStore, wall_to_monotonic
from .tiers import Tiers
from .upstream import UpstreamPool

log = logging.getLogger("harbor_router.server")

CONNECT_TIMEOUT = 5.0
DRAIN_POLL = 0.05
#: Allocations between two collections of the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 5_000


def tune_gc() -> None:
    """Once the services are up. A fan-out keeps some fifty requests' aiohttp objects alive at
    once: collected every 700 allocations, they were found alive several times per miss and
    promoted, until full collections (tens of ms each) came every few dozen misses. Collected
    every few thousand, most of them are gone by refcount before a collection sees them."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


def speedups() -> str:
    """Which implementation each twin runs on (``c`` compiled, ``py`` pure Python)."""
    return f"cache={_cache.IMPLEMENTATION} wire={_wire.IMPLEMENTATION} dataplane={DATAPLANE}"


def upstream_ssl_context(config: Config) -> ssl.SSLContext | None:
    if urlsplit(config.harbor_url).scheme != "https":
        return None
    context = ssl.create_default_context(cafile=config.upstream_ca_file)
    if not config.upstream_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class App:
    """The router's services for one process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fanout_session: aiohttp.ClientSession | None = None
        self._auth_session: aiohttp.ClientSession | None = None
        self.harbor_auth: HarborAuth | None = None
        self.discovery: Discovery | None = None
        self.pool: UpstreamPool | None = None
        self.mapping: MappingCache | None = None
        self.breakers: Breakers | None = None
        self.handler: RequestHandler | None = None
        self.forwarder: Forwarder | None = None
        self.resolver: Resolver | None = None
        self.shared: SharedStore | None = None
        self.tiers: Tiers | None = None
        self.metrics = Metrics()
        self.admin: Admin | None = None
        self.access: logs.AccessLog | None = None
        self.connections = Connections(
            max_connections=config.max_connections,
            max_headers=config.max_headers,
            max_url_bytes=config.max_url_bytes,
            header_timeout=config.header_timeout,
            keepalive_timeout=config.keepalive_timeout,
            send_timeout=config.client_send_timeout,
        )
        self._background: set[asyncio.Task[None]] = set()

    async def start(self, *, reuse_port: bool = False, metrics_socket: str | None = None) -> None:
        """Serve; the metrics port on ``METRICS_ADDR``, or on ``metrics_socket`` (a unix
        socket for the parent's aggregator) when this process is one of several workers."""
        config = self.config
        metrics = self.metrics
        url = urlsplit(config.harbor_url)
        tls = upstream_ssl_context(config)
        host = url.hostname or "localhost"
        port = url.port or (443 if url.scheme == "https" else 80)
        default_port = port == (443 if url.scheme == "https" else 80)
        host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")

        credentials = Credentials.from_config(config)
        connector = aiohttp.TCPConnector(
            limit=config.max_upstream_connections,
            ssl=tls if tls is not None else True,
            keepalive_timeout=config.idle_conn_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        # The fan-out's own session on the same connection pool: no skip_auto_headers (which
        # costs every request aiohttp's slow header path), its requests name the encoding
        # themselves (resolver.py), and no cookie jar (nothing Harbor sets is sent back).
        self._fanout_session = aiohttp.ClientSession(
            connector=connector,
            connector_owner=False,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self.shared = SharedStore.from_config(config)
        self.discovery = Discovery(
            self._session,
            config.harbor_url,
            credentials,
            proxy_project=config.proxy_project,
            interval=config.discovery_interval,
            timeout=config.resolver_timeout,
            priority=config.project_priority,
            on_refresh=self._publish_projects if self.shared is not None else None,
            metrics=metrics,
        )
        self.pool = UpstreamPool(
            host,
            port,
            ssl_context=tls,
            max_idle=config.max_idle_conns_per_host,
            idle_timeout=config.idle_conn_timeout,
            connect_timeout=min(CONNECT_TIMEOUT, config.resolver_timeout),
            max_connections=config.max_upstream_connections,
        )
        self.mapping = MappingCache(
            config.cache_max_entries,
            config.cache_ttl,
            stale_while_revalidate=config.stale_while_revalidate,
            negative_ttl=config.negative_cache_ttl,
        )
        self.tiers = Tiers(self.mapping, self.shared)
        self.breakers = Breakers(
            config.circuit_breaker_threshold,
            config.circuit_breaker_timeout,
            on_transition=self._breaker_moved,
        )
        self.resolver = resolver = Resolver(
            self._fanout_session,
            config.harbor_url,
            credentials,
            self.breakers,
            timeout=config.resolver_timeout,
            max_body=config.manifest_max_bytes,
            grace=config.fanout_grace,
            read_timeout=config.upstream_read_timeout,
            metrics=metrics,
        )
        self.forwarder = forwarder = Forwarder(
            self.pool,
            credentials,
            upstream_host=host_header,
            base_path=url.path.rstrip("/"),
            timeout=config.resolver_timeout,
            max_body=config.manifest_max_bytes,
            read_timeout=config.upstream_read_timeout,
            metrics=metrics,
        )
        challenges = (
            ChallengeCache(self._session, config.harbor_url) if config.auth_mode == HEADER else None
        )
        if config.auth_mode == HARBOR:
            # Clients' credentials go to Harbor on a session of their own that keeps no
            # cookies: nothing one client's token request brings back reaches another's.
            self._auth_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0,
                    ssl=tls if tls is not None else True,
                    keepalive_timeout=config.idle_conn_timeout,
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            self.harbor_auth = HarborAuth(
                self._auth_session,
                config.harbor_url,
                ttl=config.auth_cache_ttl,
                timeout=config.resolver_timeout,
            )
        router = routes.Router(config.proxy_project, passthrough=config.passthrough_unmatched)
        limiter = RateLimitGuard.from_config(config)
        self.handler = handler = RequestHandler(
            router=router,
            proxy_project=config.proxy_project,
            tiers=self.tiers,
            discovery=self.discovery,
            forwarder=forwarder,
            resolver=resolver,
            breakers=self.breakers,
            challenges=challenges,
            auth_mode=config.auth_mode,
            max_fanout=config.max_fanout_projects,
            limiter=limiter,
            metrics=metrics,
            harbor_auth=self.harbor_auth,
        )
        sources = metrics.sources
        sources.discovery, sources.breakers = self.discovery, self.breakers
        sources.shared, sources.mapping, sources.tiers = self.shared, self.mapping, self.tiers
        sources.ratelimit = limiter.limiter.buckets if limiter is not None else None
        sources.singleflight_inflight = lambda: resolver.inflight
        sources.open_connections = lambda: len(self.connections.active)
        sources.speedups = speedups()
        self.admin = Admin(
            metrics=metrics,
            router=router,
            discovery=self.discovery,
            breakers=self.breakers,
            mapping=self.mapping,
            shared=self.shared,
        )
        self.access = access = logs.AccessLog.if_enabled()
        max_header = config.max_header_bytes
        self.pool.start()
        if self.shared is not None:
            self.shared.start()
            await self._warm_start(self.shared)
        self.discovery.start()
        loop = asyncio.get_running_loop()
        connections = self.connections
        connections.start()
        self._server = await loop.create_server(
            lambda: HttpProtocol(handler, max_header, metrics, access, handler, connections),
            config.listen_addr.host or None,
            config.listen_addr.port,
            reuse_port=reuse_port or None,
            backlog=2048,
        )
        if metrics_socket is not None:
            await self.admin.start_unix(metrics_socket)
        else:
            await self.admin.start(config.metrics_addr.host, config.metrics_addr.port)
        log.info(
            "harbor-router %s listening on %s, prefix /v2/%s/, Harbor %s, speedups %s, auth %s",
            __version__,
            ", ".join(self.addresses()),
            config.proxy_project,
            config.harbor_url,
            speedups(),
            config.auth_mode,
        )

    async def _warm_start(self, shared: SharedStore) -> None:
        """Seed projects and hot mappings from Redis, bounded by REDIS_WARM_START_TIMEOUT."""
        assert self.discovery is not None and self.mapping is not None
        projects, hot = await shared.warm_start()
        seeded = self.discovery.seed(projects) if projects else False
        for name, (project, stored_at) in hot.items():
            self.mapping.set(name, project, wall_to_monotonic(stored_at))
        if seeded or hot:
            log.info(
                "warm start from Redis: %d projects, %d mappings",
                len(self.discovery.projects) if seeded else 0,
                len(hot),
            )

    def _breaker_moved(self, project: str, old: str, new: str) -> None:
        self.metrics.transition(project, old, new)
        log.log(
            logging.WARNING if new is OPEN else logging.INFO,
            "circuit breaker of project %s: %s -> %s",
            project,
            old,
            new,
            extra=logs.event("breaker", project=project, **{"from": old, "to": new}),
        )

    def _publish_projects(self, projects: ProjectSet) -> None:
        shared = self.shared
        if shared is None or not shared.available:
            return
        entries = [
            {"name": p.name, "registry_type": p.registry_type, "hosts": list(p.hosts)}
            for p in projects.ordered
        ]
        task = asyncio.get_running_loop().create_task(shared.set_projects(entries))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def addresses(self) -> list[str]:
        if self._server is None:
            return []
        out = []
        for sock in self._server.sockets:
            addr = sock.getsockname()
            out.append(
                f"[{addr[0]}]:{addr[1]}"
                if sock.family == socket.AF_INET6
                else f"{addr[0]}:{addr[1]}"
            )
        return out

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def metrics_port(self) -> int:
        """The TCP port of the metrics server (one worker)."""
        assert self.admin is not None and self.admin.port is not None
        return self.admin.port

    async def drain(self, grace: float) -> None:
        """Graceful shutdown, before :meth:`close`: readiness 503, no new connections, idle
        ones closed, and responses in flight given up to ``grace`` seconds to finish."""
        if self.handler is not None:
            self.handler.draining = True
        if self._server is not None:
            self._server.close()
        connections = self.connections
        connections.drain()
        deadline = time.monotonic() + grace
        while connections.active and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        if connections.active:
            log.warning(
                "shutdown grace of %.1fs over: closing %d connections",
                grace,
                len(connections.active),
            )
        connections.abort_all()

    async def close(self) -> None:
        self.connections.close()
        if self._server is not None:
            self._server.close()
        if self.admin is not None:
            await self.admin.close()
        if self.handler is not None:
            await self.handler.close()
        if self.resolver is not None:
            await self.resolver.close()
        if self.discovery is not None:
            await self.discovery.close()
        if self.tiers is not None:
            await self.tiers.close()
        for task in list(self._background):
            task.cancel()
        if self.shared is not None:
            await self.shared.close()
        if self.forwarder is not None:
            self.forwarder.close()
        if self.pool is not None:
            self.pool.close()
        if self._fanout_session is not None:
            await self._fanout_session.close()
        if self._session is not None:
            await self._session.close()
        if self._auth_session is not None:
            await self._auth_session.close()
        if self.access is not None:
            self.access.close()


async def serve(
    config: Config, *, reuse_port: bool = False, metrics_socket: str | None = None
) -> None:
    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start(reuse_port=reuse_port, metrics_socket=metrics_socket)
        tune_gc()
        await stop.wait()
        log.info("shutting down: draining connections for up to %.1fs", config.shutdown_grace)
        await app.drain(config.shutdown_grace)
    finally:
        await app.close()


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def apply_sched_policy(policy: str) -> None:
    """Give this process the ``SCHED_POLICY`` scheduling policy before it serves (the threads
    it starts later inherit it). ``batch`` (SCHED_BATCH): the process never preempts the one
    running on its CPU when it wakes up, so workers that share a CPU take turns at the end of
    each other's batch of ready sockets instead of cutting it short; it also waits for any
    other program's turn to end (docs/configuration.md has the measured effect of both). A
    kernel that refuses is logged, and the process serves on with the policy it has."""
    name = SCHED_POLICIES[policy]
    if name is None:
        return
    try:
        os.sched_setscheduler(0, getattr(os, name), os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or refused
        log.warning("cannot set the scheduling policy %s: %s", policy, exc)


def _run_one(config: Config, reuse_port: bool, metrics_socket: str | None = None) -> None:
    apply_sched_policy(config.sched_policy)
    _run_loop(serve(config, reuse_port=reuse_port, metrics_socket=metrics_socket))


async def _supervise(config: Config, children: list[int], sockets: list[str]) -> int:
    """The parent with several workers: serve the summed metrics until every child exited."""
    loop = asyncio.get_running_loop()

    def forward(signum: int) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, forward, sig)
    aggregator = Aggregator(sockets)
    status = 0
    try:
        await aggregator.start(config.metrics_addr.host, config.metrics_addr.port)
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.metrics_addr, exc.strerror or exc)
        forward(signal.SIGTERM)
        status = 1
    try:
        for child in children:
            _, code = await loop.run_in_executor(None, os.waitpid, child, 0)
            status = status or os.waitstatus_to_exitcode(code)
    finally:
        await aggregator.close()
    return status


def run(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; the console script's main loop."""
    logs.configure(config.log_level, config.log_format)
    if config.workers <= 1:
        try:
            _run_one(config, reuse_port=False)
        except OSError as exc:
            log.error("cannot listen on %s: %s", config.listen_addr, exc.strerror or exc)
            return 1
        return 0
    children: list[int] = []
    private = tempfile.mkdtemp(prefix="harbor-router-")  # 0700: only this user's processes
    sockets = [os.path.join(private, f"worker-{i}.sock") for i in range(config.workers)]
    # A signal before the parent's loop handles them must not kill it with its children alive.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for path in sockets:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 0
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                try:
                    _run_one(config, reuse_port=True, metrics_socket=path)
                except OSError as exc:
                    log.error("cannot listen on %s: %s", config.listen_addr, exc.strerror or exc)
                    code = 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.append(pid)
        status = 0

        async def supervise() -> None:
            nonlocal status
            status = await _supervise(config, children, sockets)

        _run_loop(supervise())
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return 1 if status else 0
