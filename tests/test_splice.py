"""Zero-copy blob relay (``os.splice``) against real loopback sockets, beside the copy path.

The upstream is a scripted HTTP/1.1 server on plain threads so each test decides exactly what
goes into each ``send``: the head with the first body bytes, a body cut short, a byte count
that shows whether the router stopped reading. Most cases run twice, ``splice`` and ``copy``
(``Forwarder.splice_min_bytes = None``), and the splice runs assert that the splice path was
taken (``Forwarder.splice_stats``), so a silent fallback to copying would fail them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import random
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import uvloop
from conftest import Seeded
from router_runner import RunningRouter, router_config
from support_tools import LoopbackServer, free_port, kernel_tcp_buffering, request_heads

from harbor_router import splice
from harbor_router.relay import SPLICE_MIN_BYTES
from harbor_router.splice import Splice, SpliceStats, unsent

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="os.splice is Linux-only")

MiB = 1024 * 1024
# A prime-sized random block: a lost, doubled or reordered stretch changes the digest.
_BLOCK = random.Random(4).randbytes(1_000_003)


def body_of(size: int) -> bytes:
    return (_BLOCK * (size // len(_BLOCK) + 1))[:size]


def digest_of(n: int) -> str:
    return "sha256:" + f"{n:064x}"


@dataclass
class Blob:
    size: int
    first: int = 0  # body bytes sent in the same send() as the head
    cut_at: int | None = None  # close the connection after this many body bytes
    chunk: int = 256 * 1024
    body: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.body = body_of(self.size)


class ScriptedHarbor:
    """One docker-hub proxy project and a table of blobs; records who asked what, on which
    connection, and how many body bytes went into the sockets."""

    def __init__(self) -> None:
        self.blobs: dict[str, Blob] = {}
        self.sent = 0
        self.blob_gets: list[int] = []  # connection number of each blob GET
        self.connections = 0
        self.closed_early: list[int] = []  # connections whose client vanished mid-body
        self._lock = threading.Lock()
        self._server = LoopbackServer(self._serve)
        self.port = self._server.port

    def start(self) -> ScriptedHarbor:
        self._server.start()
        return self

    def close(self) -> None:
        self._server.close()

    def add(self, blob: Blob) -> str:
        digest = digest_of(len(self.blobs) + 1)
        self.blobs[digest] = blob
        return digest

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            number = self.connections
        sock.settimeout(30)
        try:
            for head in request_heads(sock):
                method, target = head.split(b" ", 2)[:2]
                if not self._answer(sock, number, method, target.decode()):
                    return
        except OSError:
            with self._lock:
                self.closed_early.append(number)
        finally:
            sock.close()

    def _answer(self, sock: socket.socket, number: int, method: bytes, target: str) -> bool:
        if target.startswith("/api/v2.0/projects?"):
            body = json.dumps([{"project_id": 1, "name": "hub", "registry_id": 1}]).encode()
            sock.sendall(self._head(200, len(body), b"application/json") + body)
            return True
        if target.endswith("/summary"):
            body = b'{"registry": {"type": "docker-hub"}}'
            sock.sendall(self._head(200, len(body), b"application/json") + body)
            return True
        blob = self.blobs.get(target.rsplit("/", 1)[-1]) if "/blobs/" in target else None
        if blob is None:
            sock.sendall(self._head(404, 0, b"application/json"))
            return True
        head = self._head(200, blob.size, b"application/octet-stream")
        if method == b"HEAD":
            sock.sendall(head)
            return True
        with self._lock:
            self.blob_gets.append(number)
        end = blob.size if blob.cut_at is None else blob.cut_at
        sock.sendall(head + blob.body[: blob.first])
        self.sent += blob.first
        view = memoryview(blob.body)
        for offset in range(blob.first, end, blob.chunk):
            piece = view[offset : min(offset + blob.chunk, end)]
            sock.sendall(piece)
            self.sent += len(piece)
        return blob.cut_at is None

    @staticmethod
    def _head(status: int, length: int, content_type: bytes) -> bytes:
        reason = b"OK" if status == 200 else b"Not Found"
        return b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n\r\n" % (
            status,
            reason,
            content_type,
            length,
        )


@pytest.fixture
def upstream() -> Iterator[ScriptedHarbor]:
    server = ScriptedHarbor().start()
    yield server
    server.close()


@pytest.fixture(params=["splice", "copy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def splice_router(upstream: ScriptedHarbor) -> Iterator[Callable[[str], RunningRouter]]:
    started: list[RunningRouter] = []

    def make(mode: str) -> RunningRouter:
        config = router_config(f"http://127.0.0.1:{upstream.port}", "robot$x", "pw", free_port())
        router = RunningRouter(config).start()
        started.append(router)
        assert router.app.forwarder is not None
        if mode == "copy":
            router.app.forwarder.splice_min_bytes = None
        return router

    yield make
    for router in started:
        router.close()


def stats(router: RunningRouter) -> SpliceStats:
    assert router.app.forwarder is not None
    return router.app.forwarder.splice_stats


def settled(router: RunningRouter, responses: int) -> bool:
    """The splice counters are bumped by the router's completion callback, which may run just
    after the client read the last byte: wait (bounded) for the expected count."""
    wait_for(lambda: stats(router).responses >= responses, timeout=5)
    return stats(router).responses == responses


def connect(router: RunningRouter, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return sock


def get(digest: str) -> bytes:
    return f"GET /v2/proxy/big/blobs/{digest} HTTP/1.1\r\nHost: r\r\n\r\n".encode()


class Reader:
    """Reads HTTP/1.1 responses with a Content-Length off one client socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, f"connection closed before a response head: {self.buffer[:200]!r}"
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def body(self, length: int) -> tuple[str, int]:
        """sha256 and byte count of the next ``length`` bytes (fewer if the router closes)."""
        digest = hashlib.sha256()
        take = self.buffer[:length]
        self.buffer = self.buffer[length:]
        digest.update(take)
        received = len(take)
        while received < length:
            data = self.sock.recv(min(4 * MiB, length - received))
            if not data:
                break
            digest.update(data)
            received += len(data)
        return digest.hexdigest(), received

    def response(self) -> tuple[int, str, int]:
        status, headers = self.head()
        sha, received = self.body(int(headers["content-length"]))
        return status, sha, received


