"""The console entry point as a user runs it: a process, its port, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from harbor_emulator import HarborEmulator
from support_tools import free_port

pytestmark = pytest.mark.integration


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "router exited early"
        try:
            if _get(url + "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("router never became ready")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_process_serves_and_stops_on_sigterm(harbor: HarborEmulator, seeded, workers: str) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HARBOR_URL": harbor.url,
        "HARBOR_USERNAME": harbor.username,
        "HARBOR_PASSWORD": harbor.password,
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "WORKERS": workers,
        "LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "harbor_router"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        image = seeded.get("ghcr", "acme/tool")
        for _ in range(4):  # with two workers the kernel spreads connections over both
            status, body = _get(
                f"{url}/v2/proxy/acme/tool/manifests/{image.tag}",
                {"Accept": image.media_type, "Authorization": "Bearer t"},
            )
            assert status == 200 and body == image.manifest
        status, _ = _get(f"{url}/v2/proxy/acme/tool/manifests/{image.tag}")
        assert status == 401  # AUTH_MODE defaults to header
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    log = err.decode()
    assert '"msg": "harbor-router' in log  # json log lines
    assert harbor.password not in log


def test_listen_failure_exits_non_zero(harbor: HarborEmulator) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HARBOR_URL": harbor.url,
            "LISTEN_ADDR": f"127.0.0.1:{taken.getsockname()[1]}",  # in use: bind fails
        }
        proc = subprocess.run(
            [sys.executable, "-m", "harbor_router"],
            env=env,
            capture_output=True,
            timeout=20,
        )
    assert proc.returncode == 1
    assert b"cannot listen" in proc.stderr
