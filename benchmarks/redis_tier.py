"""What the Redis tier costs a request that misses L1, measured in one run.

    .venv/bin/python benchmarks/redis_tier.py [--duration 8] [--connections 32]

Starts a real Redis master + replica + three Sentinels (``tests/redis_topology.py``) and the load
harness's static Harbor (nginx; a second repository beside the hot one), then runs the router
in its own process (the harness's, pinned to the proxy CPU) three ways, each loaded by ``wrk``
alternating between the two repositories (a small Lua script):

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
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness.clients import ACCEPT, Client, run_wrk  # noqa: E402
from harness.servers import (  # noqa: E402
    MANIFEST,
    PREFIX,
    REPO,
    TAG,
    Router,
    Upstream,
    write_upstream_tree,
)
from harness.system import Pinning, plan_pinning  # noqa: E402
from redis_topology import RedisTopology  # noqa: E402

NAMES = (REPO, "busybox")
PATHS = [f"/v2/{PREFIX}/{name}/manifests/{TAG}" for name in NAMES]
LUA = f"""
local paths = {{"{PATHS[0]}", "{PATHS[1]}"}}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % 2) + 1])
end
"""


def start_router(upstream: Upstream, pinning: Pinning, env: dict[str, str]) -> Router:
    router = Router(upstream, pinning, extra_env=env)
    with Client(router.port) as client:  # resolve both once: then in L1 and in Redis
        for path in PATHS:
            status, _, body = client.request("GET", path, {"Accept": ACCEPT})
            if status != 200 or body != MANIFEST.encode():
                router.close()
                raise RuntimeError(f"GET {path} -> {status} {body[:200]!r}")
    time.sleep(0.3)  # the background writes to Redis
    return router


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    pinning = plan_pinning()
    pinning.pin_self()
    with tempfile.TemporaryDirectory(prefix="hr-redis-bench-") as tmp:
        root = Path(tmp)
        write_upstream_tree(root, 1 << 20, extra_repos=NAMES[1:])
        script = root / "alternate.lua"
        script.write_text(LUA)
        upstream = Upstream(root, pinning)
        topology = RedisTopology(root / "redis").start()
        results: dict[str, dict[str, float]] = {}
        try:
            sentinels = ",".join(f"{h}:{p}" for h, p in topology.sentinel_addresses)
            for label, extra in (("l1-hit", {}), ("l1-miss-redis-hit", {"CACHE_MAX_ENTRIES": "1"})):
                router = start_router(upstream, pinning, {"REDIS_SENTINELS": sentinels, **extra})
                try:
                    for suffix, connections in (("", args.connections), (" (1 connection)", 1)):
                        results[label + suffix] = run_wrk(
                            router.base,
                            duration=args.duration,
                            connections=connections,
                            pinning=pinning,
                            script=script,
                        )
                finally:
                    router.close()
        finally:
            topology.stop()
            upstream.close()
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
