"""The processes under load: the static Harbor (nginx) and the three proxies in front of it.

Every server here is started in its own session (``start_new_session``), so a stuck one can be
killed as a process group without touching anything else, and every one is stopped by
:meth:`Server.close` (the harness calls it in ``finally``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .system import Pinning, children, free_port, stop, wait_port

ROOT = Path(__file__).resolve().parent.parent.parent
PREFIX = "proxy"  # the router's PROXY_PROJECT
HOT_PROJECT = "p00"  # holds the hot image, tags and the blob; first in Harbor's order
COLD_PROJECT = "p49"  # holds every cold-miss name; last in Harbor's order
PROJECTS = 50
REPO, TAG = "alpine", "3.19"
BLOB_REPO = "big"
BLOB_DIGEST = "sha256:" + "e" * 64
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "c" * 64,
            "size": 300,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + "d" * 64,
                "size": 3000000,
            }
        ],
    },
    indent=3,
)
# as Harbor writes it (Go's encoding/json: compact, one trailing newline)
TAGS = (
    json.dumps(
        {"name": f"{HOT_PROJECT}/{REPO}", "tags": [f"3.{i}" for i in range(40)]},
        separators=(",", ":"),
    )
    + "\n"
)


def _jwt_part(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# Harbor's token service for AUTH_MODE=harbor runs: whoever asks may pull the hot repository.
TOKEN = json.dumps(
    {
        "token": ".".join(
            (
                _jwt_part({"typ": "JWT", "alg": "RS256"}),
                _jwt_part(
                    {
                        "sub": "bench",
                        "aud": "harbor-registry",
                        "access": [
                            {
                                "type": "repository",
                                "name": f"{HOT_PROJECT}/{REPO}",
                                "actions": ["pull"],
                            }
                        ],
                    }
                ),
                "c2lnbmF0dXJl",
            )
        )
    }
)

_HTTP_COMMON = """
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {tmp};
  proxy_temp_path {tmp};
  fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp};
  scgi_temp_path {tmp};
"""

UPSTREAM_CONF = (
    """
worker_processes 1;
daemon off;
error_log {root}/upstream-error.log;
pid {root}/upstream.pid;
events {{ worker_connections 8192; }}
http {{"""
    + _HTTP_COMMON
    + """
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {root}/www;
    location = /api/v2.0/projects {{
      default_type application/json;
      try_files /projects.json =404;
    }}
    location /api/ {{ default_type application/json; }}
    location = /service/token {{
      default_type application/json;
      try_files /token.json =404;
    }}
    location /v2/ {{ default_type """
    + MANIFEST_TYPE
    + """; }}
    location ~ ^/v2/[^/]+/.+/tags/list$ {{ default_type application/json; }}
    location ~ ^/v2/[^/]+/.+/blobs/ {{ default_type application/octet-stream; }}
    location ~ ^/v2/"""
    + COLD_PROJECT
    + """/cold-[a-z0-9-]+/manifests/latest$ {{
      default_type """
    + MANIFEST_TYPE
    + """;
      try_files /cold-manifest.json =404;
    }}
  }}
}}
"""
)

# (b): nginx doing the router's prefix rewrite with a keep-alive upstream pool.
PROXY_CONF = (
    """
