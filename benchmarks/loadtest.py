"""End-to-end load harness: harbor-router side by side with nginx and a plain aiohttp proxy.

    .venv/bin/python benchmarks/loadtest.py            # make bench: every scenario, ~4 min
    .venv/bin/python benchmarks/loadtest.py --gate     # make bench-gate: ratios vs floors, ~40 s

One nginx plays Harbor on loopback: the projects API (50 proxy-cache projects, ``p00`` ..
``p49``, type ``docker-registry``), an OCI manifest and tags/list in ``p00``, a sparse 1 GiB blob
in ``p00``, and any ``cold-*`` repository's manifest in ``p49``. In front of it, in the same
run, three proxies serve ``/v2/proxy/<name>/...`` from ``/v2/p00/<name>/...``:

- ``router``: ``python -m harbor_router`` (``AUTH_MODE=none``, ``LOG_LEVEL=warning``,
  ``WORKERS=1``), every request after the first a mapping-cache hit;
- ``nginx``: ``proxy_pass`` to an ``upstream { keepalive 64; }`` pool, HTTP/1.1, one worker;
- ``aiohttp``: ``benchmarks/aiohttp_proxy.py``, an aiohttp server and one ClientSession.

The proxy under test is pinned to the first usable CPU, wrk, the upstream and this process to
the others (``taskset``; no pinning with one CPU). The headline figure is **requests per
CPU-second of the proxy's processes** (utime + stime from ``/proc/<pid>/stat`` around each round,
nginx master + worker, every router worker): it does not depend on how fast the load side is.
Rounds alternate between the proxies (the order rotates each round) and the figures are medians
over rounds; ratios are medians of the per-round ratios, so a noisy neighbour shifts both sides.

Scenarios (full run): manifest GET, manifest HEAD and tags/list (``wrk -t1 -c32 --latency``); a
1 GiB blob (MiB/s, CPU s per GiB, RSS growth); cold misses fanned out over the 50 projects
(router only, against the answering project's own latency); added latency at a fixed rate
against the upstream direct; ``WORKERS=1`` vs ``WORKERS=2`` with nginx's one and two workers
as the reference, at 32 and 64 connections (:func:`workers_scenario`). Results go to
``benchmarks/results/latest.{json,md,png}``.

``--gate``: the manifest GET scenario only, shorter; exits 1 when router/nginx or router/aiohttp
requests per CPU-second falls under its floor (:data:`FLOORS`), and writes ``gate.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import report
from harness.clients import (
    ACCEPT,
    Client,
    MiB,
    fixed_rate,
    head_load,
    percentile,
    pull_blob,
    run_wrk,
    sequential_latencies,
)
from harness.servers import (
    BLOB_DIGEST,
    BLOB_REPO,
    COLD_PROJECT,
    HOT_PROJECT,
    MANIFEST,
    PREFIX,
    REPO,
    TAG,
    AiohttpProxy,
    NginxProxy,
    Router,
    Server,
    Upstream,
    write_upstream_tree,
)
from harness.system import (
    Pinning,
    cpu_seconds,
    git_info,
    machine_info,
    plan_pinning,
    rss_bytes,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: Gate floors: router / other, requests per CPU-second of the manifest GET, same run.
#: router/nginx 0.9, about 0.89x what the gate measures at 14.6k instructions per hit (2-CPU
#: VM: 1.017 in the fresh-clone CI run; make bench 1.014 and 1.007), raised from 0.6, 0.7, 0.8
#: and 0.85 as the code got there (a busy machine took up to 8 % off at 17.9k); router/aiohttp
#: at the target, 5.0 (12.7-13.1 measured). The targets are router/nginx 1.0 and
#: router/aiohttp 5.0.
FLOORS = {"router/nginx": 0.9, "router/aiohttp": 5.0}

MANIFEST_PATH = f"/v2/{PREFIX}/{REPO}/manifests/{TAG}"
TAGS_PATH = f"/v2/{PREFIX}/{REPO}/tags/list"
BLOB_PATH = f"/v2/{PREFIX}/{BLOB_REPO}/blobs/{BLOB_DIGEST}"
DIRECT_MANIFEST_PATH = f"/v2/{HOT_PROJECT}/{REPO}/manifests/{TAG}"
DIRECT_BLOB_PATH = f"/v2/{HOT_PROJECT}/{BLOB_REPO}/blobs/{BLOB_DIGEST}"


def log(message: str) -> None:
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rotations(items: Sequence[Any], rounds: int) -> list[list[Any]]:
    """Round r runs the items rotated by r: each goes first, middle and last in turn."""
    return [[items[(r + i) % len(items)] for i in range(len(items))] for r in range(rounds)]


def paired_ratio(rounds: dict[str, list[dict[str, float]]], a: str, b: str, key: str) -> float:
    """Median over rounds of a[key] / b[key] measured in the same round."""
    return median([x[key] / y[key] for x, y in zip(rounds[a], rounds[b], strict=True) if y[key]])


# ---------------------------------------------------------------------------------------------
# Scenarios


def wrk_scenario(
    targets: Sequence[Server],
    path: Callable[[Server], str],
    args: argparse.Namespace,
    pinning: Pinning,
    head: bool = False,
    connections: int | None = None,
) -> dict[str, Any]:
    """``connections``: wrk's connection count (``--connections`` by default)."""
    connections = connections or args.connections
    rounds: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for order in rotations(targets, args.rounds):
        for target in order:
            pids = target.cpu_pids()
            cpu0 = cpu_seconds(pids)
            if head:
                result = head_load(
                    target.port, path(target), connections=connections,
                    duration=args.duration,
                )  # fmt: skip
            else:
                result = run_wrk(
                    target.base + path(target),
                    duration=args.duration,
                    connections=connections,
                    pinning=pinning,
                )
            time.sleep(0.05)  # let the proxy finish the last responses' bookkeeping
            result["cpu_s"] = cpu_seconds(pids) - cpu0
            result["req_per_cpu_s"] = result["requests"] / max(result["cpu_s"], 1e-9)
            rounds[target.name].append(result)
    summary = {
        name: {
            key: median([r[key] for r in per])
            for key in ("rps", "req_per_cpu_s", "cpu_s", "p50_ms", "p90_ms", "p99_ms")
        }
        for name, per in rounds.items()
    }
    ratios = {}
    if "router" in rounds:
        for other in ("nginx", "aiohttp"):
            if other in rounds:
                ratios[f"router/{other}"] = paired_ratio(rounds, "router", other, "req_per_cpu_s")
                ratios[f"router/{other} rps"] = paired_ratio(rounds, "router", other, "rps")
    return {"kind": "wrk", "median": summary, "ratios": ratios, "rounds": rounds}


