"""Processes and the machine: CPU pinning, per-process CPU time and RSS, clean shutdown."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the proxy under test gets, and which the load (wrk, upstream, this process)."""

    proxy: str  # taskset list, "" = no pinning
    load: str
    note: str

    def wrap(self, cmd: Sequence[str], *, role: str) -> list[str]:
        cpus = self.proxy if role == "proxy" else self.load
        return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)

    def pin_self(self) -> None:
        if self.load:
            os.sched_setaffinity(0, _cpu_list(self.load))


def _cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def plan_pinning() -> Pinning:
    """Proxy on the first usable CPU, everything else on the rest; no pinning with one CPU."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return Pinning("", "", f"1 usable CPU ({os.cpu_count()} online): no pinning, all share it")
    if not _which("taskset"):
        return Pinning("", "", "taskset not installed: no pinning")
    rest = ",".join(str(c) for c in usable[1:])
    return Pinning(str(usable[0]), rest, f"proxy on CPU {usable[0]}, load on CPU {rest}")


def _which(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (scans /proc; nginx workers, router workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_times(pids: Iterable[int]) -> tuple[float, float]:
    """(utime, stime) seconds (all threads) summed over ``pids``; a vanished process counts 0."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / TICKS, system / TICKS


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime (all threads) summed over ``pids``; a vanished process counts 0."""
    return sum(cpu_times(pids))


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident set size summed over ``pids``."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:port; fails if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout}s") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal ``proc`` (the leader of its own session, started by this harness) and reap it;
    SIGKILL its process group if it does not exit in time, and end whatever else is left in
    that group. Never touches processes this harness did not start."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Anything left in its process group (a worker that outlived its parent) goes too.
    for group_signal in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, group_signal)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def machine_info() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except OSError:
            return "missing"
        return (out.stdout + out.stderr).strip().splitlines()[0] if out.stdout + out.stderr else ""

    import aiohttp

    info: dict[str, object] = {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "mem_total_mib": os.sysconf("SC_PHYS_PAGES") * PAGE // (1024 * 1024),
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "aiohttp": aiohttp.__version__,
    }
    with contextlib.suppress(ImportError):
        import uvloop

        info["uvloop"] = uvloop.__version__
    return info


def git_info(root: Path) -> dict[str, object]:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
        except OSError:
            return ""
        return out.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
