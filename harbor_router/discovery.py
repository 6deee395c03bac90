"""Discovery of Harbor's proxy-cache projects (DESIGN §3), refreshed every DISCOVERY_INTERVAL.

A proxy-cache project is one whose ``registry_id`` is above 0; its registry type (``docker-hub``,
``github-ghcr``, ...) and the upstream hosts it mirrors (from the registry's ``url``:
``https://ghcr.io`` is ``ghcr.io``, Docker Hub's ``https://hub.docker.com`` is ``docker.io``)
come from the project summary, asked once per project. A refresh that fails keeps the previous
list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urljoin

import aiohttp

from .auth import Credentials
from .logs import event
from .metrics import Metrics
from .projects import Project, ProjectSet, registry_hosts

log = logging.getLogger("harbor_router.discovery")

PAGE_SIZE = 100
MAX_PAGES = 1000
SUMMARY_CONCURRENCY = 8
_NEXT_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


class DiscoveryError(Exception):
    pass


class Discovery:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        harbor_url: str,
        credentials: Credentials,
        *,
        proxy_project: str,
        interval: float,
        timeout: float,
        priority: Sequence[str] = (),
        on_refresh: Callable[[ProjectSet], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else Metrics()
        self._session = session
        self._harbor_url = harbor_url
        self._credentials = credentials
        self._proxy_project = proxy_project
        self._interval = interval
        self._timeout = timeout
        self._priority = tuple(priority)
        self._on_refresh = on_refresh
        self._types: dict[str, str] = {}
        self._hosts: dict[str, tuple[str, ...]] = {}
        self._task: asyncio.Task[None] | None = None
        self.projects = ProjectSet()
        self.last_error: str | None = None
        self.refreshed = asyncio.Event()

    def seed(self, entries: Sequence[Mapping[str, Any]]) -> bool:
        """Projects known elsewhere (Redis warm start), used until the first own discovery.
        An entry without ``hosts`` (written by an older version) mirrors no known host until
        the summary is asked."""
        if self.projects:
            return False
        seeded = []
        for e in entries:
            name = e.get("name")
            if not isinstance(name, str) or not name or name == self._proxy_project:
                continue
            hosts = e.get("hosts")
            if not isinstance(hosts, list):
                hosts = []
            seeded.append(
                Project(
                    name,
                    str(e.get("registry_type") or ""),
                    tuple(h for h in hosts if isinstance(h, str)),
                    proxy_project=self._proxy_project,
                )
            )
        for project in seeded:
            if project.registry_type and project.hosts:
                self._types.setdefault(project.name, project.registry_type)
                self._hosts.setdefault(project.name, project.hosts)
        self.projects = ProjectSet(seeded, self._priority)
        return bool(self.projects)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        retry = 1.0
        while True:
            ok = await self.refresh()
            if ok or self.projects:
                retry = 1.0
                await asyncio.sleep(self._interval)
            else:  # nothing known yet: the router is not ready, so try again soon
                await asyncio.sleep(min(retry, self._interval))
                retry = min(retry * 2, 30.0)

    async def refresh(self) -> bool:
        """One discovery pass; on failure the previous list stays. True when it succeeded."""
        self._credentials.refresh()
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout * 3):
                found = await self._discover()
        except (DiscoveryError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._metrics.discovered(False, time.perf_counter() - start)
            message = str(exc) or type(exc).__name__
            if message != self.last_error:
                log.warning(
                    "project discovery failed, keeping %d projects: %s",
                    len(self.projects),
                    message,
                    extra=event(
                        "discovery", result="error", projects=len(self.projects), error=message
                    ),
                )
            self.last_error = message
            return False
        finally:
            self.refreshed.set()
        self._metrics.discovered(True, time.perf_counter() - start)
        before = self.projects.names()
        self.projects = ProjectSet(found, self._priority)
        self.last_error = None
        if self._on_refresh is not None:
            self._on_refresh(self.projects)
        if self.projects.names() != before:
            log.info(
                "proxy-cache projects: %s",
                ", ".join(f"{p.name} ({p.registry_type or '?'})" for p in self.projects.ordered)
                or "none",
                extra=event("discovery", result="changed", projects=len(self.projects)),
            )
        return True

    def _headers(self) -> dict[str, str]:
        header = self._credentials.header
        return {"Authorization": header.decode("ascii")} if header else {}

    async def _get_json(self, url: str) -> tuple[Any, aiohttp.ClientResponse]:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with self._session.get(
            url, headers=self._headers(), timeout=timeout, allow_redirects=False
        ) as resp:
            if resp.status != 200:
                raise DiscoveryError(
                    f"GET {url.removeprefix(self._harbor_url)}: HTTP {resp.status}"
                )
            return await resp.json(content_type=None), resp

    async def _discover(self) -> list[Project]:
        names: list[str] = []
        url: str | None = f"{self._harbor_url}/api/v2.0/projects?page=1&page_size={PAGE_SIZE}"
        for _ in range(MAX_PAGES):
            if url is None:
                break
            page, resp = await self._get_json(url)
            if not isinstance(page, list):
                raise DiscoveryError("the projects API did not answer a JSON list")
            for item in page:
                if not isinstance(item, dict):
                    continue
                name = item.get("name")
                registry_id = item.get("registry_id") or 0
                if (
                    isinstance(name, str)
                    and isinstance(registry_id, int)
                    and registry_id > 0
                    and name != self._proxy_project
                ):
                    names.append(name)
            url = self._next_url(resp)
        await self._fill_types(names)
        return [
            Project(
                n, self._types.get(n, ""), self._hosts.get(n, ()), proxy_project=self._proxy_project
            )
            for n in names
        ]

    def _next_url(self, resp: aiohttp.ClientResponse) -> str | None:
        for link in resp.headers.getall("Link", []):
            match = _NEXT_RE.search(link)
            if match:
                return urljoin(self._harbor_url + "/", str(match.group(1)))
        return None

    async def _fill_types(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self._types]
        if not missing:
            return
        semaphore = asyncio.Semaphore(SUMMARY_CONCURRENCY)

        async def one(name: str) -> None:
            async with semaphore:
                try:
                    summary, _ = await self._get_json(
                        f"{self._harbor_url}/api/v2.0/projects/{name}/summary"
                    )
                except (DiscoveryError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    log.warning("no registry type for project %s: %s", name, exc)
                    return
                registry = summary.get("registry") if isinstance(summary, dict) else None
                if isinstance(registry, dict) and isinstance(registry.get("type"), str):
                    url = registry.get("url")
                    self._types[name] = registry["type"]
                    self._hosts[name] = registry_hosts(
                        registry["type"], url if isinstance(url, str) else ""
                    )

        await asyncio.gather(*(one(n) for n in missing))
