"""The router's own cache-hit throughput, with an upstream fast enough not to hide it.

    .venv/bin/python benchmarks/wrk_static_upstream.py [--duration 10s] [--connections 32]
        [--router-env LOG_LEVEL=info] [--router-log /tmp/router.log]

nginx plays a static Harbor on loopback: the projects API (one docker-hub proxy project), its
summary, and one OCI manifest as a file. The router runs in its own process on its defaults
(``AUTH_MODE=none``, ``LOG_LEVEL=warning``, one worker) with that nginx as ``HARBOR_URL``. One GET
warms the mapping; then ``wrk`` loads, in the same run,

1. nginx directly: ``/v2/hub/library/alpine/manifests/3.19`` (the reference), and
2. the router: ``/v2/proxy/alpine/manifests/3.19`` (a mapping-cache hit, forwarded to nginx
   over the raw keep-alive pool, ``library/`` added for the docker-hub project).

Both numbers and their ratio are printed; the ratio is what a release gate can compare.
``--router-env`` overrides the router's environment (``LOG_LEVEL=info`` turns the access log
on); ``--router-log`` sends the router's stderr (its log) to a file instead of the terminal.
``--scrapes N`` times N scrapes of ``/metrics`` after the load (ms per scrape).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support_tools import free_port  # noqa: E402

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
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

NGINX_CONF = """
worker_processes 1;
daemon off;
error_log {root}/error.log;
pid {root}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {root}/tmp;
  proxy_temp_path {root}/tmp;
  fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp;
  scgi_temp_path {root}/tmp;
  server {{
    listen 127.0.0.1:{port};
    root {root}/www;
    location = /api/v2.0/projects {{
      default_type application/json;
      try_files /projects.json =404;
    }}
    location /api/ {{ default_type application/json; }}
    location /v2/ {{ default_type application/vnd.oci.image.manifest.v1+json; }}
  }}
}}
"""


def wrk(url: str, duration: str, connections: int) -> tuple[float, str]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}",
            "--latency",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors from {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = re.search(r"Latency\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    return rps, latency


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--router-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--router-log", default=None, metavar="PATH")
    parser.add_argument("--scrapes", type=int, default=0)
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `make system-deps` as root")
    with tempfile.TemporaryDirectory(prefix="hr-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx workers run as an unprivileged user
        www = root / "www"
        (www / "api/v2.0/projects/hub").mkdir(parents=True)
        (www / "v2/hub/library/alpine/manifests").mkdir(parents=True)
        (root / "tmp").mkdir()
        (www / "projects.json").write_text('[{"project_id": 1, "name": "hub", "registry_id": 1}]')
        (www / "api/v2.0/projects/hub/summary").write_text('{"registry": {"type": "docker-hub"}}')
        (www / "v2/hub/library/alpine/manifests/3.19").write_text(MANIFEST)
        nginx_port, router_port, metrics_port = free_port(), free_port(), free_port()
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=nginx_port))
        nginx = subprocess.Popen(["nginx", "-c", str(root / "nginx.conf")])
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HARBOR_URL": f"http://127.0.0.1:{nginx_port}",
            "HARBOR_USERNAME": "robot$bench",
            "HARBOR_PASSWORD": "bench",
            "LISTEN_ADDR": f"127.0.0.1:{router_port}",
            "METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "AUTH_MODE": "none",
            "LOG_LEVEL": "warning",
        }
        env.update(item.split("=", 1) for item in args.router_env)
        log = open(args.router_log, "wb") if args.router_log else None  # noqa: SIM115
        router = subprocess.Popen([sys.executable, "-m", "harbor_router"], env=env, stderr=log)
        try:
            router_url = f"http://127.0.0.1:{router_port}/v2/proxy/alpine/manifests/3.19"
            deadline = time.monotonic() + 20
            while True:
                try:
                    ready = f"http://127.0.0.1:{router_port}/readyz"
                    with urllib.request.urlopen(ready, timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline or router.poll() is not None:
                        raise SystemExit("the router did not become ready") from None
                    time.sleep(0.1)
            with urllib.request.urlopen(router_url, timeout=5) as resp:  # warm the mapping
                assert resp.read() == MANIFEST.encode()
            direct = wrk(
                f"http://127.0.0.1:{nginx_port}/v2/hub/library/alpine/manifests/3.19",
                args.duration,
                args.connections,
            )
            routed = wrk(router_url, args.duration, args.connections)
            scrape_ms = None
            if args.scrapes:
                metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
                started = time.perf_counter()
                for _ in range(args.scrapes):
                    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
                        size = len(resp.read())
                scrape_ms = (time.perf_counter() - started) * 1000 / args.scrapes
        finally:
            router.send_signal(signal.SIGTERM)
            router.wait(10)
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
            if log is not None:
                log.close()
    print(f"nginx static Harbor, direct : {direct[0]:10.0f} req/s  (latency avg {direct[1]})")
    print(f"harbor-router, cache hit    : {routed[0]:10.0f} req/s  (latency avg {routed[1]})")
    print(f"ratio router / direct       : {routed[0] / direct[0]:.3f}")
    if scrape_ms is not None:
        print(f"/metrics scrape             : {scrape_ms:10.2f} ms  ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
