"""Where a cache hit's CPU goes: py-spy on the router while wrk drives manifest GET hits.

    .venv/bin/python benchmarks/profile_hit.py [--seconds 8] [--rate 250] [--out /tmp/hit.txt]

Starts the load harness's static Harbor (nginx) and one router worker, warms the mapping, runs
``wrk`` for ``--seconds`` while ``py-spy record --format raw`` samples the router (``--native``
off: Python frames only), and prints the functions with the most self samples and the most
inclusive samples. py-spy comes from PyPI (``pip install py-spy``); it needs ptrace rights.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clients import ACCEPT, Client, run_wrk
from harness.servers import PREFIX, REPO, TAG, Router, Upstream, write_upstream_tree
from harness.system import cpu_seconds, plan_pinning

PATH = f"/v2/{PREFIX}/{REPO}/manifests/{TAG}"


def top(lines: list[str], limit: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\n-- {title} --")
        for frame, n in counter.most_common(limit):
            print(f"{100 * n / total:5.1f}%  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="keep the raw profile here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        parser.error("py-spy not found (pip install py-spy)")
    pinning = plan_pinning()
    with tempfile.TemporaryDirectory(prefix="hr-profile-") as tmp:
        root = Path(tmp)
        write_upstream_tree(root, 1 << 20)
        upstream = Upstream(root, pinning)
        router = Router(upstream, pinning)
        try:
            with Client(router.port) as client:
                status, _, _ = client.request("GET", PATH, {"Accept": ACCEPT})
                assert status == 200, status
            raw = root / "profile.txt"
            spy_cmd = [spy, "record", "--pid", str(router.proc.pid), "--rate", str(args.rate),
                       "--duration", str(args.seconds), "--format", "raw", "--output", str(raw),
                       "--nonblocking"]  # fmt: skip
            spy_proc = subprocess.Popen(
                spy_cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            before = cpu_seconds(router.cpu_pids())
            result = run_wrk(
                router.base + PATH,
                duration=args.seconds,
                connections=args.connections,
                pinning=pinning,
            )
            used = cpu_seconds(router.cpu_pids()) - before
            spy_proc.wait(timeout=args.seconds + 30)
            print(f"{result['rps']:.0f} req/s, {result['requests'] / used:.0f} req/CPU-s "
                  f"(router CPU {used:.2f} s; py-spy adds some)")  # fmt: skip
            lines = raw.read_text().splitlines()
            if args.out is not None:
                args.out.write_text("\n".join(lines) + "\n")
            top(lines, args.limit)
        finally:
            router.close()
            upstream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
