"""The real client: skopeo copies and inspects images through the router (DESIGN §2, §3, §5).

Every image is checked end to end: the manifest skopeo wrote has the digest the registry behind
the emulator reports, every blob file hashes to its name, and the emulator's log shows that the
first manifest request fanned out to all three proxy-cache projects while everything after it
went only to the project that holds the image.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SKOPEO_TIMEOUT, Seeded, SeedImage
from harbor_emulator import HarborEmulator
from oci_images import skopeo_env
from router_runner import RunningRouter
from support_tools import free_port, require_tool

pytestmark = pytest.mark.integration

PROXY_PROJECTS = ("dockerhub", "ghcr", "quay")


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def copy_image(
    skopeo: Callable[..., subprocess.CompletedProcess[str]],
    router: RunningRouter,
    reference: str,
    dest: Path,
    *auth: str,
) -> None:
    result = skopeo(
        "copy",
        "--retry-times=0",
        "--src-tls-verify=false",
        *(auth or ("--src-no-creds",)),
        f"docker://{router.address}/proxy/{reference}",
        f"dir:{dest}",
    )
    assert result.returncode == 0, f"skopeo copy {reference} failed:\n{result.stderr}"


def assert_copied(dest: Path, image: SeedImage) -> None:
    """The dir: copy holds exactly the seeded manifest and blobs, each intact."""
    manifest = dest / "manifest.json"
    assert sha256_file(manifest) == image.digest
    assert json.loads(manifest.read_bytes())["mediaType"] == image.media_type
    for digest in image.blobs:
        blob = dest / digest.removeprefix("sha256:")
        assert blob.is_file(), f"blob {digest} was not copied"
        assert blob.stat().st_size == image.blob_sizes[digest]
        assert sha256_file(blob) == digest
    blob_files = {p.name for p in dest.iterdir() if p.name not in ("manifest.json", "version")}
    assert blob_files == {d.removeprefix("sha256:") for d in image.blobs}


def manifest_requests(harbor: HarborEmulator, project: str) -> list[str]:
    return [r.path for r in harbor.requests(project) if "/manifests/" in r.path]


def assert_served_by(harbor: HarborEmulator, image: SeedImage, upstream_repo: str) -> None:
    """Only ``image.project`` served content; the others saw exactly one manifest GET (the
    fan-out of the first request) and nothing else."""
    served = harbor.requests(image.project)
    assert served, f"{image.project} was never asked"
    assert all(r.path.startswith(f"/v2/{image.project}/{upstream_repo}/") for r in served), [
        r.path for r in served
    ]
    for digest in image.blobs:
        assert harbor.count(image.project, f"/blobs/{digest}") >= 1
    for other in PROXY_PROJECTS:
        if other == image.project:
            continue
        paths = [r.path for r in harbor.requests(other)]
        assert len(paths) == 1, f"{other} was asked more than the first fan-out: {paths}"
        assert "/manifests/" in paths[0]
    assert harbor.count("proxy") == 0, "the excluded project 'proxy' must never be asked"


IMAGES = [
    pytest.param("dockerhub", "library/alpine", id="dockerhub-oci"),
    pytest.param("dockerhub", "library/nginx", id="dockerhub-docker-schema2"),
    pytest.param("ghcr", "acme/tool", id="ghcr"),
    pytest.param("quay", "coreos/etcd", id="quay"),
]


@pytest.mark.parametrize(("project", "repo"), IMAGES)
def test_copy_through_router(
    project: str,
    repo: str,
    router: RunningRouter,
    seeded: Seeded,
    harbor: HarborEmulator,
    skopeo: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    image = seeded.get(project, repo)
    assert router.app.mapping is not None
    assert router.app.mapping.get(repo) is None
    harbor.clear_log()

    copy_image(skopeo, router, f"{repo}:{image.tag}", tmp_path / "copy")

    assert_copied(tmp_path / "copy", image)
    assert_served_by(harbor, image, repo)
    assert router.app.mapping.get(repo) == project

    # Once mapped, manifests (by tag and by digest) go to that project only.
    harbor.clear_log()
    by_tag = skopeo(
        "inspect",
        "--retry-times=0",
        "--tls-verify=false",
        "--no-creds",
        "--format",
        "{{.Digest}} {{.RepoTags}}",
        f"docker://{router.address}/proxy/{repo}:{image.tag}",
    )
    assert by_tag.returncode == 0, by_tag.stderr
    digest, _, tags = by_tag.stdout.strip().partition(" ")
    assert digest == image.digest
    assert image.tag in tags.strip("[]").split()

    by_digest = skopeo(
        "inspect",
        "--retry-times=0",
        "--tls-verify=false",
        "--no-creds",
        "--raw",
        f"docker://{router.address}/proxy/{repo}@{image.digest}",
    )
    assert by_digest.returncode == 0, by_digest.stderr
    assert by_digest.stdout.encode() == image.manifest
    for other in PROXY_PROJECTS:
        if other != project:
            assert harbor.count(other) == 0, [r.path for r in harbor.requests(other)]
    assert harbor.count(project, f"/manifests/{image.digest}") >= 1


def test_list_tags_through_router(
    router: RunningRouter,
    seeded: Seeded,
    skopeo: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """skopeo list-tags: the fan-out maps the repository, then hits answer it (the last ones
    renamed by the relay on the fast path)."""
    image = seeded.get("quay", "coreos/etcd")
    handler = router.app.handler
    assert handler is not None
    before = handler.fast_starts
    for _ in range(4):
        result = skopeo(
            "list-tags",
            "--retry-times=0",
            "--tls-verify=false",
            "--no-creds",
            f"docker://{router.address}/proxy/{image.repo}",
        )
        assert result.returncode == 0, result.stderr
        listed = json.loads(result.stdout)
        assert listed["Repository"] == f"{router.address}/proxy/{image.repo}"
        assert listed["Tags"] == [image.tag]
    assert handler.fast_starts > before


def test_copy_one_segment_docker_hub_name(
    router: RunningRouter,
    seeded: Seeded,
    harbor: HarborEmulator,
    skopeo: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    """``proxy/alpine`` is Docker Hub's ``library/alpine``; other projects see ``alpine``."""
    image = seeded.get("dockerhub", "library/alpine")
    harbor.clear_log()

    copy_image(skopeo, router, f"alpine:{image.tag}", tmp_path / "copy")

    assert_copied(tmp_path / "copy", image)
    assert_served_by(harbor, image, "library/alpine")
    for other in ("ghcr", "quay"):
        assert manifest_requests(harbor, other) == [f"/v2/{other}/alpine/manifests/{image.tag}"]
    assert not any(r.path.startswith("/v2/dockerhub/alpine/") for r in harbor.requests())


