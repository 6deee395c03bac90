"""Build small container images offline, deterministically, and push them with skopeo.

OCI images are written into an OCI image layout directory (``oci-layout``, ``index.json``,
``blobs/sha256/...``); each tag is one entry of ``index.json`` annotated with
``org.opencontainers.image.ref.name``. skopeo 1.9.3's ``oci:`` transport only finds OCI manifests
in ``index.json``, so a Docker schema2 image is written in skopeo's ``dir:`` format instead
(``version``, ``manifest.json``, blobs named by hex digest; one image per directory), which it
copies unchanged with ``--preserve-digests``. Everything is byte-for-byte reproducible: fixed
mtimes and owners in the tar, gzip mtime 0, sorted JSON keys, so digests are stable between runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

REF_NAME = "org.opencontainers.image.ref.name"
FIXED_MTIME = 1_700_000_000  # 2023-11-14: any constant will do
SKOPEO_TIMEOUT = 60.0


@dataclass(frozen=True)
class BuiltImage:
    """What :func:`build_image` wrote; digests are ``sha256:<hex>``."""

    layout: Path
    repo: str
    tag: str
    media_type: str
    manifest: bytes
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    blob_sizes: dict[str, int]

    @property
    def blob_digests(self) -> tuple[str, ...]:
        """Config first, then layers: every blob the manifest references."""
        return (self.config_digest, *self.layer_digests)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


DIR_VERSION = b"Directory Transport Version: 1.1\n"


def _is_dir_transport(layout: Path) -> bool:
    return (layout / "version").is_file() and (layout / "manifest.json").is_file()


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    hexdigest = digest.removeprefix("sha256:")
    path = layout / hexdigest if _is_dir_transport(layout) else layout / "blobs/sha256" / hexdigest
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest


def init_layout(layout: Path) -> None:
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    marker = layout / "oci-layout"
    if not marker.exists():
        marker.write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    index = layout / "index.json"
    if not index.exists():
        index.write_bytes(canonical_json({"schemaVersion": 2, "manifests": []}))


def _add_to_index(layout: Path, descriptor: dict[str, Any]) -> None:
    index_path = layout / "index.json"
    index = json.loads(index_path.read_bytes())
    tag = descriptor["annotations"][REF_NAME]
    index["manifests"] = [
        m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag
    ] + [descriptor]
    index["mediaType"] = OCI_INDEX
    index_path.write_bytes(canonical_json(index))


def build_image(
    layout: Path,
    repo: str,
    tag: str,
    *,
    docker_schema2: bool = False,
    random_bytes: int = 0,
) -> BuiltImage:
    """Build a one-layer linux/amd64 image into ``layout`` under ``tag``.

    OCI images share a layout (one index entry per tag); a Docker schema2 image needs a directory
    of its own (``dir:`` format, the tag then only names it for :func:`push`).

    The layer holds a text file naming ``repo:tag`` (so content and digests differ per image) and,
    if ``random_bytes`` > 0, that many seeded pseudo-random (incompressible) bytes, which makes the
    blob big enough to be streamed in many chunks.
    """
    if docker_schema2:
        layout.mkdir(parents=True, exist_ok=True)
        if any(layout.iterdir()) and not _is_dir_transport(layout):
            raise ValueError(f"{layout} is not empty: a schema2 image needs its own directory")
        (layout / "version").write_bytes(DIR_VERSION)
        (layout / "manifest.json").write_bytes(b"{}")
    else:
        init_layout(layout)
    files = {"etc/image-id": f"{repo}:{tag}\n".encode()}
    if random_bytes:
        files["opt/random.bin"] = random.Random(f"{repo}:{tag}").randbytes(random_bytes)
    raw = _tar(files)
    layer = gzip.compress(raw, compresslevel=6, mtime=0)
    layer_digest = _write_blob(layout, layer)

    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"test.image": f"{repo}:{tag}"}},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(raw)]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "oci_images.py"}],
        }
    )
    config_digest = _write_blob(layout, config)

    media_type, config_type, layer_type = (
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        if docker_schema2
        else (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
    )
    manifest_obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": len(layer)}],
    }
    manifest = json.dumps(manifest_obj, indent=3).encode()
    if docker_schema2:
        (layout / "manifest.json").write_bytes(manifest)
        manifest_digest = sha256_digest(manifest)
    else:
        manifest_digest = _write_blob(layout, manifest)
        _add_to_index(
            layout,
            {
                "mediaType": media_type,
                "digest": manifest_digest,
                "size": len(manifest),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {REF_NAME: tag},
            },
        )
    return BuiltImage(
        layout=layout,
        repo=repo,
        tag=tag,
        media_type=media_type,
        manifest=manifest,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digests=(layer_digest,),
        blob_sizes={config_digest: len(config), layer_digest: len(layer)},
    )


def _manifest_digest_in_layout(layout: Path, tag: str) -> str:
    if _is_dir_transport(layout):
        return sha256_digest((layout / "manifest.json").read_bytes())
    index = json.loads((layout / "index.json").read_bytes())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get(REF_NAME) == tag:
            blob = layout / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")
            digest = sha256_digest(blob.read_bytes())
            if digest != desc["digest"]:
                raise RuntimeError(f"layout {layout} is corrupt: {desc['digest']} != {digest}")
            return digest
    raise KeyError(f"tag {tag!r} not in {layout}/index.json")


def skopeo_env(workdir: Path) -> dict[str, str]:
    """A clean environment for skopeo: private HOME, TMPDIR, and an empty registries.conf."""
    home = workdir / "home"
    tmp = workdir / "tmp"
    for d in (home, tmp, workdir / "run"):
        d.mkdir(parents=True, exist_ok=True)
    registries_conf = workdir / "registries.conf"
    if not registries_conf.exists():
        registries_conf.write_text("unqualified-search-registries = []\n")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "XDG_RUNTIME_DIR": str(workdir / "run"),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
    }


def push(
    layout: Path,
    tag: str,
    registry_url: str,
    repo: str,
    *,
    workdir: Path | None = None,
    skopeo: str = "skopeo",
) -> str:
    """Copy ``oci:layout:tag`` (or ``dir:layout``) to ``registry_url/repo:tag``.

    Returns the pushed manifest digest.
    ``registry_url`` is ``http://127.0.0.1:PORT``. ``--preserve-digests`` makes skopeo fail rather
    than rewrite the manifest, and the digest skopeo reports is checked against the layout's.
    """
    layout = Path(layout)
    workdir = Path(workdir) if workdir is not None else layout.parent / "skopeo"
    workdir.mkdir(parents=True, exist_ok=True)
    host = registry_url.removeprefix("http://").removeprefix("https://").rstrip("/")
    digestfile = workdir / f"digest-{repo.replace('/', '_')}-{tag}"
    digestfile.unlink(missing_ok=True)
    cmd = [
        skopeo,
        "--insecure-policy",
        "copy",
        "--retry-times=0",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        f"--digestfile={digestfile}",
        f"dir:{layout}" if _is_dir_transport(layout) else f"oci:{layout}:{tag}",
        f"docker://{host}/{repo}:{tag}",
    ]
    result = subprocess.run(
        cmd,
        env=skopeo_env(workdir),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=SKOPEO_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"skopeo copy failed ({result.returncode}): {' '.join(cmd)}\n"
            f"{result.stderr.decode(errors='replace')}"
        )
    pushed = digestfile.read_text().strip()
    expected = _manifest_digest_in_layout(layout, tag)
    if pushed != expected:
        raise RuntimeError(f"skopeo pushed {repo}:{tag} as {pushed}, built {expected}")
    return pushed