def sha(blob: Blob) -> str:
    return hashlib.sha256(blob.body).hexdigest()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# byte-exact, both paths


@pytest.mark.parametrize("size,first", [(8 * MiB, 0), (48 * MiB, 0), (24 * MiB, 200 * 1024 + 7)])
def test_large_body_is_byte_exact(
    splice_router: Callable[[str], RunningRouter],
    upstream: ScriptedHarbor,
    mode: str,
    size: int,
    first: int,
) -> None:
    blob = Blob(size, first=first)
    digest = upstream.add(blob)
    router = splice_router(mode)
    with connect(router) as sock:
        sock.sendall(get(digest))
        status, body_sha, received = Reader(sock).response()
    assert (status, received, body_sha) == (200, size, sha(blob))
    spliced = stats(router)
    if mode == "splice":
        assert spliced.responses == 1 and spliced.fallbacks == 0
        # Only what came in the head's read (uvloop reads ≤ 256 KiB) went by the copy path.
        assert size - 256 * 1024 <= spliced.bytes <= size
    else:
        assert spliced.responses == 0 and spliced.bytes == 0


def test_head_and_first_bytes_in_one_send(
    splice_router: Callable[[str], RunningRouter], upstream: ScriptedHarbor
) -> None:
    """The head's read also carries body bytes: they reach the client first, in order."""
    blob = Blob(8 * MiB, first=100 * 1024 + 1, chunk=MiB)
    digest = upstream.add(blob)
    router = splice_router("splice")
    with connect(router) as sock:
        sock.sendall(get(digest))
        reader = Reader(sock)
        status, headers = reader.head()
        first = reader.body(blob.first)
        rest = reader.body(blob.size - blob.first)
    assert status == 200 and headers["content-length"] == str(blob.size)
    assert first == (hashlib.sha256(blob.body[: blob.first]).hexdigest(), blob.first)
    assert rest == (hashlib.sha256(blob.body[blob.first :]).hexdigest(), blob.size - blob.first)
    assert settled(router, 1)
    assert stats(router).bytes < blob.size  # some bytes were not spliced: the early ones


