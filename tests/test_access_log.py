"""The access log: one line per request, off the hot path, never a credential (DESIGN §5, §7)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Seeded
from harbor_emulator import HarborEmulator
from router_runner import RunningRouter
from support_tools import free_port

from harbor_router import logs

pytestmark = pytest.mark.integration

ACCESS = "harbor_router.access"


def access_records(caplog: pytest.LogCaptureFixture, count: int) -> list[logging.LogRecord]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [r for r in caplog.records if r.name == ACCESS]
        if len(found) >= count:
            return found
        time.sleep(0.02)
    return [r for r in caplog.records if r.name == ACCESS]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    value = getattr(record, "fields", None)
    assert isinstance(value, dict)
    return value


def test_one_line_per_request_with_its_fields(
    make_router: Callable[..., RunningRouter],
    seeded: Seeded,
    harbor: HarborEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    router = make_router(AUTH_MODE="header")
    image = seeded.get("ghcr", "acme/tool")
    secret = base64.b64encode(f"{harbor.username}:{harbor.password}".encode()).decode()
    headers = {"Accept": image.media_type, "Authorization": f"Basic {secret}"}
    path = f"/v2/proxy/{image.repo}/manifests/{image.tag}"
    for _ in range(2):
        assert router.request("GET", path, headers)[0] == 200
    assert router.request("GET", "/healthz")[0] == 200
    assert router.request("GET", path)[0] == 401  # no Authorization: the challenge
    records = access_records(caplog, 4)
    assert len(records) == 4
    miss, hit, health, challenge = (fields(r) for r in records)
    assert miss["event"] == "access" and miss["cache"] == "miss" and miss["project"] == "ghcr"
    assert (miss["method"], miss["path"], miss["status"], miss["type"]) == (
        "GET", path, 200, "manifest",
    )  # fmt: skip
    assert hit["cache"] == "hit" and hit["project"] == "ghcr"
    assert hit["client"] == "127.0.0.1"
    assert hit["bytes"] > len(image.manifest)  # head and body
    assert 0 <= hit["duration_ms"] < 5000
    assert (health["type"], health["status"], health["cache"]) == ("health", 200, "")
    assert (challenge["status"], challenge["cache"]) == (401, "")
    assert all(r.levelno == logging.INFO for r in records)
    everything = "\n".join(str(r.__dict__) for r in caplog.records)
    assert secret not in everything and harbor.password not in everything


def test_access_log_off_below_info(
    make_router: Callable[..., RunningRouter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=ACCESS)
    router = make_router()
    assert router.app.access is None  # the protocol gets no buffer at all
    assert router.request("GET", "/v2/")[0] == 200
    time.sleep(logs.FLUSH_INTERVAL * 3)
    assert not [r for r in caplog.records if r.name == ACCESS]


def test_refused_request_is_logged(
    make_router: Callable[..., RunningRouter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    router = make_router()
    answer = router.raw(b"GET /v2/\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    records = access_records(caplog, 1)
    assert [fields(r)["status"] for r in records] == [400]


def test_escape_caps_and_escapes() -> None:
    assert logs.escape("/v2/proxy/a/manifests/1") == "/v2/proxy/a/manifests/1"
    assert logs.escape("/a\nb\x1b[31m\x7f\\\xff") == "/a\\x0ab\\x1b[31m\\x7f\\\\\\xff"
    long = "/" + "a" * 1000
    assert logs.escape(long) == long[:256] + "..."


def test_formatters_put_fields_in_the_line() -> None:
    record = logging.LogRecord("harbor_router.x", logging.INFO, "", 0, "hello %s", ("w",), None)
    record.fields = {"event": "breaker", "project": "quay", "to": "open", "why": "a b"}
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["msg"] == "hello w" and line["event"] == "breaker" and line["project"] == "quay"
    pretty = logs.PrettyFormatter().format(record)
    assert pretty.endswith('hello w event=breaker project=quay to=open why="a b"')


def test_json_lines_from_the_process(harbor: HarborEmulator, seeded: Seeded) -> None:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HARBOR_URL": harbor.url,
        "HARBOR_USERNAME": harbor.username,
        "HARBOR_PASSWORD": harbor.password,
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "harbor_router"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    image = seeded.get("quay", "coreos/etcd")
    secret = base64.b64encode(f"{harbor.username}:{harbor.password}".encode()).decode()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.1)
        request = urllib.request.Request(
            f"{url}/v2/proxy/{image.repo}/manifests/{image.tag}",
            headers={"Accept": image.media_type, "Authorization": f"Basic {secret}"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
        time.sleep(logs.FLUSH_INTERVAL * 4)
        proc.send_signal(signal.SIGTERM)
        _, raw = proc.communicate(timeout=15)
        assert proc.returncode == 0
        err = raw.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    lines = [json.loads(line) for line in io.StringIO(err) if line.strip()]
    access = [line for line in lines if line.get("event") == "access"]
    pulls = [line for line in access if line["type"] == "manifest"]
    assert len(pulls) == 1
    assert pulls[0]["logger"] == ACCESS and pulls[0]["status"] == 200
    assert pulls[0]["project"] == "quay" and pulls[0]["cache"] == "miss"
    assert {line["type"] for line in access} == {"health", "manifest"}
    resolves = [line for line in lines if line.get("event") == "resolve"]
    assert resolves and resolves[0]["result"] == "found" and resolves[0]["project"] == "quay"
    assert any(line.get("event") == "discovery" for line in lines)
    assert secret not in err and harbor.password not in err


@pytest.mark.parametrize("fmt", ["json", "pretty"])
def test_batched_lines_are_the_formatters_own(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flusher formats access lines itself for speed: byte for byte what the formatter
    would have written through a LogRecord."""
    stream = io.StringIO()
    logs.configure("info", fmt, stream=stream)
    try:
        access = logs.AccessLog.if_enabled()
        assert access is not None
        entry = (time.time(), "GET", "/v2/proxy/a\x01b/manifests/1", 200, "manifest", 0.0012345,
                 "127.0.0.1", "dockerhub", "hit", 489)  # fmt: skip
        access._buffer = [entry, entry]
        access.flush()
        fast = stream.getvalue()
        stream.seek(0)
        stream.truncate()
        monkeypatch.setattr(logs, "_fast_lines", lambda *args: None)
        access._buffer = [entry, entry]
        access.flush()
        assert fast == stream.getvalue()
        assert fast.count("\n") == 2 and "\\x01" in fast
    finally:
        root = logging.getLogger("harbor_router")
        root.handlers[:] = []
        root.propagate = True
        root.setLevel(logging.NOTSET)
