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


def _terminate(proc: subprocess.Popen[bytes]) -> bytes:
    """SIGTERM; the process must exit 0. Its stderr."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    return proc.communicate(timeout=5)[1]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def _environment(harbor: HarborEmulator, port: int, **more: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HARBOR_URL": harbor.url,
        "HARBOR_USERNAME": harbor.username,
        "HARBOR_PASSWORD": harbor.password,
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        **more,
    }


@pytest.mark.parametrize("workers", ["1", "2"])
def test_process_serves_and_stops_on_sigterm(harbor: HarborEmulator, seeded, workers: str) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harbor_router"],
        env=_environment(harbor, port, WORKERS=workers, LOG_FORMAT="json"),
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
        err = _terminate(proc)
    finally:
        _kill(proc)
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


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def _start_batch() -> None:
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
@pytest.mark.parametrize(
    ("started", "setting", "expected"),
    [
        ("other", None, "SCHED_OTHER"),  # the default, inherit, keeps what it was started with
        ("batch", "inherit", "SCHED_BATCH"),
        ("other", "batch", "SCHED_BATCH"),
        ("batch", "other", "SCHED_OTHER"),
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sched_policy_is_set_in_every_serving_process(  # type: ignore[no-untyped-def]
    harbor: HarborEmulator, seeded, workers: str, started: str, setting: str | None, expected: str
) -> None:
    port = free_port()
    env = _environment(harbor, port, WORKERS=workers, AUTH_MODE="none")
    if setting is not None:
        env["SCHED_POLICY"] = setting
    proc = subprocess.Popen(
        [sys.executable, "-m", "harbor_router"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_start_batch if started == "batch" else None,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        serving = _children(proc.pid) if workers == "2" else [proc.pid]
        assert len(serving) == int(workers)
        for pid in serving:
            assert os.sched_getscheduler(pid) == getattr(os, expected), pid
        if workers == "2":  # the parent only sums metrics: it keeps the policy it started with
            assert os.sched_getscheduler(proc.pid) == getattr(os, f"SCHED_{started.upper()}")
        image = seeded.get("ghcr", "acme/tool")
        status, body = _get(
            f"{url}/v2/proxy/acme/tool/manifests/{image.tag}", {"Accept": image.media_type}
        )
        assert status == 200 and body == image.manifest
        err = _terminate(proc)
    finally:
        _kill(proc)
    assert b"cannot set the scheduling policy" not in err