def test_small_body_and_head_are_copied(
    splice_router: Callable[[str], RunningRouter], upstream: ScriptedHarbor
) -> None:
    small = Blob(SPLICE_MIN_BYTES - 1)
    big = Blob(4 * MiB)
    small_digest, big_digest = upstream.add(small), upstream.add(big)
    router = splice_router("splice")
    with connect(router) as sock:
        reader = Reader(sock)
        sock.sendall(get(small_digest))
        assert reader.response() == (200, sha(small), small.size)
        sock.sendall(get(big_digest).replace(b"GET", b"HEAD", 1))
        status, headers = reader.head()
        assert status == 200 and headers["content-length"] == str(big.size)
        sock.sendall(get(big_digest))
        assert reader.response() == (200, sha(big), big.size)
    assert settled(router, 1)  # only the big GET


# back-pressure


def test_stalled_client_stalls_upstream(
    splice_router: Callable[[str], RunningRouter], upstream: ScriptedHarbor, mode: str
) -> None:
    bound = kernel_tcp_buffering(extra=MiB + 256 * 1024)  # the pipe, the client's rcvbuf
    blob = Blob(max(48 * MiB, bound + 16 * MiB), chunk=64 * 1024)
    digest = upstream.add(blob)
    router = splice_router(mode)
    with connect(router, rcvbuf=256 * 1024) as sock:
        sock.sendall(get(digest))
        previous, deadline = -1, time.monotonic() + 3
        while time.monotonic() < deadline and upstream.sent != previous:
            previous = upstream.sent
            time.sleep(0.3)
        stalled_at = upstream.sent
        # only what the kernel buffers (autotuned, up to tcp_rmem's max) may leave Harbor
        assert stalled_at < bound, f"router took {stalled_at} bytes from Harbor"
        status, body_sha, received = Reader(sock).response()
    assert (status, received, body_sha) == (200, blob.size, sha(blob))
    assert upstream.sent == blob.size
    assert settled(router, (1 if mode == "splice" else 0))


# failures


def test_client_disconnect_mid_body(
    splice_router: Callable[[str], RunningRouter], upstream: ScriptedHarbor, mode: str
) -> None:
    blob = Blob(48 * MiB, chunk=64 * 1024)
    digest = upstream.add(blob)
    router = splice_router(mode)
    with connect(router, rcvbuf=256 * 1024) as sock:
        sock.sendall(get(digest))
        reader = Reader(sock)
        reader.head()
        assert reader.body(2 * MiB)[1] == 2 * MiB
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    aborted = upstream.blob_gets[-1]
    # The router drops that upstream connection: Harbor's send fails, nothing is pooled.
    assert wait_for(lambda: aborted in upstream.closed_early), "upstream connection kept open"
    assert upstream.sent < blob.size
    with connect(router) as sock:  # the router is fine, and asks on a fresh connection
        sock.sendall(get(digest))
        assert Reader(sock).response() == (200, sha(blob), blob.size)
    assert upstream.blob_gets[-1] != aborted
    if mode == "splice":
        assert settled(router, 1)  # the second one


def test_upstream_short_body_closes_the_client(
    splice_router: Callable[[str], RunningRouter], upstream: ScriptedHarbor, mode: str
) -> None:
    blob = Blob(16 * MiB, cut_at=3 * MiB + 5)
    digest = upstream.add(blob)
    good = Blob(2 * MiB)
    good_digest = upstream.add(good)
    router = splice_router(mode)
    with connect(router) as sock:
        sock.sendall(get(digest))
        reader = Reader(sock)
        status, headers = reader.head()
        assert status == 200 and headers["content-length"] == str(blob.size)
        started = time.monotonic()
        _, received = reader.body(blob.size)  # returns at EOF: the router closed the client
        assert received == blob.cut_at
        assert time.monotonic() - started < 8
        sock.settimeout(2)
        assert sock.recv(1) == b""
    assert settled(router, 0)
    with connect(router) as sock:
        sock.sendall(get(good_digest))
        assert Reader(sock).response() == (200, sha(good), good.size)


# connection reuse


def test_pipelined_request_after_a_spliced_response(
    splice_router: Callable[[str], RunningRouter], upstream: ScriptedHarbor, mode: str
) -> None:
    big, other = Blob(16 * MiB, first=12345), Blob(3 * MiB)
    big_digest, other_digest = upstream.add(big), upstream.add(other)
    router = splice_router(mode)
    with connect(router) as sock:
        sock.sendall(get(big_digest) + get(other_digest) + b"GET /v2/ HTTP/1.1\r\nHost: r\r\n\r\n")
        reader = Reader(sock)
        assert reader.response() == (200, sha(big), big.size)
        assert reader.response() == (200, sha(other), other.size)
        status, _, received = reader.response()
        assert (status, received) == (200, 2)
    assert settled(router, (2 if mode == "splice" else 0))


