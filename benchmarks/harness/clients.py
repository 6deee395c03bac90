"""Load generators: wrk (saturation), a fixed-rate generator (latency), a sequential client
(cold misses) and a blob reader (throughput). All of them talk to 127.0.0.1 only, and every
wait is bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .system import Pinning

ACCEPT = "application/vnd.oci.image.manifest.v1+json"
MiB = 1024 * 1024

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unknown wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str,
    *,
    duration: float,
    connections: int,
    pinning: Pinning,
    script: Path | None = None,
) -> dict[str, float]:
    """One ``wrk -t1 --latency`` run (``script``: a Lua script, ``wrk -s``); raises on socket
    errors or non-2xx answers."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-H"]
    cmd += [f"Accept: {ACCEPT}"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    out = subprocess.run(
        pinning.wrap(cmd, role="load"),
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors from {url}:\n{out}")
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if done is None or int(done.group(1)) == 0:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    result: dict[str, float] = {
        "requests": int(done.group(1)),
        "seconds": _ms(done.group(2) + done.group(3)) / 1e3,
    }
    result["rps"] = result["requests"] / result["seconds"]
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.MULTILINE):
        result[f"p{pct}_ms"] = _ms(value)
    return result


# ---------------------------------------------------------------------------------------------
# A blocking keep-alive client (cold misses, warm-up checks)


class Client:
    """HTTP/1.1 over one keep-alive socket; bodies framed by Content-Length only."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        self.buf += data

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        fields = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304):
            return status, fields, b""
        if "content-length" not in fields:
            raise RuntimeError(f"{method} {path}: no Content-Length in {head!r}")
        length = int(fields["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, fields, body


def sequential_latencies(port: int, paths: list[str], deadline: float) -> list[float]:
    """GET each path in turn on one connection; milliseconds per request, all must be 200."""
    out = []
    with Client(port) as client:
        for path in paths:
            if time.monotonic() > deadline:
                raise TimeoutError("sequential run over its time budget")
            started = time.perf_counter()
            status, _, body = client.request("GET", path, {"Accept": ACCEPT})
            out.append((time.perf_counter() - started) * 1e3)
            if status != 200 or not body:
                raise RuntimeError(f"GET {path} on port {port}: {status}")
    return out


# ---------------------------------------------------------------------------------------------
# Blob throughput


def pull_blob(
    port: int, path: str, size: int, sample_rss: Callable[[], int]
) -> tuple[float, int, int]:
    """One GET of the blob into a reused buffer; returns (seconds, RSS before, peak RSS)."""
    buffer = bytearray(4 * MiB)
    view = memoryview(buffer)
    before = sample_rss()
    peak = [before]
    done = threading.Event()

    def sampler() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], sample_rss())

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
            started = time.perf_counter()
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError(f"no response head: {head!r}")
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or b"%d" % size not in head:
                raise RuntimeError(f"unexpected blob response: {head[:300]!r}")
            received = len(rest)
            deadline = time.monotonic() + 300
            while received < size:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"blob: {received} of {size} bytes after 300 s")
                n = sock.recv_into(view)
                if not n:
                    raise RuntimeError(f"closed after {received} of {size} bytes")
                received += n
            elapsed = time.perf_counter() - started
    finally:
        done.set()
        thread.join(2)
    peak[0] = max(peak[0], sample_rss())
    return elapsed, before, peak[0]


# ---------------------------------------------------------------------------------------------
# Fixed-rate load (open loop): latency at a moderate rate, measured from the scheduled time


async def _fixed_rate(
    port: int, path: str, rate: float, seconds: float
) -> tuple[list[float], int, float]:
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: {ACCEPT}\r\n\r\n".encode()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []
    latencies: list[float] = []
    errors = 0

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opened.append(writer)
        return reader, writer

    async def one(scheduled: float) -> None:
        nonlocal errors
        conn = idle.pop() if idle else await connect()
        reader, writer = conn
        sent = max(scheduled, time.perf_counter())  # the generator's own lag is not counted
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, AttributeError):
            errors += 1
            return
        latencies.append((time.perf_counter() - sent) * 1e3)
        if head.startswith(b"HTTP/1.1 200"):
            idle.append(conn)
        else:
            errors += 1

    for _ in range(8):  # a few warm connections, as a client pool would have
        idle.append(await connect())
    count = int(rate * seconds)
    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    achieved = count / max(time.perf_counter() - start, 1e-9)
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)
    finally:
        for writer in opened:
            writer.close()
    return latencies, errors, achieved


def _runner() -> Callable[..., Any]:
    runner: Callable[..., Any] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    return runner


def fixed_rate(port: int, path: str, rate: float, seconds: float) -> tuple[list[float], int, float]:
    """Per-request latencies (ms, from the send), errors, achieved rate. Open loop: a request
    whose time has come goes out at once, on a new connection if every open one is busy."""
    result: tuple[list[float], int, float] = _runner()(_fixed_rate(port, path, rate, seconds))
    return result


# ---------------------------------------------------------------------------------------------
# Closed-loop HEAD load. Debian's wrk 4.1.0 cannot do HEAD: its parser waits for the body that
# Content-Length announces (every request ends as a read error), so a ``-s`` script with
# ``wrk.method = "HEAD"`` measures nothing. This is the same shape as ``wrk -t1 -cN``: N
# keep-alive connections, each sending its next request as soon as the last answer is in.


class _HeadConn(asyncio.Protocol):
    def __init__(self, request: bytes, state: _HeadState) -> None:
        self.request = request
        self.state = state
        self.buf = b""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.state.deadline:
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, self.buf = self.buf[:end], self.buf[end + 4 :]
        if head.startswith(b"HTTP/1.1 200"):
            self.state.latencies.append((time.perf_counter() - self.sent) * 1e3)
        else:
            self.state.errors += 1
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.open -= 1
        if self.state.open == 0 and not self.state.done.done():
            self.state.done.set_result(None)


class _HeadState:
    def __init__(self, deadline: float, connections: int) -> None:
        self.deadline = deadline
        self.open = connections
        self.latencies: list[float] = []
        self.errors = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


async def _head_load(port: int, path: str, connections: int, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    request = f"HEAD {path} HTTP/1.1\r\nHost: bench\r\nAccept: {ACCEPT}\r\n\r\n".encode()
    started = time.perf_counter()
    state = _HeadState(started + seconds, connections)
    for _ in range(connections):
        await loop.create_connection(lambda: _HeadConn(request, state), "127.0.0.1", port)
    await asyncio.wait_for(state.done, timeout=seconds + 15)
    elapsed = time.perf_counter() - started
    if state.errors or not state.latencies:
        raise RuntimeError(f"HEAD {path} on port {port}: {state.errors} errors")
    return {
        "requests": len(state.latencies),
        "seconds": elapsed,
        "rps": len(state.latencies) / elapsed,
        **{f"p{p}_ms": percentile(state.latencies, p) for p in (50, 75, 90, 99)},
    }


def head_load(port: int, path: str, *, connections: int, duration: float) -> dict[str, float]:
    """Like :func:`run_wrk` for HEAD (same result keys)."""
    result: dict[str, float] = _runner()(_head_load(port, path, connections, duration))
    return result


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]
