"""Soak: mixed traffic through one router for a long while, its RSS and open fds sampled.

    .venv/bin/python benchmarks/soak.py                  # make soak: 10 minutes
    .venv/bin/python benchmarks/soak.py --duration 60    # a quick look

The upstream is the load harness's nginx playing Harbor (``harness/servers.py``: 50 proxy-cache
projects, a manifest and tags/list in ``p00``, a sparse blob, any ``cold-*`` repository found
in ``p49``); the router is ``python -m harbor_router`` with ``WORKERS=1``. Traffic, at fixed
rates (requests per second, ``--scale`` multiplies them all), each class paced on its own:

- ``hit_get`` / ``hit_head``: the mapped manifest (body checked byte for byte);
- ``tags``: tags/list of the mapped repository;
- ``blob`` / ``blob_range``: the blob, whole (length and digest checked) or a 1 KiB range;
- ``cold``: ``cold-N`` names from a bounded pool, found in the last project: a 50-project
  fan-out the first time, a hit (or a stale hit and its refresh) afterwards;
- ``missing``: names no project has, from a bounded pool: a fan-out of 404s, then negative-cache
  hits until ``NEGATIVE_CACHE_TTL`` expires and the next fan-out;
- ``invalid``: names, tags and digests the router refuses itself (400), other paths (404),
  other methods (405);
- ``raw``: malformed requests over raw sockets (garbage, smuggling, HTTP/2 preface, over-long
  heads, control bytes, percent-encoded traversal, absolute targets, bad versions) and clients
  that leave early (mid-head, mid-blob, without a byte);
- ``slow_head``: a head that never completes (answered 408 after ``HEADER_TIMEOUT``);
- ``idle``: a set of idle keep-alive connections, reopened when ``KEEPALIVE_TIMEOUT`` closes them.

Every ``--sample`` seconds (default 10) the router's ``VmRSS`` (``/proc/<pid>/status``) and open
fds (``/proc/<pid>/fd``) are read, with ``open_connections`` and ``cache_entries`` from its
``/metrics``; a table row is printed per sample. After the load every client connection is
closed and sampling goes on for ``--quiet`` seconds (default 45: past ``KEEPALIVE_TIMEOUT`` and
``IDLE_CONN_TIMEOUT``), to see what the router still holds once nothing is open. The end: a
summary (RSS and fds before the load, after the warm-up, at the end of the load, maximum, growth,
after the quiet phase; requests by class and outcome; latency per class) printed and written to
``benchmarks/results/soak.json``. Exit status 1 if any request got an answer it should not
have (a 5xx, a wrong body, an error on a good request).

Loopback only; the load is bounded by the rates (about 160 requests/s at ``--scale 1``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clients import ACCEPT, percentile
from harness.servers import BLOB_DIGEST, BLOB_REPO, MANIFEST, REPO, TAG, Router, Upstream
from harness.servers import write_upstream_tree as write_tree
from harness.system import git_info, machine_info, plan_pinning

RESULTS = Path(__file__).resolve().parent / "results"
BLOB_SIZE = 1024 * 1024
BLOB_SHA = "sha256:" + hashlib.sha256(bytes(BLOB_SIZE)).hexdigest()  # the sparse blob: zeros
COLD_POOL = 2000
MISSING_POOL = 300
IDLE_CONNECTIONS = 200
ROUTER_ENV = {
    # short enough that the soak sees expiry, stale-while-revalidate refreshes and timeouts
    "CACHE_TTL": "2m",
    "STALE_WHILE_REVALIDATE": "1m",
    "NEGATIVE_CACHE_TTL": "15s",
    "HEADER_TIMEOUT": "5s",
    "KEEPALIVE_TIMEOUT": "30s",
    "IDLE_CONN_TIMEOUT": "20s",  # upstream keep-alive: closed within the quiet phase
}
# requests per second at --scale 1
RATES = {
    "hit_get": 60.0,
    "hit_head": 15.0,
    "tags": 5.0,
    "blob": 8.0,
    "blob_range": 4.0,
    "cold": 10.0,
    "missing": 8.0,
    "invalid": 15.0,
    "raw": 15.0,
    "slow_head": 0.2,
}
MAX_OUTSTANDING = 64  # per class: beyond it a tick is skipped (counted), never queued
RAW_OK = frozenset({400, 404, 405, 408, 414, 431, 501, 505})

# (name, bytes to send): each is answered and closed by the router (valid HTTP asks for the
# close itself); ``leave_*`` clients go away first.
RAW_CASES: tuple[tuple[str, bytes], ...] = (
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n"),
    (
        "cl_and_te",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    ("h2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("long_header", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n"),
    ("long_url", b"GET /v2/proxy/" + b"a" * 9000 + b"/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("nul_in_header", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
    ("folding", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n"),
    (
        "traversal",
        b"GET /v2/proxy/%2e%2e/%2e%2e/api/v2.0/projects/manifests/x HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
    ),
    (
        "crlf_inject",
        b"GET /v2/proxy/a%0d%0aX-Evil:%201/manifests/1 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
    ),
    ("absolute", b"GET http://evil.example/v2/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("connect", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"),
    ("version", b"GET /v2/ HTTP/3.0\r\nHost: x\r\n\r\n"),
    (
        "body_on_get",
        b"GET /v2/proxy/alpine/manifests/3.19 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    ),
    (
        "push",
        b"POST /v2/proxy/alpine/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n",
    ),
    ("leave_mid_head", b"GET /v2/proxy/alpine/manif"),
    ("leave_silent", b""),
    ("leave_mid_blob", f"GET /v2/proxy/{BLOB_REPO}/blobs/{BLOB_DIGEST} HTTP/1.1\r\n".encode()),
)
INVALID_TARGETS: tuple[tuple[str, str, int], ...] = (
    ("GET", "/v2/proxy/UPPER/case/manifests/latest", 400),
    ("GET", "/v2/proxy/alpine/manifests/-bad-tag", 400),
    ("GET", "/v2/proxy/alpine/blobs/sha256:short", 400),
    ("GET", "/v2/proxy/alpine/blobs/md5:" + "0" * 32, 400),
    ("GET", "/v2/proxy/" + "a" * 300 + "/manifests/1", 400),
    ("GET", "/v2/proxy/a//b/manifests/1", 400),
    ("GET", "/v2/other-project/alpine/manifests/3.19", 404),
    ("GET", "/api/v2.0/projects", 404),
    ("DELETE", "/v2/proxy/alpine/manifests/3.19", 405),
    ("PUT", "/v2/proxy/alpine/manifests/3.19", 405),
)


class Soak:
    def __init__(self, port: int, metrics_port: int, deadline: float) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.port = port
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.deadline = deadline
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.latency: defaultdict[str, list[float]] = defaultdict(list)
        self.unexpected: list[str] = []
        self.outstanding: Counter[str] = Counter()
        self.rng = random.Random(8)
        self.session: aiohttp.ClientSession | None = None
        self.scraper: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    # -- bookkeeping ------------------------------------------------------------------------

    def record(self, kind: str, outcome: str, ok: bool, started: float | None = None) -> None:
        self.counts[kind][outcome] += 1
        if started is not None:
            self.latency[kind].append((time.perf_counter() - started) * 1e3)
        if not ok and len(self.unexpected) < 200:
            self.unexpected.append(f"{kind}: {outcome}")

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    # -- the classes ------------------------------------------------------------------------

    async def _get(
        self, kind: str, method: str, path: str, check: Callable[[int, bytes], bool], **kw: Any
    ) -> None:
        assert self.session is not None
        started = time.perf_counter()
        try:
            async with self.session.request(method, self.base + path, **kw) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.record(kind, f"error:{type(exc).__name__}", False, started)
            return
        good = check(status, body)
        self.record(kind, str(status) if good else f"{status}:wrong", good, started)

    async def hit_get(self) -> None:
        await self._get(
            "hit_get",
            "GET",
            f"/v2/proxy/{REPO}/manifests/{TAG}",
            lambda s, b: s == 200 and b == MANIFEST.encode(),
            headers={"Accept": ACCEPT},
        )

    async def hit_head(self) -> None:
        await self._get(
            "hit_head",
            "HEAD",
            f"/v2/proxy/{REPO}/manifests/{TAG}",
            lambda s, b: s == 200 and b == b"",
            headers={"Accept": ACCEPT},
        )

    async def tags(self) -> None:
        def check(status: int, body: bytes) -> bool:
            return status == 200 and json.loads(body)["name"] == f"proxy/{REPO}"

        await self._get("tags", "GET", f"/v2/proxy/{REPO}/tags/list", check)

    async def blob(self) -> None:
        def check(status: int, body: bytes) -> bool:
            return status == 200 and len(body) == BLOB_SIZE and _sha(body) == BLOB_SHA

        await self._get("blob", "GET", f"/v2/proxy/{BLOB_REPO}/blobs/{BLOB_DIGEST}", check)

    async def blob_range(self) -> None:
        await self._get(
            "blob_range",
            "GET",
            f"/v2/proxy/{BLOB_REPO}/blobs/{BLOB_DIGEST}",
            lambda s, b: s == 206 and b == bytes(1024),
            headers={"Range": "bytes=1024-2047"},
        )

    async def cold(self) -> None:
        name = f"cold-{self.rng.randrange(COLD_POOL)}"
        await self._get(
            "cold",
            "GET",
            f"/v2/proxy/{name}/manifests/latest",
            lambda s, b: s == 200 and b == MANIFEST.encode(),
            headers={"Accept": ACCEPT},
        )

    async def missing(self) -> None:
        name = f"nobody/has-{self.rng.randrange(MISSING_POOL)}"
        await self._get(
            "missing",
            "GET",
            f"/v2/proxy/{name}/manifests/1.0",
            lambda s, b: s == 404 and json.loads(b)["errors"][0]["code"] == "MANIFEST_UNKNOWN",
            headers={"Accept": ACCEPT},
        )

    async def invalid(self) -> None:
        method, path, expected = self.rng.choice(INVALID_TARGETS)
        await self._get(
            "invalid",
            method,
            path,
            lambda s, b: s == expected,
            skip_auto_headers=("Content-Type",),
        )

    async def raw(self) -> None:
        name, data = self.rng.choice(RAW_CASES)
        started = time.perf_counter()
        try:
            outcome, ok = await asyncio.wait_for(self._raw(name, data), 15)
        except (OSError, TimeoutError) as exc:
            outcome, ok = f"error:{type(exc).__name__}", False
        self.record("raw", f"{name}:{outcome}", ok, started)

    async def _raw(self, name: str, data: bytes) -> tuple[str, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            if name.startswith("leave_"):
                if name == "leave_mid_blob":
                    writer.write(data + b"Host: x\r\n\r\n")
                    await reader.readexactly(64 * 1024)  # part of the blob, then gone
                elif data:
                    writer.write(data)
                    await writer.drain()
                return "left", True
            writer.write(data)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                answer = await reader.read()  # the router closes after each of these
            match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
            if match is None:
                return ("closed" if not answer else "garbled"), not answer
            status = int(match[1])
            return str(status), status in RAW_OK
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def slow_head(self) -> None:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            answer = await asyncio.wait_for(reader.read(), 30)
            status = answer[9:12].decode("latin-1")
            self.record("slow_head", status or "closed", status == "408", started)
        except (OSError, TimeoutError) as exc:
            self.record("slow_head", f"error:{type(exc).__name__}", False, started)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def idle_holder(self) -> None:
        """One idle keep-alive connection at a time: a request, then silence until the router
        closes it (KEEPALIVE_TIMEOUT), then the next one."""
        while time.monotonic() < self.deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                self.record("idle", f"error:{type(exc).__name__}", False)
                await asyncio.sleep(1)
                continue
            try:
                writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
                await reader.readexactly(length)
                left = self.deadline - time.monotonic()
                rest = await asyncio.wait_for(reader.read(), max(0.1, left))
                self.record("idle", "closed_idle" if not rest else "garbled", not rest)
            except TimeoutError:
                break  # the soak is over and the connection is still open: fine
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.record("idle", f"error:{type(exc).__name__}", False)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    # -- pacing -----------------------------------------------------------------------------

    async def paced(self, kind: str, rate: float, make: Callable[[], Awaitable[None]]) -> None:
        interval = 1.0 / rate
        next_at = time.monotonic() + self.rng.random() * interval
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                return
            if next_at > now:
                await asyncio.sleep(next_at - now)
            next_at += interval
            if self.outstanding[kind] >= MAX_OUTSTANDING:
                self.counts[kind]["skipped"] += 1
                continue
            self.outstanding[kind] += 1
            task = asyncio.create_task(self._one(kind, make))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, kind: str, make: Callable[[], Awaitable[None]]) -> None:
        try:
            await make()
        except Exception as exc:  # a bug in the soak itself must not end it silently
            self.record(kind, f"error:{type(exc).__name__}", False)
        finally:
            self.outstanding[kind] -= 1

    async def scrape(self) -> dict[str, float]:
        assert self.scraper is not None
        out: dict[str, float] = {}
        try:
            async with self.scraper.get(self.metrics_url) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return out
        for name in ("open_connections", "connections_rejected_total"):
            match = re.search(rf"^harbor_router_{name} (\S+)$", text, re.M)
            if match:
                out[name] = float(match[1])
        for backend in ("l1", "l1_negative"):
            match = re.search(
                rf'^harbor_router_cache_entries\{{backend="{backend}"\}} (\S+)$', text, re.M
            )
            if match:
                out[f"entries_{backend}"] = float(match[1])
        return out


def _sha(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def proc_sample(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open fds) of one process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


COLUMNS = ("t_s", "rss_kib", "fds", "open_conns", "l1", "l1_neg", "requests", "req_per_s")


async def drive(router: Router, args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.duration
    soak = Soak(router.port, router.metrics_port, deadline)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()

    async def sample(phase: str) -> None:
        rss, fds = proc_sample(router.proc.pid)
        scraped = await soak.scrape()
        elapsed = time.monotonic() - t0
        total = soak.total()
        previous = samples[-1] if samples else None
        rate = (
            (total - previous["requests"]) / max(1e-9, elapsed - previous["t_s"])
            if previous
            else 0.0
        )
        row = {
            "t_s": round(elapsed, 1),
            "rss_kib": rss,
            "fds": fds,
            "open_conns": scraped.get("open_connections", -1),
            "l1": scraped.get("entries_l1", -1),
            "l1_neg": scraped.get("entries_l1_negative", -1),
            "requests": total,
            "req_per_s": round(rate, 1),
            "phase": phase,
        }
        samples.append(row)
        print("  ".join(f"{row[c]:>10g}" for c in COLUMNS) + f"  {phase}", flush=True)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as scraper:
        soak.scraper = scraper  # its own keep-alive connection to METRICS_ADDR: one fd, always
        connector = aiohttp.TCPConnector(limit=128)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            soak.session = session
            # the hot manifest, tags and blob mapped before the first sample
            for make in (soak.hit_get, soak.tags, soak.blob):
                await make()
            print("  ".join(f"{c:>10}" for c in COLUMNS) + "  phase", flush=True)
            t0 = time.monotonic()
            await sample("start")
            scale = args.scale
            loops = [
                asyncio.create_task(soak.paced(kind, rate * scale, getattr(soak, kind)))
                for kind, rate in RATES.items()
            ]
            loops += [asyncio.create_task(soak.idle_holder()) for _ in range(args.idle)]
            while time.monotonic() < deadline:
                await asyncio.sleep(min(args.sample, max(0.0, deadline - time.monotonic())))
                await sample("load")
            await asyncio.gather(*loops)
            if soak.tasks:  # requests still in flight finish (each is bounded by its timeout)
                await asyncio.wait(soak.tasks, timeout=35)
        # Every client connection closed: after KEEPALIVE_TIMEOUT and IDLE_CONN_TIMEOUT the
        # router should be back to what it held before the load, plus its caches.
        quiet_until = time.monotonic() + args.quiet
        while time.monotonic() < quiet_until:
            await asyncio.sleep(min(args.sample, max(0.0, quiet_until - time.monotonic())))
            await sample("quiet")
    return summarize(soak, samples, args)


def summarize(
    soak: Soak, samples: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    under_load = [s for s in samples if s["phase"] in ("start", "load")]
    quiet = [s for s in samples if s["phase"] == "quiet"]

    def series(key: str) -> dict[str, float]:
        values = [s[key] for s in under_load]
        warm = [s[key] for s in under_load if s["t_s"] >= args.warmup] or values
        out = {
            "start": values[0],
            "after_warmup": warm[0],
            "end": values[-1],
            "max": max(values),
            "growth": values[-1] - values[0],
            "growth_after_warmup": values[-1] - warm[0],
        }
        if quiet:
            out["after_quiet"] = quiet[-1][key]
        return out

    latency = {
        kind: {
            "p50_ms": round(percentile(values, 50), 2),
            "p99_ms": round(percentile(values, 99), 2),
            "max_ms": round(max(values), 2),
        }
        for kind, values in sorted(soak.latency.items())
        if values
    }
    return {
        "duration_s": args.duration,
        "scale": args.scale,
        "rates_per_s": {k: v * args.scale for k, v in RATES.items()},
        "idle_connections": args.idle,
        "quiet_s": args.quiet,
        "warmup_s": args.warmup,
        "router_env": ROUTER_ENV,
        "rss_kib": series("rss_kib"),
        "fds": series("fds"),
        "samples": samples,
        "requests": soak.total(),
        "counts": {kind: dict(sorted(c.items())) for kind, c in sorted(soak.counts.items())},
        "latency": latency,
        "unexpected": len(soak.unexpected),
        "unexpected_examples": soak.unexpected[:20],
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        "",
        f"{'':<9} {'start':>8} {'warm-up':>9} {'end':>8} {'max':>8} {'growth':>8}"
        f" {'since warm-up':>14} {'quiet':>8}",
    ]
    for key in ("rss_kib", "fds"):
        s = result[key]
        lines.append(
            f"{key:<9} {s['start']:>8g} {s['after_warmup']:>9g} {s['end']:>8g} {s['max']:>8g}"
            f" {s['growth']:>+8g} {s['growth_after_warmup']:>+14g} {s.get('after_quiet', -1):>8g}"
        )
    lines.append(
        f"(start: before the load; warm-up: at {result['warmup_s']:g} s; end: the last sample"
        f" under load; quiet: {result['quiet_s']:g} s after every client connection closed)"
    )
    lines.append("")
    lines.append(f"requests: {result['requests']}, unexpected answers: {result['unexpected']}")
    for kind, counts in result["counts"].items():
        lat = result["latency"].get(kind, {})
        timing = f"  p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms" if lat else ""
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        if len(summary) > 160:
            summary = summary[:157] + "..."
        lines.append(f"  {kind:<10} {sum(counts.values()):>7}{timing}")
        lines.append(f"             {summary}")
    for example in result["unexpected_examples"]:
        lines.append(f"  unexpected: {example}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every rate")
    parser.add_argument(
        "--quiet", type=float, default=45.0, help="seconds sampled after the load (default 45)"
    )
    parser.add_argument("--idle", type=int, default=IDLE_CONNECTIONS, help="idle connections")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="harbor-router-soak-"))
    pinning = plan_pinning()
    pinning.pin_self()
    upstream = router = None
    started = dt.datetime.now(dt.UTC)
    try:
        write_tree(root, BLOB_SIZE)
        upstream = Upstream(root, pinning)
        router = Router(upstream, pinning, extra_env=ROUTER_ENV)
        print(
            f"soak: {args.duration:g} s against router pid {router.proc.pid} "
            f"({pinning.note}), samples every {args.sample:g} s",
            flush=True,
        )
        result = asyncio.run(drive(router, args))
        exit_code = router.proc.poll()
        result["router_exited"] = exit_code
    finally:
        if router is not None:
            router.close()
        if upstream is not None:
            upstream.close()
        shutil.rmtree(root, ignore_errors=True)
    result["started"] = started.isoformat(timespec="seconds")
    result["ended"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["machine"] = machine_info()
    result["git"] = git_info(Path(__file__).resolve().parent.parent)
    print(report(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten to {args.out}")
    return 1 if result["unexpected"] or result["router_exited"] is not None else 0


if __name__ == "__main__":
    sys.exit(main())
