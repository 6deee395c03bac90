"""Session fixtures: a real distribution registry, seeded images, and the Harbor emulator."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from distribution import DistributionRegistry
from harbor_emulator import HarborEmulator, default_projects
from oci_images import build_image, push, skopeo_env
from redis_topology import RedisTopology
from router_runner import RunningRouter, router_config
from support_tools import free_port, require_tool

SKOPEO_TIMEOUT = 60.0
RANDOM_LAYER_BYTES = 200 * 1024
BIG_LAYER_BYTES = 4 * 1024 * 1024

# (project, repository as the client asks for it, tag, Docker schema2?, random bytes in layer)
SEED_TABLE: tuple[tuple[str, str, str, bool, int], ...] = (
    ("dockerhub", "library/alpine", "3.19", False, 0),
    ("dockerhub", "library/nginx", "1.25", True, RANDOM_LAYER_BYTES),
    ("ghcr", "acme/tool", "v1", False, 0),
    ("quay", "coreos/etcd", "v3.5", False, 0),
    ("ghcr", "shared/app", "1", False, 0),
    ("quay", "shared/app", "1", False, 0),
    # tests/test_resolution.py: one name as Docker schema2 in ghcr and as OCI in quay (the
    # Accept-aware winner), and one repository with several tags (tags/list pagination).
    ("ghcr", "multi/img", "1", True, 0),
    ("quay", "multi/img", "1", False, 0),
    ("ghcr", "acme/multi", "a", False, 0),
    ("ghcr", "acme/multi", "b", False, 0),
    ("ghcr", "acme/multi", "c", False, 0),
    # tests/test_splice.py: a layer far larger than one socket read, so the relay must splice.
    ("dockerhub", "library/big", "1", False, BIG_LAYER_BYTES),
)


@dataclass(frozen=True)
class SeedImage:
    project: str
    repo: str  # as the client asks for it, e.g. "library/alpine"
    tag: str
    digest: str  # manifest digest, sha256:...
    media_type: str  # manifest media type
    manifest: bytes
    config: str  # config blob digest
    layers: tuple[str, ...]
    blob_sizes: dict[str, int]

    @property
    def blobs(self) -> tuple[str, ...]:
        """Every blob digest of the image: config first, then layers."""
        return (self.config, *self.layers)

    @property
    def stored_repo(self) -> str:
        """The repository in the registry behind Harbor: ``{project}/{repo}``."""
        return f"{self.project}/{self.repo}"


@dataclass(frozen=True)
class Seeded:
    images: tuple[SeedImage, ...]

    def get(self, project: str, repo: str) -> SeedImage:
        for image in self.images:
            if image.project == project and image.repo == repo:
                return image
        raise KeyError(f"{project}/{repo} is not seeded")

    def by_repo(self, repo: str) -> list[SeedImage]:
        return [image for image in self.images if image.repo == repo]


@pytest.fixture(scope="session")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    binary = require_tool("docker-registry")
    with DistributionRegistry(tmp_path_factory.mktemp("distribution"), binary) as registry:
        yield registry


@pytest.fixture(scope="session")
def seeded(distribution: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    skopeo = require_tool("skopeo")
    root = tmp_path_factory.mktemp("images")
    images = []
    for project, repo, tag, docker_schema2, random_bytes in SEED_TABLE:
        stored = f"{project}/{repo}"
        layout = root / stored.replace("/", "_") / tag
        built = build_image(
            layout, stored, tag, docker_schema2=docker_schema2, random_bytes=random_bytes
        )
        digest = push(layout, tag, distribution.url, stored, workdir=root / "skopeo", skopeo=skopeo)
        images.append(
            SeedImage(
                project=project,
                repo=repo,
                tag=tag,
                digest=digest,
                media_type=built.media_type,
                manifest=built.manifest,
                config=built.config_digest,
                layers=built.layer_digests,
                blob_sizes=built.blob_sizes,
            )
        )
    return Seeded(tuple(images))


@pytest.fixture(scope="session")
def harbor_server(distribution: DistributionRegistry, seeded: Seeded) -> Iterator[HarborEmulator]:
    with HarborEmulator(distribution.url, default_projects()) as emulator:
        yield emulator


@pytest.fixture
def harbor(harbor_server: HarborEmulator) -> Iterator[HarborEmulator]:
    """The session emulator, reset for this test: listening, no faults, the robot's first
    password, empty log, no blob cached, no account but the router's robot, every project
    private."""
    harbor_server.start_listening()
    harbor_server.clear_faults()
    harbor_server.reset_password()
    harbor_server.reset_accounts()
    harbor_server.clear_log()
    harbor_server.forget_cached_blobs()
    yield harbor_server
    harbor_server.clear_faults()
    harbor_server.reset_password()
    harbor_server.reset_accounts()
    harbor_server.start_listening()


@pytest.fixture
def make_router(harbor: HarborEmulator) -> Iterator[Callable[..., RunningRouter]]:
    """Start routers in-process against the emulator; ``env`` overrides configuration."""
    started: list[RunningRouter] = []

    def factory(*, wait_ready: bool = True, **env: str) -> RunningRouter:
        config = router_config(harbor.url, harbor.username, harbor.password, free_port(), **env)
        router = RunningRouter(config)
        started.append(router)
        return router.start(wait_ready=wait_ready)

    yield factory
    for router in started:
        router.close()


@pytest.fixture
def router(make_router: Callable[..., RunningRouter]) -> RunningRouter:
    return make_router()


@pytest.fixture
def skopeo(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run skopeo in a private environment; return the finished process (never raises)."""
    binary = require_tool("skopeo")
    workdir = tmp_path / "skopeo"
    workdir.mkdir()
    env = skopeo_env(workdir)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "--insecure-policy", *args],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SKOPEO_TIMEOUT,
            check=False,
        )

    return run


