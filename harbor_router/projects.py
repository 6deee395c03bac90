"""Proxy-cache projects as discovered from Harbor, in the order the resolver asks them.

Each project also knows the upstream registry hosts it mirrors (``docker.io`` for a Docker Hub
project, ``ghcr.io`` for GitHub's, ...), learnt from the registry URL in Harbor's project
summary. Those hosts are what the routing hints (containerd's ``ns`` parameter, host-prefixed
names such as ``ghcr.io/acme/tool``) are matched against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from .headers import HintRewriter, Rewriter

DOCKER_HUB = "docker-hub"
#: The names Docker Hub is known by; the first is the one clients write (``docker.io/nginx``).
DOCKER_HUB_HOSTS: Final = ("docker.io", "registry-1.docker.io", "index.docker.io", "hub.docker.com")
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}


def registry_hosts(registry_type: str, url: str) -> tuple[str, ...]:
    """The upstream hosts (``host[:port]``, lowercase) a project of this registry type and URL
    mirrors; Docker Hub's ``https://hub.docker.com`` is ``docker.io`` and its aliases."""
    host = ""
    if url:
        try:
            parts = urlsplit(url if "://" in url else "https://" + url)
            hostname = (parts.hostname or "").lower()
            port = parts.port
        except ValueError:
            hostname, port = "", None
        if hostname:
            default = _DEFAULT_PORTS.get(parts.scheme.lower())
            host = hostname if port is None or port == default else f"{hostname}:{port}"
    if registry_type == DOCKER_HUB or host in DOCKER_HUB_HOSTS:
        return DOCKER_HUB_HOSTS
    return (host,) if host else ()


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    registry_type: str = ""
    hosts: tuple[str, ...] = ()
    rewriter: Rewriter = field(init=False, repr=False, compare=False)
    proxy_project: str = field(default="proxy", repr=False, compare=False)
    _hinted: dict[tuple[str, str], Rewriter] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "rewriter", Rewriter(self.name, self.proxy_project))

    def upstream_name(self, name: str) -> str:
        """Harbor's name for a repository: Docker Hub's one-segment names live in ``library/``."""
        if self.registry_type == DOCKER_HUB and "/" not in name:
            return "library/" + name
        return name

    def rewriter_for(self, prefix_host: str, namespace: str) -> Rewriter:
        """The response rewriter of a hinted request: ``Location``/``Link`` back under the
        host prefix the client used, and ``OCI-Namespace`` when its ``ns`` chose this project.
        Only hosts this project mirrors get here, so the cache stays small."""
        key = (prefix_host, namespace)
        rewriter = self._hinted.get(key)
        if rewriter is None:
            replacement = self.proxy_project
            if prefix_host:
                replacement += "/" + prefix_host
            extra = ((b"OCI-Namespace", namespace.encode("ascii")),) if namespace else ()
            rewriter = self._hinted[key] = HintRewriter(self.name, replacement, extra)
        return rewriter


class ProjectSet:
    """An immutable, ordered set of projects: ``PROJECT_PRIORITY`` first, then Harbor's order.
    ``by_name`` is :meth:`get`'s table (read by the hit path without a Python call)."""

    __slots__ = ("_by_host", "by_name", "ordered")

    def __init__(self, projects: Iterable[Project] = (), priority: Sequence[str] = ()) -> None:
        found = {p.name: p for p in projects}
        rank = {name: i for i, name in enumerate(priority)}
        order = sorted(found.values(), key=lambda p: rank.get(p.name, len(rank)))
        self.ordered: tuple[Project, ...] = tuple(order)
        self.by_name: Mapping[str, Project] = found
        by_host: dict[str, tuple[Project, ...]] = {}
        for project in self.ordered:
            for host in project.hosts:
                by_host[host] = (*by_host.get(host, ()), project)
        self._by_host = by_host

    def get(self, name: str) -> Project | None:
        return self.by_name.get(name)

    def for_host(self, host: str) -> tuple[Project, ...]:
        """The projects that mirror ``host`` (lowercase ``host[:port]``), in priority order."""
        return self._by_host.get(host, ())

    def hosts(self) -> list[str]:
        """Every mirrored host, sorted (for messages)."""
        return sorted(self._by_host)

    def names(self) -> list[str]:
        return [p.name for p in self.ordered]

    def __len__(self) -> int:
        return len(self.ordered)

    def __bool__(self) -> bool:
        return bool(self.ordered)