#: The workers scenario's ratios: name -> (numerator, denominator), both measured per round.
WORKER_PAIRS = {
    "w2/w1": ("router-w2", "router"),
    "w2 batch/w1": ("router-w2-batch", "router"),
    "nginx w2/w1": ("nginx-w2", "nginx"),
    "nginx w2 batch/w1": ("nginx-w2-batch", "nginx"),
}


def workers_scenario(
    targets: Sequence[Server], args: argparse.Namespace, pinning: Pinning
) -> dict[str, Any]:
    """``WORKERS=2`` against ``WORKERS=1`` (and nginx's 2 workers against its 1, the reference),
    all on the one proxy CPU, at ``--connections`` and at twice as many. The two processes
    share that CPU, so each wakes up for about half the ready sockets a single process finds:
    the fixed cost of a wakeup is shared by fewer requests, the more so the fewer connections;
    and one waking up preempts the other in the middle of its batch. Both are measured again
    with SCHED_BATCH (``SCHED_POLICY=batch``; nginx under ``chrt --batch``), which has no
    wakeup preemption. The target is read at twice ``--connections``; both counts are
    reported."""
    result: dict[str, Any] = {"by_connections": {}, "processes": {}}
    for target in targets:
        result["processes"][target.name] = len(target.cpu_pids())
    for connections in (args.connections, 2 * args.connections):
        run = wrk_scenario(targets, lambda t: MANIFEST_PATH, args, pinning, connections=connections)
        rounds = run["rounds"]
        for key, (a, b) in WORKER_PAIRS.items():
            run["ratios"][key] = paired_ratio(rounds, a, b, "req_per_cpu_s")
            run["ratios"][f"{key} rps"] = paired_ratio(rounds, a, b, "rps")
        result["by_connections"][str(connections)] = run
    result["connections"] = 2 * args.connections
    result["ratios"] = result["by_connections"][str(2 * args.connections)]["ratios"]
    return result


