"""The report: ``<stem>.json`` (every figure), ``<stem>.md`` (summary, ratios), ``<stem>.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROXIES = ("router", "nginx", "aiohttp")
WRK_SCENARIOS = {
    "manifest_get": "manifest GET (hit)",
    "manifest_head": "manifest HEAD (hit)",
    "tags_list": "tags/list (hit)",
}


def write(results: dict[str, Any], stem: Path, floors: dict[str, float]) -> None:
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    stem.with_suffix(".md").write_text(markdown(results, floors))
    try:
        plot(results, stem.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no PNG")


def _f(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def markdown(results: dict[str, Any], floors: dict[str, float]) -> str:
    s = results["scenarios"]
    m = results["machine"]
    cfg = results["config"]
    git = results["git"]
    lines = [
        "# harbor-router load harness",
        "",
        f"{results['timestamp']} · commit `{str(git['commit'])[:12]}`"
        f"{' (dirty tree)' if git['dirty'] else ''} · {m['cpu_model']} · {m['cpu_count']} CPUs"
        f" · kernel {m['kernel']} · Python {m['python']} · {m['nginx']} · aiohttp {m['aiohttp']}",
        "",
        f"Pinning: {results['pinning']['note']}. {cfg['wrk']}, {cfg['duration_s']:g} s per round,"
        f" {cfg['rounds']} rounds alternating (order rotated), medians; ratios are medians of"
        f" the per-round ratios. Full run {results['elapsed_s']} s.",
        "",
        "## Requests per CPU-second of the proxy (cache hits)",
        "",
        "| scenario | router | nginx | aiohttp | router/nginx | router/aiohttp |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, title in WRK_SCENARIOS.items():
        if key not in s:
            continue
        med, rat = s[key]["median"], s[key]["ratios"]
        lines.append(
            f"| {title} | "
            + " | ".join(_f(med[p]["req_per_cpu_s"]) for p in PROXIES)
            + f" | **{rat['router/nginx']:.2f}** | **{rat['router/aiohttp']:.2f}** |"
        )
    if "blob" in s:
        med, rat = s["blob"]["median"], s["blob"]["ratios"]
        lines.append(
            f"| blob {s['blob']['size_mib']} MiB (GiB per CPU-s) | "
            + " | ".join(_f(med[p]["gib_per_cpu_s"], 2) for p in PROXIES)
            + f" | **{rat['router/nginx']:.2f}** | **{rat['router/aiohttp']:.2f}** |"
        )
    lines += [
        "",
        "## Throughput and latency under wrk (saturating, 32 connections)",
        "",
        "| scenario | proxy | req/s | proxy CPU s | p50 ms | p90 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, title in WRK_SCENARIOS.items():
        if key not in s:
            continue
        for name, med in s[key]["median"].items():
            lines.append(
                f"| {title} | {name} | {_f(med['rps'])} | {med['cpu_s']:.2f} | "
                f"{med['p50_ms']:.2f} | {med['p90_ms']:.2f} | {med['p99_ms']:.2f} |"
            )
    if "manifest_get" in s:
        rat = s["manifest_get"]["ratios"]
        lines += [
            "",
            f"req/s ratios (manifest GET, bounded by the load CPU): router/nginx "
            f"{rat['router/nginx rps']:.2f}, router/aiohttp {rat['router/aiohttp rps']:.2f}.",
        ]
    if "blob" in s:
        b = s["blob"]
        lines += [
            "",
            f"## Blob, {b['size_mib']} MiB (one GET per proxy per round)",
            "",
            "| proxy | MiB/s | CPU s per GiB | RSS growth MiB (median / max) |",
            "|---|---:|---:|---:|",
        ]
        for name, med in b["median"].items():
            lines.append(
                f"| {name} | {_f(med['mib_per_s'])} | {med['cpu_s_per_gib']:.3f} | "
                f"{med['rss_growth_mib']:.1f} / {med['rss_growth_max_mib']:.1f} |"
            )
        lines += [
            "",
            f"router/nginx MiB/s {b['ratios']['router/nginx MiB/s']:.2f}, router/aiohttp MiB/s "
            f"{b['ratios']['router/aiohttp MiB/s']:.2f}. `direct` is the upstream alone "
            "(its CPU is nginx's static sendfile).",
        ]
    if "cold_miss" in s:
        c = s["cold_miss"]
        lat = c["latency"]
        lines += [
            "",
            f"## Cold misses: fan-out over {c['projects']} projects (router only)",
            "",
            f"{c['misses']} misses on distinct names (percentiles per round, medians), one at a"
            " time; only "
            f"`{c['answering_project']}` (last in Harbor's order) has them. nginx and aiohttp"
            " cannot fan out.",
            "",
            "| | p50 ms | p90 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|",
        ]
        rows = [("router, cold miss", lat["router"]),
                ("answering project direct", lat["answering_project_direct"])]  # fmt: skip
        for name, row in rows:
            lines.append(
                f"| {name} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{row['max_ms']:.2f} |"
            )
        lines += [
            "",
            f"Added by the fan-out: p50 {c['added_p50_ms']:.2f} ms, p99 {c['added_p99_ms']:.2f} ms;"
            f" router CPU {c['router_cpu_ms_per_miss']:.2f} ms per miss.",
        ]
    if "added_latency" in s:
        a = s["added_latency"]
        lines += [
            "",
            f"## Added latency at a fixed {a['rate']:g} req/s (manifest GET, open loop)",
            "",
            "Open loop (a request due goes out at once, on a new connection if all are busy);"
            " latency from its send to the last body byte; percentiles per round, medians of"
            " rounds.",
            "",
            "| target | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms "
            "| requests/round | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in a["median"].items():
            added = a["added"].get(name)
            extra = f"{added['p50_ms']:.3f} | {added['p99_ms']:.3f}" if added else "— | —"
            lines.append(
                f"| {name} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} | {row['p99_ms']:.3f} | "
                f"{row['p999_ms']:.3f} | {extra} | {row['requests']:.0f} | {row['errors']:.0f} |"
            )
    if "workers" in s:
        w = s["workers"]
        lines += [
            "",
            "## WORKERS=1 vs WORKERS=2 (manifest GET, all on the proxy CPU)",
            "",
            "nginx with one and two workers (`reuseport`) is the reference, in the same rounds."
            " Two processes on one CPU each wake up for about half the ready sockets one"
            " process finds, so the fixed cost of a wakeup is shared by fewer requests, and"
            " one waking up preempts the other in the middle of its batch. `-batch`: the same"
            " with SCHED_BATCH (`SCHED_POLICY=batch`; nginx under `chrt --batch 0`), which does"
            f" not preempt on wakeup. The target is read at {w['connections']} connections.",
            "",
            "| connections | proxy | processes | req/CPU-s | req/s | p99 ms |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for connections, run in w["by_connections"].items():
            for name, med in run["median"].items():
                lines.append(
                    f"| {connections} | {name} | {w['processes'][name]} | "
                    f"{_f(med['req_per_cpu_s'])} | {_f(med['rps'])} | {med['p99_ms']:.2f} |"
                )
        lines.append("")
        for connections, run in w["by_connections"].items():
            r = run["ratios"]
            lines.append(
                f"- {connections} connections: router WORKERS=2 / WORKERS=1 req/CPU-s"
                f" **{r['w2/w1']:.2f}** (req/s {r['w2/w1 rps']:.2f}), with SCHED_POLICY=batch"
                f" **{r['w2 batch/w1']:.2f}** (req/s {r['w2 batch/w1 rps']:.2f}); nginx 2 / 1"
                f" workers {r['nginx w2/w1']:.2f} (req/s {r['nginx w2/w1 rps']:.2f}), under"
                f" SCHED_BATCH {r['nginx w2 batch/w1']:.2f}"
                f" (req/s {r['nginx w2 batch/w1 rps']:.2f})"
            )
    lines += ["", "## Gate floors (`make bench-gate`, manifest GET req/CPU-s)", ""]
    if "manifest_get" in s:
        rat = s["manifest_get"]["ratios"]
        for key, floor in floors.items():
            lines.append(f"- {key}: this run {rat[key]:.2f}, floor {floor:.2f}")
    lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["scenarios"]
    keys = [k for k in WRK_SCENARIOS if k in s]
    panels = 2 if "blob" in s else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 + 4 * panels, 4.5), squeeze=False)
    colors = {"router": "#1f77b4", "nginx": "#2ca02c", "aiohttp": "#ff7f0e"}
    width = 0.27
    ax = axes[0][0]
    for i, proxy in enumerate(PROXIES):
        values = [s[k]["median"][proxy]["req_per_cpu_s"] for k in keys]
        bars = ax.bar([x + (i - 1) * width for x in range(len(keys))], values, width,
                      label=proxy, color=colors[proxy])  # fmt: skip
        ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" for v in values], fontsize=7)
    ax.set_xticks(range(len(keys)), [WRK_SCENARIOS[k] for k in keys])
    ax.set_ylabel("requests per CPU-second of the proxy")
    ax.set_title("cache hits (higher is better)")
    ax.legend()
    if "blob" in s:
        ax = axes[0][1]
        values = [s["blob"]["median"][p]["gib_per_cpu_s"] for p in PROXIES]
        bars = ax.bar(list(PROXIES), values, color=[colors[p] for p in PROXIES])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
        ax.set_ylabel("GiB relayed per CPU-second of the proxy")
        ax.set_title(f"blob {s['blob']['size_mib']} MiB")
    commit = str(results["git"]["commit"])[:10]
    fig.suptitle(f"harbor-router vs nginx vs aiohttp · {results['timestamp']} · {commit}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
