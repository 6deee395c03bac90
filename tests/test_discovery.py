"""Discovery of proxy-cache projects against the Harbor emulator (DESIGN §3)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from harbor_emulator import HarborEmulator

from harbor_router.auth import Credentials
from harbor_router.discovery import Discovery

pytestmark = pytest.mark.integration


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make(
    session: aiohttp.ClientSession,
    harbor: HarborEmulator,
    credentials: Credentials | None = None,
    **kwargs: object,
) -> Discovery:
    credentials = credentials or Credentials(harbor.username, harbor.password)
    options: dict[str, object] = {"proxy_project": "proxy", "interval": 60, "timeout": 2}
    options.update(kwargs)
    return Discovery(session, harbor.url, credentials, **options)  # type: ignore[arg-type]


async def test_finds_proxy_projects_on_every_page(session, harbor) -> None:  # type: ignore[no-untyped-def]
    discovery = make(session, harbor)
    assert await discovery.refresh()
    projects = discovery.projects
    assert [(p.name, p.registry_type) for p in projects.ordered] == [
        ("dockerhub", "docker-hub"),
        ("ghcr", "github-ghcr"),
        ("quay", "quay"),
    ]
    assert projects.get("proxy") is None  # the router's own prefix is never a candidate
    assert projects.get("library") is None and projects.get("team-000") is None
    listing = [r for r in harbor.requests() if r.path.startswith("/api/v2.0/projects?")]
    assert len(listing) == 2  # more than 100 projects: two pages of 100
    assert all("page_size=100" in r.path for r in listing)


async def test_registry_types_are_fetched_once(session, harbor) -> None:  # type: ignore[no-untyped-def]
    discovery = make(session, harbor)
    assert await discovery.refresh()
    assert await discovery.refresh()
    summaries = [r for r in harbor.requests() if r.path.endswith("/summary")]
    assert sorted(r.path for r in summaries) == [
        "/api/v2.0/projects/dockerhub/summary",
        "/api/v2.0/projects/ghcr/summary",
        "/api/v2.0/projects/quay/summary",
    ]


async def test_priority_comes_first(session, harbor) -> None:  # type: ignore[no-untyped-def]
    discovery = make(session, harbor, priority=("quay", "ghcr"))
    assert await discovery.refresh()
    assert discovery.projects.names() == ["quay", "ghcr", "dockerhub"]


async def test_failed_refresh_keeps_previous_list(session, harbor) -> None:  # type: ignore[no-untyped-def]
    discovery = make(session, harbor)
    assert await discovery.refresh()
    harbor.set_api_fault(status=500)
    assert not await discovery.refresh()
    assert discovery.projects.names() == ["dockerhub", "ghcr", "quay"]
    assert discovery.last_error is not None and "500" in discovery.last_error
    harbor.clear_faults()
    assert await discovery.refresh()
    assert discovery.last_error is None


async def test_unreachable_harbor_leaves_no_projects(session, harbor) -> None:  # type: ignore[no-untyped-def]
    harbor.stop_listening()
    discovery = make(session, harbor)
    assert not await discovery.refresh()
    assert len(discovery.projects) == 0


async def test_wrong_password_is_reported_not_leaked(session, harbor) -> None:  # type: ignore[no-untyped-def]
    secret = "Wrong-Secret-4711"
    discovery = make(session, harbor, Credentials(harbor.username, secret))
    assert not await discovery.refresh()
    assert discovery.last_error is not None and "401" in discovery.last_error
    assert secret not in discovery.last_error


async def test_credentials_files_are_reread(session, harbor, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    user_file, pass_file = tmp_path / "user", tmp_path / "pass"
    user_file.write_text(harbor.username + "\n")
    pass_file.write_text("stale-password\n")
    credentials = Credentials("", "", str(user_file), str(pass_file))
    credentials.refresh()
    discovery = make(session, harbor, credentials)
    assert not await discovery.refresh()
    pass_file.write_text(harbor.password + "\n")
    os.utime(pass_file, (1, 1))  # a new mtime, as a rotated Secret gets
    assert await discovery.refresh()
    assert discovery.projects.names() == ["dockerhub", "ghcr", "quay"]


async def test_first_discovery_retries_soon_after_a_failure(session, harbor) -> None:  # type: ignore[no-untyped-def]
    harbor.set_api_fault(status=503, times=1)
    discovery = make(session, harbor, interval=3600)
    discovery.start()
    try:
        for _ in range(100):  # bounded poll: 5 s at most
            if discovery.projects:
                break
            await asyncio.sleep(0.05)
        assert discovery.projects.names() == ["dockerhub", "ghcr", "quay"]
    finally:
        await discovery.close()