def warm(targets: Sequence[Server], args: argparse.Namespace, pinning: Pinning) -> None:
    """A checked GET each, then a short unmeasured wrk run: pools filled, mappings cached."""
    for target in targets:
        path = DIRECT_MANIFEST_PATH if target.name == "direct" else MANIFEST_PATH
        with Client(target.port) as client:
            status, _, body = client.request("GET", path, {"Accept": ACCEPT})
            if status != 200 or body != MANIFEST.encode():
                raise RuntimeError(f"{target.name}: GET {path} -> {status} {body[:200]!r}")
        run_wrk(
            target.base + path,
            duration=1,
            connections=args.connections,
            pinning=pinning,
        )
        target.refresh_pids()


def blob_scenario(targets: Sequence[Server], args: argparse.Namespace, size: int) -> dict[str, Any]:
    for target in targets:  # the router maps the blob (HEAD fan-out) before the first pull
        with Client(target.port) as client:
            path = DIRECT_BLOB_PATH if target.name == "direct" else BLOB_PATH
            status, fields, _ = client.request("HEAD", path)
            if status != 200 or fields.get("content-length") != str(size):
                raise RuntimeError(f"{target.name}: HEAD blob -> {status} {fields}")
    rounds: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for order in rotations(targets, args.rounds):
        for target in order:
            pids = target.cpu_pids()
            cpu0 = cpu_seconds(pids)
            path = DIRECT_BLOB_PATH if target.name == "direct" else BLOB_PATH
            elapsed, rss0, peak = pull_blob(target.port, path, size, lambda p=pids: rss_bytes(p))
            time.sleep(0.05)
            cpu = cpu_seconds(pids) - cpu0
            gib = size / (1024 * MiB)
            rounds[target.name].append(
                {
                    "seconds": elapsed,
                    "mib_per_s": size / MiB / elapsed,
                    "cpu_s": cpu,
                    "cpu_s_per_gib": cpu / gib,
                    "gib_per_cpu_s": gib / max(cpu, 1e-9),
                    "rss_before_mib": rss0 / MiB,
                    "rss_growth_mib": (peak - rss0) / MiB,
                }
            )
    summary = {
        name: {
            key: median([r[key] for r in per])
            for key in ("mib_per_s", "cpu_s_per_gib", "gib_per_cpu_s", "rss_growth_mib")
        }
        for name, per in rounds.items()
    }
    for name, per in rounds.items():
        summary[name]["rss_growth_max_mib"] = max(r["rss_growth_mib"] for r in per)
    ratios = {}
    for other in ("nginx", "aiohttp"):
        if other in rounds and "router" in rounds:
            ratios[f"router/{other}"] = paired_ratio(rounds, "router", other, "gib_per_cpu_s")
            ratios[f"router/{other} MiB/s"] = paired_ratio(rounds, "router", other, "mib_per_s")
    return {"kind": "blob", "size_mib": size // MiB, "median": summary, "ratios": ratios,
            "rounds": rounds}  # fmt: skip


def cold_scenario(router: Router, upstream: Upstream, args: argparse.Namespace) -> dict[str, Any]:
    """N cold misses on distinct names through the router (a 50-project fan-out each), and the
    same names straight from the answering project, alternating per round."""
    routed: list[dict[str, float]] = []
    direct: list[dict[str, float]] = []
    cpu_per_miss: list[float] = []
    deadline = time.monotonic() + 120
    for r in range(args.rounds):
        names = [f"cold-r{r}-{i}-{os.getpid()}" for i in range(args.cold)]
        pids = router.cpu_pids()
        cpu0 = cpu_seconds(pids)
        lat = sequential_latencies(
            router.port, [f"/v2/{PREFIX}/{n}/manifests/latest" for n in names], deadline
        )
        cpu_per_miss.append((cpu_seconds(pids) - cpu0) / args.cold * 1e3)
        routed.append(latency_stats(lat))
        lat = sequential_latencies(
            upstream.port, [f"/v2/{COLD_PROJECT}/{n}/manifests/latest" for n in names], deadline
        )
        direct.append(latency_stats(lat))
    result = {
        "router": median_of_rounds(routed),
        "answering_project_direct": median_of_rounds(direct),
    }
    pairs = list(zip(routed, direct, strict=True))
    return {
        "kind": "cold",
        "projects": 50,
        "answering_project": COLD_PROJECT,
        "misses": args.cold * args.rounds,
        "router_cpu_ms_per_miss": median(cpu_per_miss),
        "latency": result,
        "added_p50_ms": median([a["p50_ms"] - b["p50_ms"] for a, b in pairs]),
        "added_p99_ms": median([a["p99_ms"] - b["p99_ms"] for a, b in pairs]),
        "rounds": {"router": routed, "answering_project_direct": direct},
    }