worker_processes 1;
daemon off;
error_log {root}/proxy-error.log;
pid {root}/proxy.pid;
events {{ worker_connections 8192; }}
http {{"""
    + _HTTP_COMMON
    + """
  upstream harbor {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location /v2/"""
    + PREFIX
    + """/ {{
      proxy_pass http://harbor/v2/"""
    + HOT_PROJECT
    + """/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"""
)


class Server:
    """One started process (and its children); ``cpu_pids`` are the ones whose CPU counts."""

    name = "server"

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self._pids: list[int] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_pids(self) -> list[int]:
        """The process and its descendants, looked up once (after warm-up: stable)."""
        if self._pids is None:
            self._pids = [self.proc.pid, *children(self.proc.pid)]
        return self._pids

    def refresh_pids(self) -> None:
        self._pids = None

    def close(self) -> None:
        stop(self.proc)


def _popen(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL)


def write_upstream_tree(root: Path, blob_size: int, extra_repos: Sequence[str] = ()) -> None:
    """The static Harbor: 50 proxy-cache projects, manifests, tags/list and a sparse blob.
    ``extra_repos``: more repositories in the hot project, each with the manifest at ``TAG``."""
    root.chmod(0o755)  # nginx workers run as an unprivileged user and must read it all
    (root / "tmp").mkdir()
    www = root / "www"
    projects = [
        {"project_id": i + 1, "name": f"p{i:02d}", "registry_id": i + 1} for i in range(PROJECTS)
    ]
    www.mkdir()
    (www / "projects.json").write_text(json.dumps(projects))
    (www / "token.json").write_text(TOKEN)
    for project in projects:
        summary = www / "api/v2.0/projects" / str(project["name"])
        summary.mkdir(parents=True)
        (summary / "summary").write_text('{"registry": {"type": "docker-registry"}}')
    for name in (REPO, *extra_repos):
        manifests = www / "v2" / HOT_PROJECT / name / "manifests"
        manifests.mkdir(parents=True)
        (manifests / TAG).write_text(MANIFEST)
    repo = www / "v2" / HOT_PROJECT / REPO
    (repo / "tags").mkdir()
    (repo / "tags" / "list").write_text(TAGS)
    (www / "cold-manifest.json").write_text(MANIFEST)
    blobs = www / "v2" / HOT_PROJECT / BLOB_REPO / "blobs"
    blobs.mkdir(parents=True)
    with open(blobs / BLOB_DIGEST, "wb") as blob:
        blob.truncate(blob_size)  # sparse: reads as zeros, costs no memory
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (root / "tmp").chmod(0o1777)  # nginx's temp files, written by its workers


class Nginx(Server):
    def __init__(
        self, root: Path, name: str, conf: str, pinning: Pinning, role: str, batch: bool = False
    ) -> None:
        """``batch``: started under ``chrt --batch 0`` (SCHED_BATCH, inherited by its workers),
        the policy the router's ``SCHED_POLICY=batch`` sets."""
        self.name = name
        port = free_port()
        path = root / f"{name}.conf"
        path.write_text(conf.format(root=root, tmp=root / "tmp", port=port, **self._extra()))
        cmd = ["nginx", "-p", str(root), "-e", str(root / f"{name}-error.log"), "-c", str(path)]
        if batch:
            cmd = ["chrt", "--batch", "0", *cmd]
        proc = _popen(pinning.wrap(cmd, role=role))
        super().__init__(proc, port)
        wait_port(port, proc)

    def _extra(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        stop(self.proc, signal.SIGQUIT)


class Upstream(Nginx):
    def __init__(self, root: Path, pinning: Pinning, cold_project: str = COLD_PROJECT) -> None:
        """``cold_project``: the project that holds every cold-miss name (``p49`` by default,
        the last one asked; ``p00`` is the first)."""
        conf = UPSTREAM_CONF.replace(f"/v2/{COLD_PROJECT}/cold-", f"/v2/{cold_project}/cold-")
        super().__init__(root, "upstream", conf, pinning, "load")


class NginxProxy(Nginx):
    def __init__(
        self,
        root: Path,
        upstream: Upstream,
        pinning: Pinning,
        workers: int = 1,
        batch: bool = False,
    ) -> None:
        """``workers`` > 1: that many worker processes, each with its own listening socket
        (``reuseport``), the way the router's workers share a port. ``batch``: SCHED_BATCH."""
        self._upstream_port = upstream.port
        name = ("nginx" if workers == 1 else f"nginx-w{workers}") + ("-batch" if batch else "")
        conf = PROXY_CONF.replace("{root}/proxy.pid", f"{{root}}/{name}.pid")
        if workers > 1:
            conf = conf.replace("worker_processes 1;", f"worker_processes {workers};")
            conf = conf.replace("backlog=4096;", "backlog=4096 reuseport;")
        super().__init__(root, name, conf, pinning, "proxy", batch=batch)

    def _extra(self) -> dict[str, object]:
        return {"upstream_port": self._upstream_port}


class AiohttpProxy(Server):
    name = "aiohttp"

    def __init__(self, upstream: Upstream, pinning: Pinning) -> None:
        port = free_port()
        cmd = [
            sys.executable,
            str(ROOT / "benchmarks" / "aiohttp_proxy.py"),
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            upstream.base,
            "--project",
            HOT_PROJECT,
            "--prefix",
            PREFIX,
        ]
        proc = _popen(pinning.wrap(cmd, role="proxy"))
        super().__init__(proc, port)
        wait_port(port, proc)


class Router(Server):
    def __init__(
        self,
        upstream: Upstream,
        pinning: Pinning,
        workers: int = 1,
        tree: Path = ROOT,
        extra_env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        """``tree``: the directory holding the ``harbor_router`` package to run (the checkout
        by default; a snapshot to measure another commit). ``extra_env``: more configuration
        (the soak's cache TTLs and timeouts). ``command``: what runs instead of ``python -m
        harbor_router``, with the same environment (a benchmark's own launcher)."""
        self.name = "router" if workers == 1 else f"router-w{workers}"
        if (extra_env or {}).get("SCHED_POLICY") == "batch":
            self.name += "-batch"
        port = free_port()
        self.metrics_port = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "HARBOR_URL": upstream.base,
            "HARBOR_USERNAME": "robot$bench",
            "HARBOR_PASSWORD": "bench",
            "LISTEN_ADDR": f"127.0.0.1:{port}",
            "METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            "AUTH_MODE": "none",
            # BENCH_ROUTER_LOG_LEVEL=info measures the access log (off by default)
            "LOG_LEVEL": os.environ.get("BENCH_ROUTER_LOG_LEVEL", "warning"),
            "LOG_FORMAT": os.environ.get("BENCH_ROUTER_LOG_FORMAT", "json"),
            "WORKERS": str(workers),
            "PROXY_PROJECT": PREFIX,
        }
        for passed in ("HARBOR_ROUTER_NO_EXTENSIONS", "HARBOR_ROUTER_REQUIRE_EXTENSIONS"):
            if passed in os.environ:
                env[passed] = os.environ[passed]
        env.update(extra_env or {})
        if tree != ROOT:
            env["PYTHONPATH"] = str(tree)
        cmd = pinning.wrap(command or [sys.executable, "-m", "harbor_router"], role="proxy")
        proc = _popen(cmd, env=env, cwd=tree)
        super().__init__(proc, port)
        self._wait_ready(workers)

    def _wait_ready(self, workers: int, timeout: float = 30.0) -> None:
        """/readyz 200 on several fresh connections in a row (each worker discovers alone)."""
        deadline = time.monotonic() + timeout
        streak = 0
        while streak < 4 * workers:
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as resp:
                    streak = streak + 1 if resp.status == 200 else 0
                    continue
            except (OSError, urllib.error.HTTPError):
                streak = 0
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s")
            time.sleep(0.1)