def test_copy_with_header_auth_and_a_token(
    make_router: Callable[..., RunningRouter],
    seeded: Seeded,
    harbor: HarborEmulator,
    skopeo: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    """AUTH_MODE=header only requires an Authorization header; Harbor sees the robot's."""
    router = make_router(AUTH_MODE="header")
    image = seeded.get("ghcr", "acme/tool")
    harbor.clear_log()

    copy_image(
        skopeo,
        router,
        f"{image.repo}:{image.tag}",
        tmp_path / "copy",
        "--src-registry-token",
        "anything",
    )

    assert_copied(tmp_path / "copy", image)
    robot = harbor.basic_auth_header()
    content = [r for r in harbor.requests() if r.project is not None]
    assert content
    assert all(r.headers.get("authorization") == robot for r in content)


def test_anonymous_client_gets_harbors_challenge(
    make_router: Callable[..., RunningRouter],
    seeded: Seeded,
    harbor: HarborEmulator,
    skopeo: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    router = make_router(AUTH_MODE="header")
    image = seeded.get("quay", "coreos/etcd")
    path = f"/v2/proxy/{image.repo}/manifests/{image.tag}"
    harbor.clear_log()

    for target in ("/v2/", path):
        status, headers, body = router.request("GET", target, {"Host": router.address})
        assert status == 401, (target, body)
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
        challenge = headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ")
        assert f'realm="http://{router.address}/service/token"' in challenge

    status, headers, _ = router.request(
        "GET", path, {"Host": router.address, "X-Forwarded-Proto": "https"}
    )
    assert status == 401
    assert f'realm="https://{router.address}/service/token"' in headers["WWW-Authenticate"]
    assert all(r.project is None for r in harbor.requests()), "no content request without auth"

    # The real client without credentials cannot pull either (the router is not a token
    # service), and no content was fetched from Harbor on its behalf.
    result = skopeo(
        "copy",
        "--retry-times=0",
        "--src-tls-verify=false",
        "--src-no-creds",
        f"docker://{router.address}/proxy/{image.repo}:{image.tag}",
        f"dir:{tmp_path / 'copy'}",
    )
    assert result.returncode != 0
    assert not (tmp_path / "copy" / "manifest.json").exists()
    assert harbor.count(path_contains="/manifests/") == 0


# -- routing hints: host-prefixed names and registries.conf mirrors (issue 11) ----------------

HOSTED_IMAGES = [
    pytest.param("docker.io", "dockerhub", "library/alpine", "library/alpine", id="docker.io"),
    pytest.param("docker.io", "dockerhub", "nginx", "library/nginx", id="docker.io-one-segment"),
    pytest.param("ghcr.io", "ghcr", "acme/tool", "acme/tool", id="ghcr.io"),
    pytest.param("quay.io", "quay", "coreos/etcd", "coreos/etcd", id="quay.io"),
    pytest.param("quay.io", "quay", "shared/app", "shared/app", id="quay.io-also-in-ghcr"),
]


def assert_only(harbor: HarborEmulator, project: str, upstream_repo: str) -> None:
    """Every content request went to ``project`` under ``upstream_repo``: no fan-out at all."""
    served = harbor.requests(project)
    assert served, f"{project} was never asked"
    assert all(r.path.startswith(f"/v2/{project}/{upstream_repo}/") for r in served), [
        r.path for r in served
    ]
    for other in (*PROXY_PROJECTS, "proxy"):
        if other != project:
            assert harbor.count(other) == 0, [r.path for r in harbor.requests(other)]


@pytest.mark.parametrize(("host", "project", "name", "repo"), HOSTED_IMAGES)
def test_copy_host_prefixed_name(
    host: str,
    project: str,
    name: str,
    repo: str,
    router: RunningRouter,
    seeded: Seeded,
    harbor: HarborEmulator,
    skopeo: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    """``proxy/ghcr.io/acme/tool`` is pulled from the project mirroring ghcr.io, and only
    from it; ``docker.io/nginx`` is Docker Hub's ``library/nginx``."""
    image = seeded.get(project, repo)
    harbor.clear_log()

    copy_image(skopeo, router, f"{host}/{name}:{image.tag}", tmp_path / "copy")

    assert_copied(tmp_path / "copy", image)
    assert_only(harbor, project, repo)
    for digest in image.blobs:
        assert harbor.count(project, f"/blobs/{digest}") >= 1


def unused_loopback_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connection refused), for a primary location
    that must never serve: the image can only have come from the mirror."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_registries_conf_mirror_pulls_every_upstream(
    router: RunningRouter,
    seeded: Seeded,
    harbor: HarborEmulator,
    tmp_path: Path,
) -> None:
    """A registries.conf as docs/deployment.md gives it (one mirror per upstream, all on the
    router), with the primary locations unreachable: skopeo pulls ``docker.io/...``,
    ``ghcr.io/...`` and ``quay.io/...`` by their usual names and gets the registry's bytes."""
    binary = require_tool("skopeo")
    dead = unused_loopback_port()
    workdir = tmp_path / "skopeo"
    workdir.mkdir()
    conf = workdir / "registries.conf"
    blocks = ["unqualified-search-registries = []\n"]
    for host in ("docker.io", "ghcr.io", "quay.io"):
        blocks.append(
            f"""
[[registry]]
prefix = "{host}"
location = "127.0.0.1:{dead}"
insecure = true

[[registry.mirror]]
location = "{router.address}/proxy/{host}"
insecure = true
"""
        )
    conf.write_text("".join(blocks))
    env = skopeo_env(workdir)
    assert env["CONTAINERS_REGISTRIES_CONF"] == str(conf)
    pulls = [
        ("docker.io/library/alpine", seeded.get("dockerhub", "library/alpine"), "dockerhub"),
        ("docker.io/library/nginx", seeded.get("dockerhub", "library/nginx"), "dockerhub"),
        ("ghcr.io/acme/tool", seeded.get("ghcr", "acme/tool"), "ghcr"),
        ("quay.io/shared/app", seeded.get("quay", "shared/app"), "quay"),
    ]
    for reference, image, project in pulls:
        harbor.clear_log()
        dest = tmp_path / reference.replace("/", "_")
        result = subprocess.run(
            [binary, "--insecure-policy", "--registries-conf", str(conf), "copy",
             "--retry-times=0", "--src-no-creds", f"docker://{reference}:{image.tag}",
             f"dir:{dest}"],
            env=env, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=SKOPEO_TIMEOUT, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"skopeo copy {reference} failed:\n{result.stderr}"
        assert_copied(dest, image)
        assert_only(harbor, project, image.repo)