def latency_stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "p999_ms": percentile(values, 99.9),
        "max_ms": max(values),
    }


def median_of_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: median([r[key] for r in rounds]) for key in rounds[0]}


def latency_scenario(targets: Sequence[Server], args: argparse.Namespace) -> dict[str, Any]:
    """Percentiles per round (so one disturbed round cannot own the p99), then medians."""
    rounds: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for order in rotations(targets, args.rounds):
        for target in order:
            path = DIRECT_MANIFEST_PATH if target.name == "direct" else MANIFEST_PATH
            lat, err, rate = fixed_rate(target.port, path, args.rate, args.rate_seconds)
            if not lat:
                raise RuntimeError(f"{target.name}: no answer at {args.rate:g} req/s")
            rounds[target.name].append(
                {**latency_stats(lat), "requests": len(lat), "errors": err, "achieved_rate": rate}
            )
    summary = {name: median_of_rounds(per) for name, per in rounds.items()}
    added = {
        name: {
            f"{key}": median([r[key] - d[key] for r, d in zip(per, rounds["direct"], strict=True)])
            for key in ("p50_ms", "p99_ms")
        }
        for name, per in rounds.items()
        if name != "direct"
    }
    return {"kind": "latency", "rate": args.rate, "seconds_per_round": args.rate_seconds,
            "median": summary, "added": added, "rounds": rounds}  # fmt: skip


# ---------------------------------------------------------------------------------------------


class _Direct(Server):
    """The upstream itself as a load target (for reference figures; its CPU is the load side's)."""

    name = "direct"

    def __init__(self, upstream: Upstream) -> None:
        super().__init__(upstream.proc, upstream.port)

    def close(self) -> None:  # the upstream is closed on its own
        pass


