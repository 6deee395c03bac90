"""Instructions per cache hit, counted by callgrind: an A/B measure that a busy machine cannot blur.

    .venv/bin/python benchmarks/instructions_hit.py [--requests 2000] [--tree DIR ...]
        [--auth-mode none|harbor] [--credentials] [--cold [--answering PROJECT]] [--tags]

Requests per CPU-second (``loadtest.py``) is the figure the targets are set in, but on a shared
2-core machine two runs of the same tree can differ by 30 %. callgrind counts the instructions
the router process executes in user space (kernel time is not in it), which stays the same from
run to run to within about 1 %. For each ``--tree`` (default: this checkout) a router runs under
``valgrind --tool=callgrind`` with instrumentation off, against the load harness's static Harbor
(nginx); after a warm-up, instrumentation goes on for exactly ``--requests`` manifest GET cache
hits, sent sequentially over ``--connections`` keep-alive connections in turn, and the
instruction count is read from the dump. Prints instructions per request per tree.

``--auth-mode harbor`` runs the router with ``AUTH_MODE=harbor`` and sends HTTP Basic
credentials with every request (the static Harbor's ``/service/token`` grants pull on the hot
repository), so after the warm-up every hit is one with its decision cached; ``--credentials``
sends the same header with ``AUTH_MODE=none``, for a like-for-like comparison.

``--cold`` counts cold misses instead (default 300 of them): manifest GETs on distinct
repository names, each a fan-out over the static Harbor's 50 projects of which only the last in
Harbor's order (``p49``) has the image; the warm-up is 100 such misses too (every project's
connections open, every code path taken once). ``--answering p00`` puts the images in the first
project instead: the answer is known at once, and the other 49 are still on their way.

``--tags`` counts tags/list cache hits instead of manifest ones (the tag list is captured and
written with its name rewritten, not relayed).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clients import ACCEPT, Client
from harness.servers import (
    COLD_PROJECT,
    PREFIX,
    PROJECTS,
    REPO,
    TAG,
    Upstream,
    write_upstream_tree,
)
from harness.system import free_port, plan_pinning, stop

ROOT = Path(__file__).resolve().parent.parent
PATH = f"/v2/{PREFIX}/{REPO}/manifests/{TAG}"
TAGS_PATH = f"/v2/{PREFIX}/{REPO}/tags/list"
BASIC = "Basic " + base64.b64encode(b"bench-user:bench-password-0123456789").decode()


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"router exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"router not ready after {timeout:g}s")
        time.sleep(0.5)


def _total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):  # a dump's "summary:" line can read 0
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {path}")


def count(
    tree: Path,
    upstream: Upstream,
    root: Path,
    requests: int,
    connections: int,
    auth_mode: str = "none",
    credentials: bool = False,
    cold: bool = False,
    tags: bool = False,
) -> float:
    port = free_port()
    out = root / f"callgrind.{os.getpid()}.{port}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "HARBOR_URL": upstream.base,
        "HARBOR_USERNAME": "robot$bench",
        "HARBOR_PASSWORD": "bench",
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "AUTH_MODE": auth_mode,
        "LOG_LEVEL": "warning",
        "WORKERS": "1",
        "PROXY_PROJECT": PREFIX,
        "PYTHONPATH": os.pathsep.join([str(tree), *site.getsitepackages()]),
        "PYTHONHASHSEED": "0",
    }
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           "--dump-instr=no", os.path.realpath(sys.executable), "-m", "harbor_router"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tree, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_ready(port, proc, 180)
        clients = [Client(port, timeout=60) for _ in range(connections)]
        headers = {"Accept": ACCEPT}
        if credentials or auth_mode == "harbor":
            headers["Authorization"] = BASIC
        warm = 100 if cold else 200

        def path(i: int) -> str:  # a cold miss: a name nobody asked for before
            if cold:
                return f"/v2/{PREFIX}/cold-i{i:07d}/manifests/latest"
            return TAGS_PATH if tags else PATH

        for i in range(warm):  # warm: mapping, pool, caches
            status, _, _ = clients[i % connections].request("GET", path(i), headers)
            assert status == 200, status
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       capture_output=True)  # fmt: skip
        for i in range(warm, warm + requests):
            status, _, _ = clients[i % connections].request("GET", path(i), headers)
            assert status == 200, status
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       capture_output=True)  # fmt: skip
        for client in clients:
            client.close()
        dumps = sorted(root.glob(f"{out.name}.*")) or [out]
        keep = os.environ.get("INSTRUCTIONS_KEEP_DUMP")
        if keep:
            shutil.copy(dumps[0], keep)
        return sum(_total(d) for d in dumps if d.exists()) / requests
    finally:
        stop(proc, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None, help="default 2000 (300 cold)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--tree", type=Path, action="append", default=None)
    parser.add_argument("--auth-mode", choices=("none", "harbor"), default="none")
    parser.add_argument(
        "--credentials", action="store_true", help="send Basic credentials with AUTH_MODE=none"
    )
    parser.add_argument(
        "--cold", action="store_true", help=f"cold misses: a fan-out over {PROJECTS} projects"
    )
    parser.add_argument(
        "--answering", default=COLD_PROJECT, help="the project with the cold images (--cold)"
    )
    parser.add_argument("--tags", action="store_true", help="tags/list hits, not manifest ones")
    args = parser.parse_args()
    requests = args.requests or (300 if args.cold else 2000)
    what = f"cold miss ({PROJECTS} projects, {args.answering})" if args.cold else "cache hit"
    if args.tags and not args.cold:
        what = "tags/list cache hit"
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    with tempfile.TemporaryDirectory(prefix="hr-instr-") as tmp:
        root = Path(tmp)
        write_upstream_tree(root, 1 << 20)
        upstream = Upstream(root, plan_pinning(), args.answering)
        try:
            for tree in trees:
                per = count(
                    tree,
                    upstream,
                    root,
                    requests,
                    args.connections,
                    args.auth_mode,
                    args.credentials,
                    args.cold,
                    args.tags,
                )
                print(
                    f"{per:12,.0f} instructions per {what}  {tree}  AUTH_MODE={args.auth_mode}",
                    flush=True,
                )
        finally:
            upstream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