def test_upstream_connection_is_reused_after_a_complete_splice(
    splice_router: Callable[[str], RunningRouter], upstream: ScriptedHarbor
) -> None:
    blob = Blob(8 * MiB)
    digest = upstream.add(blob)
    router = splice_router("splice")
    for _ in range(3):
        with connect(router) as sock:
            sock.sendall(get(digest))
            assert Reader(sock).response() == (200, sha(blob), blob.size)
    assert len(upstream.blob_gets) == 3
    assert len(set(upstream.blob_gets)) == 1, upstream.blob_gets  # one pooled connection
    assert settled(router, 3)
    assert router.app.pool is not None and router.app.pool.idle_count == 1


# resources


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_descriptor_leak_and_no_busy_loop(
    splice_router: Callable[[str], RunningRouter], upstream: ScriptedHarbor
) -> None:
    blob = Blob(2 * MiB, first=1000)
    short = Blob(2 * MiB, cut_at=MiB)
    digest, short_digest = upstream.add(blob), upstream.add(short)
    router = splice_router("splice")
    with connect(router) as sock:  # warm up: discovery, mapping, the pooled connection
        sock.sendall(get(digest))
        Reader(sock).response()
    before = fd_count()
    for i in range(60):
        with connect(router) as sock:
            reader = Reader(sock)
            if i % 3 == 2:  # upstream cut short
                sock.sendall(get(short_digest))
                reader.head()
                assert reader.body(short.size)[1] == MiB
            elif i % 3 == 1:  # client leaves mid-body
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sock.sendall(get(digest))
                reader.head()
                reader.body(100 * 1024)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.sendall(get(digest))
                assert reader.response() == (200, sha(blob), blob.size)
    assert stats(router).responses >= 20
    assert wait_for(lambda: fd_count() <= before + 2), (before, fd_count())
    # A descriptor closed while still in epoll would keep the loop spinning.
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.15


# runtime fallback


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


@pytest.mark.parametrize("fail", ["in", "out"])
def test_refused_splice_falls_back_to_copy(
    splice_router: Callable[[str], RunningRouter],
    upstream: ScriptedHarbor,
    monkeypatch: pytest.MonkeyPatch,
    fail: str,
) -> None:
    """A kernel that refuses splice (EINVAL) on the first move: the copy path finishes the
    response, byte-exact, including what the refused splice had already taken into the pipe."""
    real = os.splice
    refused: list[str] = []

    def refusing(src: int, dst: int, count: int, *args: object, **kwargs: object) -> int:
        if _is_pipe(dst) == (fail == "in"):
            refused.append(fail)
            raise OSError(errno.EINVAL, "refused by the test")
        return real(src, dst, count, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "splice", refusing)
    blob = Blob(8 * MiB, first=5000)
    digest = upstream.add(blob)
    router = splice_router("splice")
    with connect(router) as sock:
        sock.sendall(get(digest))
        sock.sendall(get(digest))
        reader = Reader(sock)
        assert reader.response() == (200, sha(blob), blob.size)
        assert reader.response() == (200, sha(blob), blob.size)
    assert refused
    assert (stats(router).fallbacks, stats(router).responses) == (2, 0)


