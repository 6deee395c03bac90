"""What ``SCHED_POLICY=batch`` costs in latency when another program wants the router's CPU.

    .venv/bin/python benchmarks/sched_latency.py [--rate 1000] [--seconds 3]

Starts the load harness's static Harbor (nginx) and four routers pinned to the proxy CPU
(``WORKERS`` 1 and 2, each with ``SCHED_POLICY`` ``other`` and ``batch``), then measures the
manifest GET latency of each at a fixed, moderate rate (the open-loop client of ``make bench``'s
added-latency scenario), twice: on a quiet proxy CPU, and with a busy loop (a plain
``SCHED_OTHER`` Python process, the "other program") pinned to the same CPU. SCHED_BATCH does
not preempt on wakeup, so with the busy loop there a request waits for the loop's turn to end.
Prints p50 / p90 / p99 / max in milliseconds per router and condition.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness.clients import ACCEPT, Client, MiB, fixed_rate, percentile  # noqa: E402
from harness.servers import PREFIX, REPO, TAG, Router, Upstream, write_upstream_tree  # noqa: E402
from harness.system import plan_pinning, stop  # noqa: E402

PATH = f"/v2/{PREFIX}/{REPO}/manifests/{TAG}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000, help="requests per second")
    parser.add_argument("--seconds", type=float, default=3, help="per router and condition")
    args = parser.parse_args()
    pinning = plan_pinning()
    if not pinning.proxy:
        print("sched_latency: needs two CPUs and taskset (the busy loop shares the proxy's)")
        return 2
    pinning.pin_self()
    tmp = Path(tempfile.mkdtemp(prefix="sched-latency-"))
    servers: list[Upstream | Router] = []
    routers: list[tuple[Router, str]] = []
    try:
        write_upstream_tree(tmp, MiB)
        upstream = Upstream(tmp, pinning)
        servers.append(upstream)
        for workers in (1, 2):
            for policy in ("other", "batch"):
                env = {"SCHED_POLICY": policy}
                router = Router(upstream, pinning, workers=workers, extra_env=env)
                servers.append(router)
                routers.append((router, f"WORKERS={workers} {policy}"))
        for router, _ in routers:
            with Client(router.port) as client:
                status, _, _ = client.request("GET", PATH, {"Accept": ACCEPT})
                if status != 200:
                    raise RuntimeError(f"{router.name}: GET {PATH} -> {status}")
        print(f"{args.rate:g} req/s for {args.seconds:g} s each; {pinning.note}")
        print("condition     router              p50 ms  p90 ms  p99 ms  max ms  errors")
        for busy in (False, True):
            loop = None
            if busy:
                cmd = pinning.wrap([sys.executable, "-c", "while True: pass"], role="proxy")
                loop = subprocess.Popen(cmd)
                time.sleep(0.5)
            try:
                for router, label in routers:
                    lat, errors, _ = fixed_rate(router.port, PATH, args.rate, args.seconds)
                    print(
                        f"{'busy CPU' if busy else 'quiet CPU':<13} {label:<19}"
                        f" {percentile(lat, 50):6.3f}  {percentile(lat, 90):6.3f}"
                        f"  {percentile(lat, 99):6.3f}  {max(lat):6.2f}  {errors}",
                        flush=True,
                    )
            finally:
                if loop is not None:
                    stop(loop)
    finally:
        for server in reversed(servers):
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