def run(args: argparse.Namespace) -> int:
    pinning = plan_pinning()
    pinning.pin_self()
    log(f"pinning: {pinning.note}")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmp = Path(tempfile.mkdtemp(prefix="hr-loadtest-", dir=base))
    servers: list[Server] = []
    started = time.monotonic()
    results: dict[str, Any] = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "gate" if args.gate else "full",
        "git": git_info(ROOT),
        "machine": machine_info(),
        "router_tree": str(args.router_tree),
        "pinning": {"proxy": pinning.proxy, "load": pinning.load, "note": pinning.note},
        "config": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "rate": args.rate,
            "rate_seconds": args.rate_seconds,
            "cold_misses_per_round": args.cold,
            "blob_mib": args.blob_mib,
            "wrk": f"wrk -t1 -c{args.connections} --latency",
        },
        "scenarios": {},
    }
    scenarios: dict[str, Any] = results["scenarios"]
    try:
        write_upstream_tree(tmp, args.blob_mib * MiB)
        upstream = Upstream(tmp, pinning)
        servers.append(upstream)
        router = Router(upstream, pinning, tree=args.router_tree)
        servers.append(router)
        nginx = NginxProxy(tmp, upstream, pinning)
        servers.append(nginx)
        aio = AiohttpProxy(upstream, pinning)
        servers.append(aio)
        direct = _Direct(upstream)
        proxies: list[Server] = [router, nginx, aio]
        warm([*proxies, direct], args, pinning)
        log("servers up and warm")

        log("manifest GET (wrk)")
        scenarios["manifest_get"] = wrk_scenario(
            proxies if args.gate else [*proxies, direct],
            lambda t: DIRECT_MANIFEST_PATH if t.name == "direct" else MANIFEST_PATH,
            args,
            pinning,
        )
        if not args.gate:
            log("manifest HEAD (closed-loop Python client: Debian's wrk cannot do HEAD)")
            scenarios["manifest_head"] = wrk_scenario(
                proxies, lambda t: MANIFEST_PATH, args, pinning, head=True
            )
            scenarios["manifest_head"]["load"] = "python closed loop, 32 connections"
            log("tags/list (wrk)")
            scenarios["tags_list"] = wrk_scenario(proxies, lambda t: TAGS_PATH, args, pinning)
            log(f"blob {args.blob_mib} MiB")
            scenarios["blob"] = blob_scenario([*proxies, direct], args, args.blob_mib * MiB)
            log(f"cold misses over 50 projects ({args.cold} per round)")
            scenarios["cold_miss"] = cold_scenario(router, upstream, args)
            log(f"added latency at {args.rate:g} req/s")
            scenarios["added_latency"] = latency_scenario([direct, *proxies], args)
            log("WORKERS=1 vs WORKERS=2 (manifest GET), nginx with 1 and 2 workers beside")
            aio.close()
            router2 = Router(upstream, pinning, workers=2, tree=args.router_tree)
            servers.append(router2)
            batch = {"SCHED_POLICY": "batch"}
            router2b = Router(upstream, pinning, workers=2, tree=args.router_tree, extra_env=batch)
            servers.append(router2b)
            nginx2 = NginxProxy(tmp, upstream, pinning, workers=2)
            servers.append(nginx2)
            nginx2b = NginxProxy(tmp, upstream, pinning, workers=2, batch=True)
            servers.append(nginx2b)
            warm([router2, router2b, nginx2, nginx2b], args, pinning)
            for two in (router2, router2b):
                if len(two.cpu_pids()) < 3:
                    raise RuntimeError(f"{two.name} has pids {two.cpu_pids()}")
            scenarios["workers"] = workers_scenario(
                [router, router2, router2b, nginx, nginx2, nginx2b], args, pinning
            )
    finally:
        for server in reversed(servers):
            try:
                server.close()
            except Exception as exc:  # keep closing the others
                log(f"closing {server.name}: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    log(f"done in {results['elapsed_s']} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.gate:
        return gate(results)
    report.write(results, RESULTS / "latest", FLOORS)
    print((RESULTS / "latest.md").read_text())
    log(f"wrote {RESULTS}/latest.json, latest.md, latest.png")
    return 0


def gate(results: dict[str, Any]) -> int:
    ratios = results["scenarios"]["manifest_get"]["ratios"]
    medians = results["scenarios"]["manifest_get"]["median"]
    results["gate"] = {"floors": FLOORS, "ratios": {k: ratios[k] for k in FLOORS}}
    failed = []
    print("\nbench-gate: manifest GET, requests per CPU-second of the proxy, same run")
    for name, stats in medians.items():
        print(f"  {name:8} {stats['req_per_cpu_s']:10.0f} req/CPU-s  {stats['rps']:10.0f} req/s  "
              f"p99 {stats['p99_ms']:.2f} ms")  # fmt: skip
    for key, floor in FLOORS.items():
        ok = ratios[key] >= floor
        print(f"  {key:16} {ratios[key]:6.3f}  floor {floor:.2f}  {'ok' if ok else 'FAIL'}")
        if not ok:
            failed.append(key)
    results["gate"]["failed"] = failed
    (RESULTS / "gate.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"  runtime {results['elapsed_s']} s; {RESULTS / 'gate.json'}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gate", action="store_true", help="short run, exit 1 under a floor")
    parser.add_argument("--duration", type=float, help="seconds per wrk round (4; gate 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario (>= 3)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1000, help="fixed-rate req/s")
    parser.add_argument("--rate-seconds", type=float, default=3)
    parser.add_argument("--cold", type=int, default=100, help="cold misses per round")
    parser.add_argument("--blob-mib", type=int, default=1024)
    parser.add_argument(
        "--router-tree",
        type=Path,
        default=ROOT,
        help="directory holding the harbor_router package to run (default: this checkout)",
    )
    args = parser.parse_args()
    if args.duration is None:
        args.duration = 3.0 if args.gate else 4.0
    args.router_tree = args.router_tree.resolve()
    if not (args.router_tree / "harbor_router" / "__main__.py").exists():
        parser.error(f"no harbor_router package in {args.router_tree}")
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (medians)")
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"loadtest: {tool} is not installed (make system-deps)", file=sys.stderr)
            return 2

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    with contextlib.suppress(KeyboardInterrupt):
        status = run(args)
        if status == 1 and args.gate:
            # A shared runner can starve the proxy's core for a few seconds: a ratio under its
            # floor is measured once more, and the gate fails only when both runs say so.
            log("a ratio is under its floor: measuring once more")
            status = run(args)
        return status
    return 130


if __name__ == "__main__":
    sys.exit(main())