async def _engine(dst_fd: int, length: int) -> tuple[str, int, bytes]:
    """Splice ``length`` bytes from a loopback socket into ``dst_fd`` on a uvloop loop."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        left = socket.create_connection(listener.getsockname(), timeout=5)
        right, _ = listener.accept()
    left.setblocking(False)
    right.setblocking(False)
    done: asyncio.Future[tuple[str, bytes]] = loop.create_future()
    await loop.sock_sendall(left, body_of(length)[: 256 * 1024])

    def finished(outcome: str, exc: OSError | None, leftover: bytes) -> None:
        done.set_result((outcome, leftover))

    job = Splice(loop, right.fileno(), dst_fd, length, finished)
    job.start()
    try:
        outcome, leftover = await asyncio.wait_for(done, 5)
    finally:
        left.close()
        right.close()
    return outcome, job.moved, leftover


def test_kernel_refusal_reports_unsupported_with_leftover() -> None:
    """A real EINVAL: an eventfd has no splice support, so the pipe cannot be emptied into it;
    what the splice had taken from the socket comes back as ``leftover``."""
    target = os.eventfd(0)
    try:
        outcome, moved, leftover = uvloop.run(_engine(target, 200 * 1024))
    finally:
        os.close(target)
    assert (outcome, moved) == (splice.UNSUPPORTED, 0)
    assert leftover and leftover == body_of(200 * 1024)[: len(leftover)]


@pytest.mark.integration
def test_emulator_layer_is_spliced(
    make_router: Callable[..., RunningRouter], seeded: Seeded
) -> None:
    """The real stack: a 4 MiB layer from the distribution registry behind the emulator, a
    mapped repository (manifest first), and the blob relayed by splice, byte-exact."""
    image = seeded.get("dockerhub", "library/big")
    layer = image.layers[0]
    assert image.blob_sizes[layer] >= SPLICE_MIN_BYTES
    router = make_router()
    status, _, _ = router.request(
        "GET",
        f"/v2/proxy/{image.repo}/manifests/{image.tag}",
        {"Accept": image.media_type},
    )
    assert status == 200
    status, _, body = router.request("GET", f"/v2/proxy/{image.repo}/blobs/{layer}")
    assert status == 200 and len(body) == image.blob_sizes[layer]
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layer
    assert settled(router, 1)  # counted once the router's completion callback ran
    spliced = stats(router)
    assert 0 < spliced.bytes <= len(body)


def test_unsent_counts_what_the_peer_has_not_acknowledged() -> None:
    """``unsent`` (CLIENT_SEND_TIMEOUT's measure of a client's progress): 0 once the peer
    acknowledged everything, the queued bytes while its receive buffer is full, -1 for what
    is not a TCP socket."""
    assert unsent(-1) == -1
    r, w = os.pipe()
    try:
        assert unsent(r) == -1 and unsent(w) == -1
    finally:
        os.close(r)
        os.close(w)
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
        with sender, receiver:
            sender.sendall(b"x" * 1000)
            assert receiver.recv(1000, socket.MSG_WAITALL) == b"x" * 1000
            deadline = time.monotonic() + 5
            while unsent(sender.fileno()) != 0:  # the acknowledgement is on its way
                assert time.monotonic() < deadline
                time.sleep(0.01)
            sender.setblocking(False)
            queued = 0
            with contextlib.suppress(BlockingIOError):
                while True:
                    queued += sender.send(b"y" * 65536)
            time.sleep(0.1)
            left = unsent(sender.fileno())
            assert 0 < left <= queued  # the receiver reads nothing: most of it waits
            got = 0
            while got < queued:  # the receiver takes it all: every byte is acknowledged
                got += len(receiver.recv(1 << 20))
            while unsent(sender.fileno()) != 0:
                assert time.monotonic() < deadline + 5
                time.sleep(0.01)


def test_the_last_bytes_of_a_body_go_without_splice_f_more(
    splice_router: Callable[[str], RunningRouter],
    upstream: ScriptedHarbor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SPLICE_F_MORE (MSG_MORE) on every move out of the pipe but those made once the whole
    body has left Harbor: with it, the kernel held the tail back until the next ACK, and with
    none in flight for a persist-timer probe, 200 ms (about one spliced pull in fifty)."""
    real = os.splice
    moves: list[tuple[bool, int]] = []  # (SPLICE_F_MORE given, bytes moved) out of the pipe

    def recording(src: int, dst: int, count: int, *, flags: int = 0) -> int:
        n = real(src, dst, count, flags=flags)  # the relay passes only flags
        if n > 0 and _is_pipe(src):
            moves.append((bool(flags & os.SPLICE_F_MORE), n))
        return n

    monkeypatch.setattr(os, "splice", recording)
    blob = Blob(8 * MiB, first=5000)
    digest = upstream.add(blob)
    router = splice_router("splice")
    with connect(router) as sock:
        sock.sendall(get(digest))
        assert Reader(sock).response() == (200, sha(blob), blob.size)
    assert stats(router).responses == 1
    spliced = sum(n for _, n in moves)  # all but what came with the head (one read at most)
    assert blob.size - 256 * 1024 <= spliced < blob.size
    assert not moves[-1][0], moves[-4:]  # the tail: pushed out at once
    assert any(more for more, _ in moves), "no move said more was to come"
