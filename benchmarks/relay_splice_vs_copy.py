"""Blob relay cost: ``os.splice`` vs the copy path, side by side in one run.

    .venv/bin/python benchmarks/relay_splice_vs_copy.py [--size-mib 1024] [--rounds 3]

nginx plays Harbor on loopback (projects API, summary, one blob served with ``sendfile``). Two
routers run in their own processes against it, identical except that one has splicing switched
off (``Forwarder.splice_min_bytes = None``). After one warm-up pull each (discovery, mapping,
pooled connection), the rounds alternate: one GET of the whole blob through each router, read
by this process into a reused buffer. Per router and round: the router process's CPU time
(utime + stime of every thread, ``/proc/<pid>/stat``, so neither nginx nor this client is
counted), scaled to one GiB, and the throughput the client saw. Medians and the ratios
splice/copy are printed; the target is CPU ≤ 0.5x and throughput ≥ 1x.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support_tools import free_port  # noqa: E402

MiB = 1024 * 1024
DIGEST = "sha256:" + "e" * 64
TICKS = os.sysconf("SC_CLK_TCK")

NGINX_CONF = """
worker_processes 1;
daemon off;
error_log {root}/error.log;
pid {root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
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
    location /v2/ {{ default_type application/octet-stream; }}
  }}
}}
"""


def serve(harbor_url: str, port: int, mode: str) -> None:
    """Child process: one router, splicing or copying."""
    import asyncio

    import uvloop

    from harbor_router.config import load_config
    from harbor_router.server import App

    async def main() -> None:
        config = load_config(
            {
                "HARBOR_URL": harbor_url,
                "HARBOR_USERNAME": "robot$bench",
                "HARBOR_PASSWORD": "pw",
                "LISTEN_ADDR": f"127.0.0.1:{port}",
                "METRICS_ADDR": "127.0.0.1:1",
                "AUTH_MODE": "none",
                "LOG_LEVEL": "warning",
            }
        )
        app = App(config)
        await app.start()
        assert app.forwarder is not None
        if mode == "copy":
            app.forwarder.splice_min_bytes = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await app.close()

    uvloop.run(main())


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of every thread of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime


def pull(port: int, size: int, buffer: bytearray, check: bool = False) -> float:
    """One GET of the blob; returns the seconds from request to last byte."""
    view = memoryview(buffer)
    digest = hashlib.sha256() if check else None
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        started = time.perf_counter()
        sock.sendall(f"GET /v2/proxy/big/blobs/{DIGEST} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"no response head: {head!r}")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or b"Content-Length: %d" % size not in head:
            raise RuntimeError(f"unexpected response: {head[:300]!r}")
        received = len(rest)
        if digest is not None:
            digest.update(rest)
        while received < size:
            n = sock.recv_into(view)
            if not n:
                raise RuntimeError(f"closed after {received} of {size} bytes")
            if digest is not None:
                digest.update(view[:n])
            received += n
        elapsed = time.perf_counter() - started
    if digest is not None and digest.hexdigest() != check_digest(size):
        raise RuntimeError("body differs from the blob")
    return elapsed


_PATTERN = hashlib.sha256(b"relay-bench").digest() * (MiB // 32)


def check_digest(size: int) -> str:
    digest = hashlib.sha256()
    for _ in range(size // MiB):
        digest.update(_PATTERN)
    return digest.hexdigest()


def start_router(harbor_url: str, mode: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", harbor_url, str(port), mode],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{mode} router did not start")
    deadline = time.monotonic() + 20
    while True:  # discovery has found the project
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{mode} router did not become ready") from None
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        print("nginx is required (apt-get install nginx-light)", file=sys.stderr)
        return 2
    size = args.size_mib * MiB
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="relay-bench-", dir=base) as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx workers run as an unprivileged user
        (root / "tmp").mkdir()
        www = root / "www"
        blob_dir = www / "v2" / "hub" / "library" / "big" / "blobs"
        blob_dir.mkdir(parents=True)
        with open(blob_dir / DIGEST, "wb") as blob:
            for _ in range(args.size_mib):
                blob.write(_PATTERN)
        projects = [{"project_id": 1, "name": "hub", "registry_id": 1}]
        (www / "projects.json").write_text(json.dumps(projects))
        summary = www / "api" / "v2.0" / "projects" / "hub"
        summary.mkdir(parents=True)
        (summary / "summary").write_text('{"registry": {"type": "docker-hub"}}')
        nginx_port = free_port()
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=nginx_port))
        nginx = subprocess.Popen(["nginx", "-c", str(root / "nginx.conf")])
        routers: dict[str, tuple[subprocess.Popen[str], int]] = {}
        try:
            time.sleep(0.3)
            harbor_url = f"http://127.0.0.1:{nginx_port}"
            for mode in ("splice", "copy"):
                routers[mode] = start_router(harbor_url, mode)
            buffer = bytearray(4 * MiB)
            for _, port in routers.values():  # warm up, and check the bytes once
                pull(port, size, buffer, check=True)
            cpu: dict[str, list[float]] = {"splice": [], "copy": []}
            user: dict[str, list[float]] = {"splice": [], "copy": []}
            rate: dict[str, list[float]] = {"splice": [], "copy": []}
            for _ in range(args.rounds):
                for mode, (proc, port) in routers.items():
                    user0, sys0 = cpu_seconds(proc.pid)
                    elapsed = pull(port, size, buffer)
                    time.sleep(0.05)  # let the router finish its bookkeeping
                    user1, sys1 = cpu_seconds(proc.pid)
                    per_gib = 1024 / args.size_mib
                    cpu[mode].append((user1 - user0 + sys1 - sys0) * per_gib)
                    user[mode].append((user1 - user0) * per_gib)
                    rate[mode].append(args.size_mib / elapsed)
            print(f"blob {args.size_mib} MiB over loopback, {args.rounds} rounds, medians")
            print(f"{'path':8} {'router CPU s/GiB':>17} {'of it user':>11} "
                  f"{'throughput MiB/s':>17}   rounds (CPU s/GiB)")  # fmt: skip
            for mode in ("splice", "copy"):
                rounds = " ".join(f"{c:.3f}" for c in cpu[mode])
                print(
                    f"{mode:8} {statistics.median(cpu[mode]):17.3f} "
                    f"{statistics.median(user[mode]):11.3f} "
                    f"{statistics.median(rate[mode]):17.0f}   {rounds}"
                )
            cpu_ratio = statistics.median(cpu["splice"]) / max(statistics.median(cpu["copy"]), 1e-9)
            rate_ratio = statistics.median(rate["splice"]) / statistics.median(rate["copy"])
            print(f"splice/copy: CPU {cpu_ratio:.2f}x (target <= 0.5), "
                  f"throughput {rate_ratio:.2f}x (target >= 1.0)")  # fmt: skip
            return 0 if cpu_ratio <= 0.5 and rate_ratio >= 1.0 else 1
        finally:
            for proc, _ in routers.values():
                proc.send_signal(signal.SIGTERM)
            for proc, _ in routers.values():
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    sys.exit(main())
