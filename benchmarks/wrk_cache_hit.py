"""Cache-hit throughput of the router, side by side with the Harbor it forwards to, in one run.

    .venv/bin/python benchmarks/wrk_cache_hit.py [--duration 10s] [--connections 32]

Starts a real registry (``docker-registry``) with ``dockerhub/library/alpine:3.19``, the Harbor
emulator in front of it, and the router in its own process (``python -m harbor_router``,
``AUTH_MODE=none``, ``LOG_LEVEL=warning``). One GET warms the repository → project mapping;
then ``wrk`` loads

1. the emulator directly: ``/v2/dockerhub/library/alpine/manifests/3.19`` with the robot's
   Basic auth (the reference: what Harbor alone can serve here), and
2. the router: ``/v2/proxy/library/alpine/manifests/3.19`` (every request a mapping-cache hit).

What is measured: a cache hit still forwards every request to Harbor (the mapping is cached, the
manifest is not), so the router's number is bounded by the emulator's, which is itself an
aiohttp app in front of the registry, all on the same cores as wrk. The ratio says how much the
extra hop costs end to end; the router's own CPU time per request (from /proc) says how much work
the router itself does, independent of the upstream.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from distribution import DistributionRegistry  # noqa: E402
from harbor_emulator import HarborEmulator, default_projects  # noqa: E402
from oci_images import OCI_MANIFEST, build_image, push  # noqa: E402
from support_tools import free_port  # noqa: E402

REPO, TAG = "library/alpine", "3.19"
READY_TIMEOUT = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def fail(message: str) -> None:
    print(f"wrk_cache_hit: {message}", file=sys.stderr)
    sys.exit(1)


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        fail(f"{tool!r} is not installed: run `make system-deps` as root")
    assert path is not None
    return path


def get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5.0) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (children excluded), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_wrk(wrk: str, url: str, headers: list[str], args: argparse.Namespace) -> dict[str, str]:
    cmd = [wrk, "-t1", f"-c{args.connections}", f"-d{args.duration}", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    cmd.append(url)
    shown = " ".join(
        f"-H '{h.split(':')[0]}: ****'" if h.startswith("Authorization") else f"-H '{h}'"
        for h in headers
    )
    print(f"$ wrk -t1 -c{args.connections} -d{args.duration} --latency {shown} {url}", flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    print(result.stdout.rstrip(), flush=True)
    if result.returncode != 0:
        fail(f"wrk failed ({result.returncode}): {result.stderr}")
    out = result.stdout
    stats: dict[str, str] = {}
    if m := re.search(r"Requests/sec:\s+([0-9.]+)", out):
        stats["rps"] = m.group(1)
    else:
        fail("no Requests/sec in wrk's output")
    if m := re.search(r"([0-9]+) requests in", out):
        stats["requests"] = m.group(1)
    if m := re.search(r"Latency\s+(\S+)", out):
        stats["latency_avg"] = m.group(1)
    if m := re.search(r"99%\s+(\S+)", out):
        stats["latency_p99"] = m.group(1)
    if m := re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", out):
        fail(f"{m.group(1)} responses were not 2xx/3xx")
    if "Socket errors" in out:
        print("  (wrk reported socket errors: see above)", flush=True)
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="10s", help="wrk -d (default 10s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    args = parser.parse_args()
    wrk = require("wrk")
    registry_binary = require("docker-registry")
    skopeo = require("skopeo")

    with tempfile.TemporaryDirectory(prefix="harbor-router-wrk-") as tmp:
        work = Path(tmp)
        with DistributionRegistry(work / "registry", registry_binary) as registry:
            stored = f"dockerhub/{REPO}"
            layout = work / "image"
            build_image(layout, stored, TAG)
            push(layout, TAG, registry.url, stored, workdir=work / "skopeo", skopeo=skopeo)
            with HarborEmulator(registry.url, default_projects()) as harbor:
                return measure(args, wrk, harbor, work)


def measure(args: argparse.Namespace, wrk: str, harbor: HarborEmulator, work: Path) -> int:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "HARBOR_URL": harbor.url,
        "HARBOR_USERNAME": harbor.username,
        "HARBOR_PASSWORD": harbor.password,
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "AUTH_MODE": "none",
        "LOG_LEVEL": "warning",
    }
    for name in ("HARBOR_ROUTER_NO_EXTENSIONS", "HARBOR_ROUTER_REQUIRE_EXTENSIONS", "WORKERS"):
        if name in os.environ:
            env[name] = os.environ[name]
    log_path = work / "router.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harbor_router"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        router = f"http://127.0.0.1:{port}"
        accept = {"Accept": OCI_MANIFEST}
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                fail(f"the router exited ({proc.returncode}):\n{log_path.read_text()}")
            try:
                if get(router + "/readyz", {})[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                fail(f"router not ready after {READY_TIMEOUT}s:\n{log_path.read_text()}")
            time.sleep(0.1)
        status, body = get(f"{router}/v2/proxy/{REPO}/manifests/{TAG}", accept)
        if status != 200:
            fail(f"warm-up GET through the router: {status} {body[:300]!r}")
        direct_url = f"{harbor.url}/v2/dockerhub/{REPO}/manifests/{TAG}"
        status, direct_body = get(
            direct_url, {**accept, "Authorization": harbor.basic_auth_header()}
        )
        if status != 200 or direct_body != body:
            fail(f"direct GET from the emulator: {status}, same body: {direct_body == body}")

        print(f"\n== reference: the Harbor emulator directly ({len(body)}-byte OCI manifest)")
        direct = run_wrk(
            wrk,
            direct_url,
            [f"Accept: {OCI_MANIFEST}", f"Authorization: {harbor.basic_auth_header()}"],
            args,
        )

        print("\n== harbor-router, mapping-cache hit, forwarding to the emulator")
        harbor.clear_log()
        cpu_before = cpu_seconds(proc.pid)
        routed = run_wrk(
            wrk, f"{router}/v2/proxy/{REPO}/manifests/{TAG}", [f"Accept: {OCI_MANIFEST}"], args
        )
        router_cpu = cpu_seconds(proc.pid) - cpu_before
        upstream = harbor.count("dockerhub", f"/{REPO}/manifests/")
        others = harbor.count() - upstream
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    requests = int(routed.get("requests", "0"))
    ratio = float(routed["rps"]) / float(direct["rps"])
    print("\n== summary")
    print(
        f"emulator directly : {float(direct['rps']):10.1f} req/s  "
        f"(latency avg {direct.get('latency_avg')}, p99 {direct.get('latency_p99')})"
    )
    print(
        f"through the router: {float(routed['rps']):10.1f} req/s  "
        f"(latency avg {routed.get('latency_avg')}, p99 {routed.get('latency_p99')})"
    )
    print(f"ratio router / direct: {ratio:.2f}")
    print(
        f"requests the emulator saw from the router: {upstream} manifest GETs to dockerhub for "
        f"{requests} wrk requests, {others} other"
    )
    if requests:
        print(
            f"router CPU: {router_cpu:.2f}s for {requests} requests = "
            f"{router_cpu / requests * 1e6:.0f} us/request (utime+stime of its process)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
