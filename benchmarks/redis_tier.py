"""What the Redis tier costs a request that misses L1, measured in one run.

    .venv/bin/python benchmarks/redis_tier.py [--duration 8s] [--connections 32]

Starts a real Redis master + replica + three Sentinels (``tests/redis_topology.py``) and nginx
as a static Harbor (two manifests), then runs the router in its own process three ways, each
loaded by ``wrk`` alternating between the two repositories (a small Lua script):

1. L1 hits: the default cache; every request is an L1 hit (the reference);
2. L1 misses that hit Redis: ``CACHE_MAX_ENTRIES=1``, so alternating names always evict each
   other from L1, and every request reads its mapping from Redis;
3. the same with a single connection at low load, for the added latency per request (p50/p99
   over the L1-hit run with the same single connection).

Prints requests per second and latency of each, and the added latency of an L1 miss that
hits Redis.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from redis_topology import RedisTopology  # noqa: E402
from support_tools import free_port  # noqa: E402
from wrk_static_upstream import MANIFEST, NGINX_CONF  # noqa: E402

NAMES = ("alpine", "busybox")
LUA = """
local paths = {"/v2/proxy/alpine/manifests/3.19", "/v2/proxy/busybox/manifests/3.19"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % 2) + 1])
end
"""


def wrk(url: str, script: Path, duration: str, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--latency", "-s", str(script),
         "-H", "Accept: application/vnd.oci.image.manifest.v1+json", url],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")

    def latency(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        assert m is not None, out
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
        return float(m.group(1)) * scale

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps is not None, out
    return {"rps": float(rps.group(1)), "p50_ms": latency("50%"), "p99_ms": latency("99%")}


def router(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "harbor_router"], env=env)
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the router did not become ready") from None
            time.sleep(0.1)
    for name in NAMES:  # resolve both once: the mappings are then in L1 and in Redis
        url = f"http://127.0.0.1:{port}/v2/proxy/{name}/manifests/3.19"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.read() == MANIFEST.encode()
    time.sleep(0.3)  # the background writes to Redis
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="8s")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hr-redis-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        www = root / "www"
        (www / "api/v2.0/projects/hub").mkdir(parents=True)
        (root / "tmp").mkdir()
        (www / "projects.json").write_text('[{"project_id": 1, "name": "hub", "registry_id": 1}]')
        (www / "api/v2.0/projects/hub/summary").write_text('{"registry": {"type": "docker-hub"}}')
        for name in NAMES:
            manifests = www / f"v2/hub/library/{name}/manifests"
            manifests.mkdir(parents=True)
            (manifests / "3.19").write_text(MANIFEST)
        script = root / "alternate.lua"
        script.write_text(LUA)
        nginx_port = free_port()
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=nginx_port))
        nginx = subprocess.Popen(["nginx", "-c", str(root / "nginx.conf")])
        topology = RedisTopology(root / "redis").start()
        results: dict[str, dict[str, float]] = {}
        try:
            sentinels = ",".join(f"{h}:{p}" for h, p in topology.sentinel_addresses)
            for label, extra in (("l1-hit", {}), ("l1-miss-redis-hit", {"CACHE_MAX_ENTRIES": "1"})):
                port = free_port()
                env = {
                    "PATH": os.environ.get("PATH", ""),
                    "HARBOR_URL": f"http://127.0.0.1:{nginx_port}",
                    "HARBOR_USERNAME": "robot$bench",
                    "HARBOR_PASSWORD": "bench",
                    "LISTEN_ADDR": f"127.0.0.1:{port}",
                    "METRICS_ADDR": f"127.0.0.1:{free_port()}",
                    "AUTH_MODE": "none",
                    "LOG_LEVEL": "warning",
                    "REDIS_SENTINELS": sentinels,
                    **extra,
                }
                proc = router(env, port)
                try:
                    url = f"http://127.0.0.1:{port}"
                    results[label] = wrk(url, script, args.duration, args.connections)
                    results[label + " (1 connection)"] = wrk(url, script, args.duration, 1)
                finally:
                    stop(proc)
        finally:
            topology.stop()
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
    for label, r in results.items():
        rps, p50, p99 = r["rps"], r["p50_ms"], r["p99_ms"]
        print(f"{label:32s} {rps:10.0f} req/s  p50 {p50:.3f} ms  p99 {p99:.3f} ms")
    hit, miss = results["l1-hit (1 connection)"], results["l1-miss-redis-hit (1 connection)"]
    print(
        f"added latency of an L1 miss that hits Redis: p50 {miss['p50_ms'] - hit['p50_ms']:.3f} ms,"
        f" p99 {miss['p99_ms'] - hit['p99_ms']:.3f} ms"
    )
    rate, reference = results["l1-miss-redis-hit"]["rps"], results["l1-hit"]["rps"]
    print(
        f"rate when every request misses L1 and hits Redis: {rate:.0f} req/s"
        f" ({rate / reference:.2f} of L1 hits)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
