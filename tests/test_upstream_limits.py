"""Limits towards Harbor: a body Harbor stops sending (UPSTREAM_READ_TIMEOUT) and the number of
connections open to it (MAX_UPSTREAM_CONNECTIONS).

Harbor here is the emulator over the real registry; its ``stall`` fault sends part of a body
and then nothing, the connection kept open, for a given time.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import Seeded, SeedImage
from harbor_emulator import HarborEmulator
from router_runner import RunningRouter

PREFIX = "/v2/proxy"


def _big(seeded: Seeded) -> tuple[SeedImage, str]:
    image = seeded.get("dockerhub", "library/big")
    layer = max(image.layers, key=lambda digest: image.blob_sizes[digest])
    return image, layer


def _map(router: RunningRouter, image: SeedImage) -> None:
    path = f"{PREFIX}/{image.repo}/manifests/{image.tag}"
    status, _, body = router.request("GET", path, {"Accept": image.media_type})
    assert status == 200, body[:300]


def _pull(router: RunningRouter, path: str, timeout: float) -> tuple[bytes, int, bytes, float]:
    """GET on a raw socket until the router closes it: head, Content-Length, body, seconds."""
    started = time.monotonic()
    data = b""
    with socket.create_connection(("127.0.0.1", router.port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = _length(head)
                if len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return head, _length(head), body, time.monotonic() - started


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return -1


@pytest.mark.parametrize("mode", ["splice", "copy", "miss"])
def test_a_blob_harbor_stops_sending_is_cut_off_after_upstream_read_timeout(
    mode: str,
    make_router: Callable[..., RunningRouter],
    harbor: HarborEmulator,
    seeded: Seeded,
) -> None:
    """Harbor sends 200 KB of a 4 MiB blob and then nothing for 8 s: with
    UPSTREAM_READ_TIMEOUT=1s the client has a short body and a closed connection after about a
    second (not 8, not never), the failure is counted, and the next pull is whole."""
    router = make_router(UPSTREAM_READ_TIMEOUT="1s", CIRCUIT_BREAKER_THRESHOLD="5")
    image, layer = _big(seeded)
    if mode != "miss":
        _map(router, image)
    if mode == "copy":
        assert router.app.forwarder is not None
        router.app.forwarder.splice_min_bytes = None
    path = f"{PREFIX}/{image.repo}/blobs/{layer}"
    harbor.set_fault("dockerhub", truncate=200_000, stall=8.0)  # HEADs have no body to stall
    head, length, body, seconds = _pull(router, path, timeout=15)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert length == image.blob_sizes[layer]
    assert 200_000 <= len(body) < length, "cut off: never padded, never completed"
    assert 0.9 <= seconds < 6.0, f"cut off after {seconds:.1f}s"
    if mode != "miss":  # the fan-out's stream is aiohttp's: its read timeout, not our counter
        assert router.app.metrics.connection_errors.get("read_timeout") == 1
    harbor.clear_faults()
    head, length, body, _ = _pull(router, path, timeout=15)
    assert head.startswith(b"HTTP/1.1 200") and len(body) == length
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layer


def test_a_slow_harbor_within_the_read_timeout_is_waited_for(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """A pause shorter than UPSTREAM_READ_TIMEOUT is only a pause."""
    router = make_router(UPSTREAM_READ_TIMEOUT="3s")
    image, layer = _big(seeded)
    _map(router, image)
    harbor.set_fault("dockerhub", truncate=200_000, stall=1.0, times=1)
    head, length, body, seconds = _pull(router, f"{PREFIX}/{image.repo}/blobs/{layer}", 15)
    assert head.startswith(b"HTTP/1.1 200") and len(body) == length
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layer
    assert seconds >= 1.0
    assert "read_timeout" not in router.app.metrics.connection_errors


@pytest.mark.parametrize(
    "env",
    [{"RESOLVER_TIMEOUT": "1s"}, {"RESOLVER_TIMEOUT": "10s", "UPSTREAM_READ_TIMEOUT": "1s"}],
    ids=["resolver-timeout", "read-timeout"],
)
def test_a_fan_out_answer_whose_body_stalls_is_a_timeout(
    env: dict[str, str],
    make_router: Callable[..., RunningRouter],
    harbor: HarborEmulator,
    seeded: Seeded,
) -> None:
    """The only project with the manifest sends a few bytes of it, then nothing for 8 s: the
    fan-out gives it up after RESOLVER_TIMEOUT (its head and body together), or after a shorter
    UPSTREAM_READ_TIMEOUT of silence, and names it as timed out: a 502, never a 404."""
    router = make_router(**env)
    image = seeded.get("quay", "coreos/etcd")
    harbor.set_fault("quay", truncate=10, stall=8.0)
    started = time.monotonic()
    status, _, body = router.request(
        "GET",
        f"{PREFIX}/{image.repo}/manifests/{image.tag}",
        {"Accept": image.media_type},
        timeout=15,
    )
    seconds = time.monotonic() - started
    assert status == 502, body[:300]
    detail = json.loads(body)["errors"][0]["detail"]
    assert detail["quay"].startswith("timeout after"), detail
    assert detail["ghcr"] == detail["dockerhub"] == "404", detail
    assert 0.9 <= seconds < 4.0, f"given up after {seconds:.1f}s"
    assert router.app.metrics.connection_errors.get("timeout") == 1
    harbor.clear_faults()
    status, headers, _ = router.request(
        "GET", f"{PREFIX}/{image.repo}/manifests/{image.tag}", {"Accept": image.media_type}
    )
    assert status == 200
    assert headers["Docker-Content-Digest"] == image.digest


def test_a_fan_out_answer_that_arrives_in_pieces_is_relayed_whole(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """The manifest's first bytes, a pause well within the limits, then the rest: the client
    gets all of it, the bytes its digest names."""
    router = make_router()
    image = seeded.get("quay", "coreos/etcd")
    harbor.set_fault("quay", truncate=10, stall=0.3, times=1)
    status, headers, body = router.request(
        "GET", f"{PREFIX}/{image.repo}/manifests/{image.tag}", {"Accept": image.media_type}
    )
    assert status == 200, body[:300]
    assert "sha256:" + hashlib.sha256(body).hexdigest() == image.digest
    assert int(headers["Content-Length"]) == len(body)


def test_connections_to_harbor_are_capped(
    make_router: Callable[..., RunningRouter], harbor: HarborEmulator, seeded: Seeded
) -> None:
    """MAX_UPSTREAM_CONNECTIONS=2 with two blob downloads held open by a stalling Harbor: a
    third request that needs a connection waits, then gets a fast 503 (the router's own limit,
    not counted against the project), and is served once the downloads are done."""
    router = make_router(
        MAX_UPSTREAM_CONNECTIONS="2",
        RESOLVER_TIMEOUT="1s",
        UPSTREAM_READ_TIMEOUT="30s",
        CIRCUIT_BREAKER_THRESHOLD="1",
    )
    image, layer = _big(seeded)
    _map(router, image)
    path = f"{PREFIX}/{image.repo}/blobs/{layer}"
    harbor.set_fault("dockerhub", truncate=100_000, stall=3.0, times=2)
    with ThreadPoolExecutor(2) as pool:
        downloads = [pool.submit(_pull, router, path, 20) for _ in range(2)]
        time.sleep(0.8)  # both are inside their stall, each holding a connection
        started = time.monotonic()
        status, headers, body = router.request(
            "GET", f"{PREFIX}/{image.repo}/manifests/{image.tag}", {"Accept": image.media_type}
        )
        waited = time.monotonic() - started
        assert status == 503, body[:300]
        assert b"MAX_UPSTREAM_CONNECTIONS" in body
        assert headers.get("retry-after") == "1"
        assert 0.5 <= waited < 3.0
        for download in downloads:
            head, length, data, _ = download.result(30)
            assert head.startswith(b"HTTP/1.1 200") and len(data) == length
    assert router.app.metrics.connection_errors.get("pool_full") == 1
    assert router.app.breakers is not None
    assert router.app.breakers.get("dockerhub").state == "closed", "not Harbor's failure"
    status, _, _ = router.request(
        "GET", f"{PREFIX}/{image.repo}/manifests/{image.tag}", {"Accept": image.media_type}
    )
    assert status == 200
