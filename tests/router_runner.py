"""Runs the router in-process on its own uvloop thread, for tests that drive it over HTTP."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import uvloop
from support_tools import free_port

from harbor_router.config import Config, load_config
from harbor_router.server import App

T = TypeVar("T")


class RunningRouter:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = App(config)
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def start(self, *, wait_ready: bool = True, timeout: float = 15.0) -> RunningRouter:
        self._thread.start()
        self.call(self.app.start())
        self.port = self.app.port
        if wait_ready:
            assert self.app.discovery is not None
            discovery = self.app.discovery
            deadline = time.monotonic() + timeout
            while not discovery.projects and time.monotonic() < deadline:
                time.sleep(0.02)
            assert discovery.projects, f"no project discovered: {discovery.last_error}"
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.app.metrics_port}"

    def scrape(self, path: str = "/metrics", method: str = "GET") -> tuple[int, bytes]:
        """One request to the metrics port."""
        conn = http.client.HTTPConnection("127.0.0.1", self.app.metrics_port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 15.0,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def raw(self, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
        """Send raw bytes; return everything the router answered until it closed (or timeout)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close:
                    break
            return b"".join(chunks)

    def close(self) -> None:
        try:
            self.call(self.app.close(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()


def router_config(harbor_url: str, username: str, password: str, port: int, **env: str) -> Config:
    base = {
        "HARBOR_URL": harbor_url,
        "HARBOR_USERNAME": username,
        "HARBOR_PASSWORD": password,
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "AUTH_MODE": "none",
        "LOG_LEVEL": "warning",
    }
    base.update(env)
    return load_config(base)
