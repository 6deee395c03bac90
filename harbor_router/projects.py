"""Proxy-cache projects as discovered from Harbor, in the order the resolver asks them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .headers import Rewriter

DOCKER_HUB = "docker-hub"


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    registry_type: str = ""
    rewriter: Rewriter = field(init=False, repr=False, compare=False)
    proxy_project: str = field(default="proxy", repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rewriter", Rewriter(self.name, self.proxy_project))

    def upstream_name(self, name: str) -> str:
        """Harbor's name for a repository: Docker Hub's one-segment names live in ``library/``."""
        if self.registry_type == DOCKER_HUB and "/" not in name:
            return "library/" + name
        return name


class ProjectSet:
    """An immutable, ordered set of projects: ``PROJECT_PRIORITY`` first, then Harbor's order."""

    __slots__ = ("_by_name", "ordered")

    def __init__(self, projects: Iterable[Project] = (), priority: Sequence[str] = ()) -> None:
        found = {p.name: p for p in projects}
        rank = {name: i for i, name in enumerate(priority)}
        order = sorted(found.values(), key=lambda p: rank.get(p.name, len(rank)))
        self.ordered: tuple[Project, ...] = tuple(order)
        self._by_name = found

    def get(self, name: str) -> Project | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return [p.name for p in self.ordered]

    def __len__(self) -> int:
        return len(self.ordered)

    def __bool__(self) -> bool:
        return bool(self.ordered)
