"""Blob relay cost: ``os.splice`` vs the copy path, side by side in one run.

    .venv/bin/python benchmarks/relay_splice_vs_copy.py [--size-mib 1024] [--rounds 3]

The load harness's static Harbor (nginx on loopback, the blob served with ``sendfile``) and two
routers in their own processes, both pinned to the proxy CPU, identical except that one has
splicing switched off (``Forwarder.splice_min_bytes = None``; there is no setting for it, so
this script is their launcher: ``--serve splice|copy``, configured from the environment the
harness gives ``python -m harbor_router``). After a HEAD that maps the blob and one warm-up
pull each, the rounds alternate: one GET of the whole blob through each router, read by this
process into a reused buffer (``pull_blob``). Per router and round: the router process's CPU
time (utime + stime of every thread, from ``/proc``, so neither nginx nor this client is
counted), scaled to one GiB, the throughput the client saw and the router's RSS growth. Each
router's ``/metrics`` must then count every pull under its own path (``result="splice"`` or
``"copy"``), or the comparison is void. Medians and the ratios splice/copy are printed; the
target is CPU <= 0.5x and throughput >= 1x (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clients import Client, MiB, pull_blob
from harness.servers import BLOB_DIGEST, BLOB_REPO, PREFIX, Router, Upstream, write_upstream_tree
from harness.system import cpu_times, plan_pinning, rss_bytes

MODES = ("splice", "copy")
BLOB_PATH = f"/v2/{PREFIX}/{BLOB_REPO}/blobs/{BLOB_DIGEST}"
_BLOB_COUNT = re.compile(
    r'^harbor_router_blob_proxy_duration_seconds_count\{result="(\w+)"\} (\S+)$', re.M
)


def serve(mode: str) -> int:
    """The child: one router configured from the environment, splicing or copying."""
    import asyncio
    import signal

    import uvloop

    from harbor_router import logs
    from harbor_router.config import load_config
    from harbor_router.server import App

    config = load_config(os.environ)
    logs.configure(config.log_level, config.log_format)

    async def main() -> None:
        app = App(config)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await app.start()
            assert app.forwarder is not None
            if mode == "copy":
                app.forwarder.splice_min_bytes = None
            await stop.wait()
        finally:
            await app.close()

    uvloop.run(main())
    return 0


def blob_results(router: Router) -> dict[str, float]:
    """The router's blob GETs by ``result``, from its ``/metrics``."""
    url = f"http://127.0.0.1:{router.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {result: float(count) for result, count in _BLOB_COUNT.findall(text)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        print("nginx is required (make system-deps)", file=sys.stderr)
        return 2
    size = args.size_mib * MiB
    per_gib = 1024 / args.size_mib
    pinning = plan_pinning()
    pinning.pin_self()
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    user: dict[str, list[float]] = {mode: [] for mode in MODES}
    rate: dict[str, list[float]] = {mode: [] for mode in MODES}
    growth: dict[str, list[float]] = {mode: [] for mode in MODES}
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="hr-relay-", dir=base) as tmp:
        root = Path(tmp)
        write_upstream_tree(root, size)
        upstream = Upstream(root, pinning)
        routers: dict[str, Router] = {}
        try:
            for mode in MODES:
                launcher = [sys.executable, __file__, "--serve", mode]
                routers[mode] = Router(upstream, pinning, command=launcher)
                routers[mode].name = mode
            for router in routers.values():  # map the blob (HEAD fan-out), then one warm-up
                with Client(router.port) as client:
                    status, fields, _ = client.request("HEAD", BLOB_PATH)
                if status != 200 or fields.get("content-length") != str(size):
                    raise RuntimeError(f"{router.name}: HEAD blob -> {status} {fields}")
                pull_blob(router.port, BLOB_PATH, size, lambda: 0)
            for i in range(args.rounds):
                for mode in MODES[i % 2 :] + MODES[: i % 2]:  # who goes first alternates
                    pids = routers[mode].cpu_pids()
                    user0, sys0 = cpu_times(pids)
                    elapsed, rss0, peak = pull_blob(
                        routers[mode].port, BLOB_PATH, size, partial(rss_bytes, pids)
                    )
                    time.sleep(0.05)  # let the router finish its bookkeeping
                    user1, sys1 = cpu_times(pids)
                    cpu[mode].append((user1 - user0 + sys1 - sys0) * per_gib)
                    user[mode].append((user1 - user0) * per_gib)
                    rate[mode].append(args.size_mib / elapsed)
                    growth[mode].append((peak - rss0) / MiB)
            for mode, router in routers.items():
                counted = blob_results(router)
                if counted != {mode: args.rounds + 1}:
                    raise RuntimeError(f"{mode} router counted its blob GETs as {counted}")
        finally:
            for router in routers.values():
                router.close()
            upstream.close()
    print(f"blob {args.size_mib} MiB over loopback, {args.rounds} rounds, medians; "
          f"pinning: {pinning.note}")  # fmt: skip
    print(f"{'path':8} {'router CPU s/GiB':>17} {'of it user':>11} {'throughput MiB/s':>17} "
          f"{'RSS growth MiB':>15}   rounds (CPU s/GiB)")  # fmt: skip
    for mode in MODES:
        rounds = " ".join(f"{c:.3f}" for c in cpu[mode])
        print(
            f"{mode:8} {statistics.median(cpu[mode]):17.3f} "
            f"{statistics.median(user[mode]):11.3f} "
            f"{statistics.median(rate[mode]):17.0f} "
            f"{statistics.median(growth[mode]):15.1f}   {rounds}"
        )
    cpu_ratio = statistics.median(cpu["splice"]) / max(statistics.median(cpu["copy"]), 1e-9)
    rate_ratio = statistics.median(rate["splice"]) / statistics.median(rate["copy"])
    print(f"splice/copy: CPU {cpu_ratio:.2f}x (target <= 0.5), "
          f"throughput {rate_ratio:.2f}x (target >= 1.0)")  # fmt: skip
    return 0 if cpu_ratio <= 0.5 and rate_ratio >= 1.0 else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2]))
    sys.exit(main())
