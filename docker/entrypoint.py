"""Container entrypoint: default ``WORKERS`` to the CPU limit, then run ``harbor-router``.

``WORKERS`` set in the environment always wins. Otherwise the CPU quota of the container's
cgroup decides (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``):
``floor(quota / period)``, at least 1 — a 1.5-CPU limit runs one worker, not two throttled
ones. Without a quota, the CPUs the process may run on (``sched_getaffinity``).

``--healthcheck`` is the image's HEALTHCHECK: ``GET /healthz`` on ``LISTEN_ADDR``'s port
(urllib: the slim image has no curl); exit 0 on 200, 1 otherwise.
"""

from __future__ import annotations

import math
import os
import pathlib
import sys
import urllib.request

CGROUP = pathlib.Path("/sys/fs/cgroup")


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_quota(root: pathlib.Path = CGROUP) -> float | None:
    """The cgroup CPU limit in CPUs (``1.5``), or ``None`` when there is none."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            quota, period = int(parts[0]), int(parts[1])
            if quota > 0 and period > 0:
                return quota / period
        return None
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        quota_text = _read(v1 / "cpu.cfs_quota_us")
        period_text = _read(v1 / "cpu.cfs_period_us")
        if quota_text is not None and period_text is not None:
            quota, period = int(quota_text), int(period_text)
            if quota > 0 and period > 0:
                return quota / period
            return None
    return None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(root: pathlib.Path = CGROUP) -> int:
    quota = cpu_quota(root)
    cpus = available_cpus()
    if quota is None:
        return max(1, cpus)
    return max(1, min(cpus, math.floor(quota)))


def healthcheck(environ: dict[str, str] | os._Environ[str]) -> int:
    listen = environ.get("LISTEN_ADDR", ":8080")
    port = listen.rsplit(":", 1)[-1] or "8080"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--healthcheck"]:
        return healthcheck(os.environ)
    if not os.environ.get("WORKERS"):
        os.environ["WORKERS"] = str(default_workers())
    os.execvp("harbor-router", ["harbor-router", *argv])
    return 127  # not reached: execvp replaces the process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
