"""What AUTH_MODE=harbor adds to a cache hit whose decision is cached, in requests per CPU-second.

    .venv/bin/python benchmarks/auth_hit.py [--rounds 3] [--duration 4]

The load harness's static Harbor (nginx, whose ``/service/token`` grants pull on the hot
repository) and two routers, one with ``AUTH_MODE=none`` and one with ``AUTH_MODE=harbor``, both
pinned to the proxy CPU. In alternating rounds (order rotated) ``wrk -t1 -c32`` loads each with
manifest GET cache hits: the ``none`` router without credentials (what docker sends when
``/v2/`` asks for none), and again with the same Basic header; the ``harbor`` router with it
(after the warm-up every decision is cached). Prints the medians and the ratios; the target is
harbor >= 0.9 x none (the cost of an authorized hit within 10 %).
"""

from __future__ import annotations

import argparse
import base64
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clients import ACCEPT, Client
from harness.servers import PREFIX, REPO, TAG, Router, Upstream, write_upstream_tree
from harness.system import Pinning, cpu_seconds, plan_pinning

PATH = f"/v2/{PREFIX}/{REPO}/manifests/{TAG}"
BASIC = "Basic " + base64.b64encode(b"bench-user:bench-password-0123456789").decode()


def wrk(router: Router, headers: list[str], seconds: float, pinning: Pinning) -> float:
    """Requests per CPU-second of ``router`` over one wrk run."""
    cmd = ["wrk", "-t1", "-c32", f"-d{seconds:g}s"]
    for header in headers:
        cmd += ["-H", header]
    cmd.append(router.base + PATH)
    before = cpu_seconds(router.cpu_pids())
    out = subprocess.run(pinning.wrap(cmd, role="load"), capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout  # fmt: skip
    used = cpu_seconds(router.cpu_pids()) - before
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    done = re.search(r"(\d+) requests in", out)
    if done is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return int(done.group(1)) / used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    pinning = plan_pinning()
    pinning.pin_self()
    accept = f"Accept: {ACCEPT}"
    with tempfile.TemporaryDirectory(prefix="hr-auth-") as tmp:
        root = Path(tmp)
        write_upstream_tree(root, 1 << 20)
        upstream = Upstream(root, pinning)
        routers = []
        try:
            none = Router(upstream, pinning)
            routers.append(none)
            harbor = Router(upstream, pinning, extra_env={"AUTH_MODE": "harbor"})
            routers.append(harbor)
            cases = {
                "none": (none, [accept]),
                "none, same header": (none, [accept, f"Authorization: {BASIC}"]),
                "harbor, decision cached": (harbor, [accept, f"Authorization: {BASIC}"]),
            }
            for router, headers in cases.values():  # map the image, cache the decision
                with Client(router.port) as client:
                    fields = dict(h.split(": ", 1) for h in headers)
                    for _ in range(3):
                        status, _, _ = client.request("GET", PATH, fields)
                        assert status == 200, status
                wrk(router, headers, 1, pinning)
            results: dict[str, list[float]] = {name: [] for name in cases}
            names = list(cases)
            for i in range(args.rounds):
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    router, headers = cases[name]
                    results[name].append(wrk(router, headers, args.duration, pinning))
        finally:
            for router in routers:
                router.close()
            upstream.close()
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"{name:26} {value:10,.0f} req/CPU-s   rounds {[round(v) for v in results[name]]}")
    base = medians["none"]
    same = medians["none, same header"]
    cached = medians["harbor, decision cached"]
    print(f"harbor / none               {cached / base:.3f}")
    print(f"harbor / none, same header  {cached / same:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