# --- Redis Sentinel topologies (tests/redis_topology.py) ----------------------------------------

REDIS_TEST_PASSWORD = "hr-test-redis-secret-9f3b"


def _redis_topology(workdir: Path, **options: Any) -> RedisTopology:
    return RedisTopology(
        workdir,
        server_binary=require_tool("redis-server"),
        sentinel_binary=require_tool("redis-sentinel"),
        **options,
    )


def _resume_all(topology: RedisTopology) -> None:
    for process in topology.processes:
        if process.stopped:
            process.resume()


@pytest.fixture(scope="session")
def redis_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTopology]:
    """One master, one replica, three sentinels for the session. The sentinels wait 10 s before
    they fail over, so a test may SIGSTOP the master for a few seconds without changing it."""
    with _redis_topology(tmp_path_factory.mktemp("redis"), down_after_ms=10_000) as topology:
        yield topology


@pytest.fixture
def redis_sentinel(redis_topology: RedisTopology) -> Iterator[RedisTopology]:
    """The session topology for this test: every process running, the data flushed."""
    _resume_all(redis_topology)
    redis_topology.flushall()
    yield redis_topology
    _resume_all(redis_topology)


@pytest.fixture(scope="session")
def redis_auth_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTopology]:
    """Master and replica with ``requirepass``; sentinels open."""
    with _redis_topology(
        tmp_path_factory.mktemp("redis-auth"), password=REDIS_TEST_PASSWORD, down_after_ms=10_000
    ) as topology:
        yield topology


@pytest.fixture(scope="session")
def redis_sentinel_auth_topology(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisTopology]:
    """Master, replica and sentinels all with ``requirepass`` (the same password)."""
    with _redis_topology(
        tmp_path_factory.mktemp("redis-sentinel-auth"),
        password=REDIS_TEST_PASSWORD,
        sentinel_password=REDIS_TEST_PASSWORD,
        down_after_ms=10_000,
    ) as topology:
        yield topology


@pytest.fixture
def make_redis_topology(tmp_path: Path) -> Iterator[Callable[..., RedisTopology]]:
    """Start a private topology (1 s failover detection by default); killed at teardown."""
    started: list[RedisTopology] = []

    def factory(**options: Any) -> RedisTopology:
        topology = _redis_topology(tmp_path / f"redis{len(started)}", **options)
        started.append(topology)
        return topology.start()

    yield factory
    for topology in started:
        topology.stop()
