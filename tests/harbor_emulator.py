"""An emulator of Harbor core in front of a real distribution registry.

Theory of operation: the router only ever talks to Harbor's projects API and to Harbor's
``/v2/{project}/...`` registry front. Both are emulated here with the quirks DESIGN §3 lists
(``NOT_FOUND`` misses, HEAD on an uncached blob is 404, ``"tags": []`` for unknown repositories,
the Docker Hub ``library/`` 301, Bearer challenge built from ``Host``/``X-Forwarded-Proto``),
while content comes from a real registry that stores proxy project ``P``'s repository ``name``
as ``P/name``.

The token service (``/service/token``) behaves as Harbor's (``src/core/service/token``): users
and robot accounts (``robot$name``) with passwords, public and private projects, per-user pull
rights per project; a JWT-shaped token whose ``access`` claim lists, for every scope asked, the
actions granted (empty for a project the user may not pull from, or that does not exist).
Credentials Harbor cannot verify make the request anonymous, as Harbor's security middleware
does: 401 without a scope, an anonymous token (``sub`` empty) with one. The router's own robot
may pull everything (a system robot).

The app runs on its own event loop in a daemon thread so that sync tests, async tests and the
router (in its own loop or process) can all use it; every public method is a
thread-safe, non-blocking call guarded by one lock.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

DEFAULT_USERNAME = "robot$harbor-router"
DEFAULT_PASSWORD = "Harbor-Router-Test-Secret-1"
SERVICE = "harbor-registry"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
START_TIMEOUT = 10.0
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=30.0)
CHUNK = 64 * 1024
TRUNCATE = web.RequestKey("truncate", int)
STALL = web.RequestKey("stall", float)

# Registry types as Harbor names them (adapter "type" of a registry endpoint) and their URLs.
REGISTRY_URLS: dict[str, str] = {
    "docker-hub": "https://hub.docker.com",
    "github-ghcr": "https://ghcr.io",
    "quay": "https://quay.io",
    "docker-registry": "https://registry.example.com",
    "harbor": "https://harbor.example.com",
}

# Harbor's error codes for the statuses it produces itself (src/lib/errors/const.go).
ERROR_CODES: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    412: "PRECONDITION",
    429: "TOO_MANY_REQUEST",
}

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Date",
        "Server",
    )
)
FORWARDED_REQUEST_HEADERS = ("Accept", "Range", "If-None-Match", "If-Range", "User-Agent")

_CONTENT_RE = re.compile(
    r"^/v2/(?P<project>[^/]+)/(?P<name>.+?)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)$"
)
_TAGS_RE = re.compile(r"^/v2/(?P<project>[^/]+)/(?P<name>.+?)/tags/list$")
_SUMMARY_RE = re.compile(r"^/api/v2\.0/projects/(?P<name>[^/]+)/summary$")
_PROJECT_RE = re.compile(r"^/v2/(?P<project>[^/]+)/.+")


@dataclass(frozen=True)
class Project:
    """A Harbor project; ``registry_type`` None is a normal (non proxy-cache) project."""

    name: str
    registry_type: str | None = None

    @property
    def is_proxy(self) -> bool:
        return self.registry_type is not None


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator saw it. Header names are lower-cased; repeated headers are
    joined with ``", "``. ``project`` is set for ``/v2/{project}/...`` requests only; ``peer``
    is the client's port, which tells the connections apart."""

    project: str | None
    method: str
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    peer: int = 0


@dataclass
class Fault:
    delay: float | None = None
    status: int | None = None
    reset: bool = False
    body: bytes | str | Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    times: int | None = None  # None: until cleared; N: the next N requests only
    truncate: int | None = None  # answer normally, but reset after this many body bytes
    stall: float | None = None  # with truncate: go silent that long there instead of a reset


@dataclass(frozen=True)
class _ProjectEntry:
    project: Project
    project_id: int
    registry_id: int


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


def _b64url(data: Mapping[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a token the emulator issued (for tests)."""
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_project(p: Project | Mapping[str, Any] | str) -> Project:
    if isinstance(p, Project):
        return p
    if isinstance(p, str):
        return Project(p)
    return Project(str(p["name"]), p.get("registry_type", p.get("type")))


class HarborEmulator:
    """Harbor core (projects API, token service, registry front) over a real registry."""

    def __init__(
        self,
        registry_url: str,
        projects: Sequence[Project | Mapping[str, Any] | str],
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
    ) -> None:
        self.registry_url = registry_url.rstrip("/")
        self.username = username
        self.password = password
        self.initial_password = password
        entries: list[_ProjectEntry] = []
        registry_id = 0
        for project_id, raw in enumerate(projects, start=1):
            project = _as_project(raw)
            if project.is_proxy:
                registry_id += 1
            own_registry = registry_id if project.is_proxy else 0
            entries.append(_ProjectEntry(project, project_id, own_registry))
        self._entries = entries
        self._by_name = {e.project.name: e for e in entries}
        if len(self._by_name) != len(entries):
            raise ValueError("duplicate project names")

        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._api_fault: Fault | None = None
        self._log: list[RecordedRequest] = []
        self._cached_blobs: set[tuple[str, str]] = set()
        self._tokens: dict[str, bool] = {}  # token -> grants access (False: anonymous)
        self._users: dict[str, str] = {}  # token service accounts: name -> password
        self._pulls: dict[str, frozenset[str] | None] = {}  # name -> projects (None: all)
        self._public: set[str] = set()
        self._token_fault: Fault | None = None
        self.reset_accounts()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def projects(self) -> list[Project]:
        return [e.project for e in self._entries]

    @property
    def proxy_projects(self) -> list[Project]:
        return [e.project for e in self._entries if e.project.is_proxy]

    def start(self) -> HarborEmulator:
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.run_until_complete(self._aclose())
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="harbor-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError("Harbor emulator did not start in time")
        if failure:
            self._thread.join(START_TIMEOUT)
            self._thread = None
            raise RuntimeError("Harbor emulator failed to start") from failure[0]
        return self

    def close(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._aclose(), loop).result(START_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)
        self._thread = None
        self._loop = None

    def __enter__(self) -> HarborEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def stop_listening(self) -> None:
        """Close the listening socket (new connections are refused) and abort open ones."""
        self._call(self._astop_listening())

    def start_listening(self) -> None:
        """Listen again on the same port after :meth:`stop_listening`."""
        self._call(self._astart_listening())

    def _call(self, coro: Any) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("Harbor emulator is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(START_TIMEOUT)

    async def _astart(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(
            timeout=UPSTREAM_TIMEOUT,
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=200),
        )
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await self._astart_listening()

    async def _astart_listening(self) -> None:
        assert self._runner is not None
        if self._site is not None:
            return
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._site = site
        self.port = self._runner.addresses[0][1]

    async def _astop_listening(self) -> None:
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        server = self._runner.server if self._runner is not None else None
        if server is not None:
            for handler in server.connections:
                if handler.transport is not None:
                    handler.transport.abort()

    async def _aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- faults and log (called from any thread) ----------------------------------------------

    def set_fault(
        self,
        project: str,
        delay: float | None = None,
        status: int | None = None,
        reset: bool = False,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        times: int | None = None,
        truncate: int | None = None,
        stall: float | None = None,
    ) -> None:
        """Misbehave on ``/v2/{project}/...``: sleep ``delay`` s, then answer ``status`` (Harbor
        error body unless ``body``), or abort the TCP connection (``reset``), or go on normally.
        ``truncate=N`` answers normally but resets the connection after N body bytes (a reset
        mid-body); with ``stall=S`` it goes silent for S seconds there instead, connection open,
        then sends the rest. ``times`` limits the fault to the next N requests of that project."""
        with self._lock:
            self._faults[project] = Fault(
                delay, status, reset, body, headers, times, truncate, stall
            )

    def set_api_fault(
        self,
        status: int | None = None,
        delay: float | None = None,
        reset: bool = False,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        times: int | None = None,
    ) -> None:
        """Same as :meth:`set_fault`, for every ``/api/...`` request (projects, summaries)."""
        with self._lock:
            self._api_fault = Fault(delay, status, reset, body, headers, times)

    def set_token_fault(
        self,
        status: int | None = None,
        delay: float | None = None,
        reset: bool = False,
        times: int | None = None,
    ) -> None:
        """Same as :meth:`set_fault`, for ``/service/token``."""
        with self._lock:
            self._token_fault = Fault(delay, status, reset, None, None, times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._api_fault = None
            self._token_fault = None

    # -- accounts of the token service ---------------------------------------------------------

    def add_user(
        self, name: str, password: str, *, pull: Sequence[str] = (), all_projects: bool = False
    ) -> None:
        """A user (or a robot account, ``robot$...``) that may pull from ``pull`` (a list of
        project names) or, with ``all_projects``, from every project."""
        with self._lock:
            self._users[name] = password
            self._pulls[name] = None if all_projects else frozenset(pull)

    def set_public(self, project: str, public: bool = True) -> None:
        """A public project: everyone, anonymous clients included, may pull from it."""
        if project not in self._by_name:
            raise KeyError(project)
        with self._lock:
            if public:
                self._public.add(project)
            else:
                self._public.discard(project)

    def reset_accounts(self) -> None:
        """Only the router's robot (pull everywhere); every project private."""
        with self._lock:
            self._users = {self.username: self.password}
            self._pulls = {self.username: None}
            self._public.clear()

    def token_requests(self) -> list[RecordedRequest]:
        """The token service requests, oldest first."""
        with self._lock:
            return [r for r in self._log if r.path.startswith("/service/token")]

    def requests(self, project: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, oldest first; only those of ``project`` if given."""
        with self._lock:
            return [r for r in self._log if project is None or r.project == project]

    def count(self, project: str | None = None, path_contains: str | None = None) -> int:
        return sum(
            1 for r in self.requests(project) if path_contains is None or path_contains in r.path
        )

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def forget_cached_blobs(self) -> None:
        """Make every blob "uncached" again (HEAD answers 404 until the next GET)."""
        with self._lock:
            self._cached_blobs.clear()

    def is_blob_cached(self, project: str, digest: str) -> bool:
        with self._lock:
            return (project, digest) in self._cached_blobs

    def set_password(self, password: str) -> None:
        """Change the robot's password (a rotated robot secret): from the next request on,
        only the new one is accepted (by the registry and by the token service)."""
        with self._lock:
            self.password = password
            if self.username in self._users:
                self._users[self.username] = password

    def reset_password(self) -> None:
        self.set_password(self.initial_password)

    def basic_auth_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    # -- request handling --------------------------------------------------------------------

    def _take_fault(self, project: str | None, api: bool | str) -> Fault | None:
        with self._lock:
            if api == "token":
                fault = self._token_fault
            elif api:
                fault = self._api_fault
            elif project is not None:
                fault = self._faults.get(project)
            else:
                return None
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    if api == "token":
                        self._token_fault = None
                    elif api:
                        self._api_fault = None
                    elif project is not None:
                        self._faults.pop(project, None)
            return fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        match = _PROJECT_RE.match(path)
        project = match["project"] if match else None
        headers: dict[str, str] = {}
        for key in request.headers:
            lower = key.lower()
            if lower not in headers:
                headers[lower] = ", ".join(request.headers.getall(key))
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        record = RecordedRequest(
            project, request.method, request.raw_path, headers, peer=peer[1] if peer else 0
        )
        with self._lock:
            self._log.append(record)

        token = path == "/service/token"
        fault = self._take_fault(project, api="token" if token else path.startswith("/api/"))
        if fault is not None:
            if fault.truncate is not None:
                request[TRUNCATE] = fault.truncate
                if fault.stall is not None:
                    request[STALL] = fault.stall
            response = await self._apply_fault(request, fault)
            if response is not None:
                return response

        if request.method not in ("GET", "HEAD"):
            return self._error(405, "METHOD_NOT_ALLOWED", "the router tests only pull")
        if path in ("/v2", "/v2/"):
            return self._ping(request)
        if path == "/service/token":
            return self._token(request)
        if path == "/api/v2.0/projects":
            return self._list_projects(request)
        if m := _SUMMARY_RE.match(path):
            return self._summary(request, m["name"])
        if m := _TAGS_RE.match(path):
            return await self._content(request, m["project"], m["name"], "tags", "list")
        if m := _CONTENT_RE.match(path):
            return await self._content(request, m["project"], m["name"], m["kind"], m["ref"])
        return self._error(404, "NOT_FOUND", f"{path} not found")

    async def _apply_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.reset:
            await self._reset(request)
        if fault.status is None:
            return None
        status = fault.status
        if fault.body is None:
            code = ERROR_CODES.get(status, "UNKNOWN" if status >= 500 else "BAD_REQUEST")
            body = error_body(code, f"injected fault: {status}")
        elif isinstance(fault.body, bytes):
            body = fault.body
        elif isinstance(fault.body, str):
            body = fault.body.encode()
        else:
            body = json.dumps(fault.body).encode()
        response = web.Response(status=status, body=body, content_type="application/json")
        if status == 429:
            response.headers["Retry-After"] = "2"
        if status == 401:
            response.headers["WWW-Authenticate"] = self._challenge(request)
        for key, value in (fault.headers or {}).items():
            response.headers[key] = value
        return response

    @staticmethod
    async def _reset(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # The handler is cancelled with the connection; never answer.
        await asyncio.sleep(3600)

    @staticmethod
    def _error(
        status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=error_body(code, message),
            content_type="application/json",
            headers=dict(headers or {}),
        )

    # -- auth --------------------------------------------------------------------------------

    def _basic_ok(self, value: str) -> bool | None:
        """True/False for a Basic credential; None if the header is not Basic."""
        scheme, _, param = value.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = (
                base64.b64decode(param.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(user, self.username) and secrets.compare_digest(
            password, self.password
        )

    def _authorized(self, request: web.Request) -> bool:
        value = request.headers.get("Authorization", "")
        basic = self._basic_ok(value)
        if basic is not None:
            return basic
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer":
            with self._lock:
                return self._tokens.get(token.strip(), False)
        return False

    def _challenge(self, request: web.Request, scope: str | None = None) -> str:
        proto = request.headers.get("X-Forwarded-Proto", "http").split(",")[0].strip()
        host = request.headers.get("Host", request.host)
        value = f'Bearer realm="{proto}://{host}/service/token",service="{SERVICE}"'
        if scope:
            value += f',scope="{scope}"'
        return value

    def _unauthorized(self, request: web.Request, scope: str | None = None) -> web.Response:
        return self._error(
            401,
            "UNAUTHORIZED",
            "unauthorized to access repository" if scope else "unauthorized",
            {"WWW-Authenticate": self._challenge(request, scope)},
        )

    def _ping(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        return web.Response(
            body=b"{}",
            content_type="application/json",
            headers={"Docker-Distribution-API-Version": "registry/2.0"},
        )

    def _subject(self, value: str) -> str:
        """The user a token request authenticates as; "" for anonymous or unverifiable."""
        scheme, _, param = value.partition(" ")
        if scheme.lower() != "basic":
            return ""
        try:
            user, sep, password = (
                base64.b64decode(param.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return ""
        with self._lock:
            known = self._users.get(user)
        if not sep or known is None or not secrets.compare_digest(password, known):
            return ""
        return user

    def _actions(self, subject: str, scope: str) -> dict[str, Any]:
        """One ``access`` entry: the actions ``subject`` has on the scope's resource."""
        kind, _, rest = scope.partition(":")
        name, _, _ = rest.rpartition(":")
        project = name.split("/", 1)[0]
        actions: list[str] = []
        if kind == "repository" and project in self._by_name:
            with self._lock:
                pulls = self._pulls.get(subject, frozenset()) if subject else frozenset()
                if project in self._public or pulls is None or project in pulls:
                    actions = ["pull"]
        return {"type": kind, "name": name, "actions": actions}

    def _token(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        if query.get("service") != SERVICE:
            return self._error(
                400, "BAD_REQUEST", f"Unable to handle service: {query.get('service')}"
            )
        scopes = [part for value in query.getall("scope", []) for part in value.split(" ") if part]
        subject = self._subject(request.headers.get("Authorization", ""))
        if not subject and not scopes:
            return web.Response(status=401)  # "docker login" with bad or no credentials
        now = int(time.time())
        claims = {
            "iss": "harbor-token-issuer",
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 1800,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": [self._actions(subject, scope) for scope in scopes],
        }
        token = ".".join(
            (_b64url({"typ": "JWT", "alg": "RS256", "kid": "EMULATOR"}), _b64url(claims),
             base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode())
        )  # fmt: skip
        with self._lock:
            self._tokens[token] = subject == self.username  # Bearer on /v2/: the robot only
        body = {"token": token, "access_token": token, "expires_in": 1800, "issued_at": _now_iso()}
        return web.json_response(body)

    # -- projects API ------------------------------------------------------------------------

    def _project_json(self, entry: _ProjectEntry) -> dict[str, Any]:
        data: dict[str, Any] = {
            "project_id": entry.project_id,
            "name": entry.project.name,
            "owner_id": 1,
            "owner_name": "admin",
            "deleted": False,
            "repo_count": 0,
            "togglable": True,
            "creation_time": "2024-01-01T00:00:00.000Z",
            "update_time": "2024-01-01T00:00:00.000Z",
            "current_user_role_id": 3,
            "current_user_role_ids": [3],
            "metadata": {"public": "true" if entry.project.name in self._public else "false"},
            "cve_allowlist": {"id": 0, "items": [], "project_id": entry.project_id},
        }
        if entry.project.is_proxy:
            data["registry_id"] = entry.registry_id
        elif entry.project_id % 2 == 0:
            data["registry_id"] = 0  # Harbor omits it (omitempty) or sends 0: accept both
        return data

    def _list_projects(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, "UNAUTHORIZED", "UnAuthorized")
        query = request.rel_url.query
        try:
            page = int(query.get("page", "1"))
            page_size = int(query.get("page_size", "10"))
        except ValueError:
            return self._error(400, "BAD_REQUEST", "page and page_size must be integers")
        if page < 1 or page_size < 1:
            return self._error(400, "BAD_REQUEST", "page and page_size must be positive")
        page_size = min(page_size, 100)
        entries = self._entries
        if name := query.get("name"):
            entries = [e for e in entries if name in e.project.name]
        total = len(entries)
        chunk = entries[(page - 1) * page_size : page * page_size]

        def link(target: int) -> str:
            params = {k: v for k, v in query.items() if k not in ("page", "page_size")}
            params.update(page=str(target), page_size=str(page_size))
            return f'</api/v2.0/projects?{urlencode(sorted(params.items()))}>; rel="%s"'

        links = []
        if page > 1:
            links.append(link(page - 1) % "prev")
        if page * page_size < total:
            links.append(link(page + 1) % "next")
        response = web.json_response([self._project_json(e) for e in chunk])
        response.headers["X-Total-Count"] = str(total)
        if links:
            response.headers["Link"] = " , ".join(links)
        return response

    def _summary(self, request: web.Request, name: str) -> web.Response:
        if not self._authorized(request):
            return self._error(401, "UNAUTHORIZED", "UnAuthorized")
        entry = self._by_name.get(name)
        if entry is None:
            return self._error(404, "NOT_FOUND", f"project {name} not found")
        body: dict[str, Any] = {
            "repo_count": 0,
            "project_admin_count": 1,
            "maintainer_count": 0,
            "developer_count": 0,
            "guest_count": 0,
            "limited_guest_count": 0,
            "quota": {"hard": {"storage": -1}, "used": {"storage": 0}},
        }
        rtype = entry.project.registry_type
        if rtype is not None:
            body["registry"] = {
                "id": entry.registry_id,
                "name": f"{entry.project.name}-endpoint",
                "type": rtype,
                "url": REGISTRY_URLS.get(rtype, f"https://{rtype}.example.com"),
                "description": "",
                "insecure": False,
                "status": "healthy",
                "credential": {"type": "basic", "access_key": "", "access_secret": "*****"},
                "creation_time": "2024-01-01T00:00:00.000Z",
                "update_time": "2024-01-01T00:00:00.000Z",
            }
        return web.json_response(body)

    # -- registry front ----------------------------------------------------------------------

    async def _content(
        self, request: web.Request, project: str, name: str, kind: str, ref: str
    ) -> web.StreamResponse:
        scope = f"repository:{project}/{name}:pull"
        if not self._authorized(request):
            return self._unauthorized(request, scope)
        entry = self._by_name.get(project)
        if entry is None:
            return self._error(404, "NOT_FOUND", f"project {project} not found")
        proxy = entry.project.is_proxy
        if entry.project.registry_type == "docker-hub" and "/" not in name:
            # Harbor >= 2.7: official Docker Hub images live under library/.
            prefix = f"/v2/{project}/{name}/"
            location = f"/v2/{project}/library/{name}/" + request.raw_path[len(prefix) :]
            return web.Response(status=301, headers={"Location": location})

        if kind == "referrers":
            return await self._referrers(request, project, name, ref)

        suffix = "tags/list" if kind == "tags" else f"{kind}/{ref}"
        if proxy and kind == "blobs" and request.method == "HEAD":
            with self._lock:
                cached = (project, ref) in self._cached_blobs
            if not cached:
                return self._error(404, "NOT_FOUND", f"blob {ref} not cached in {project}")

        upstream_url = f"{self.registry_url}/v2/{project}/{name}/{suffix}"
        if raw_query := request.rel_url.raw_query_string:
            upstream_url += "?" + raw_query
        try:
            return await self._forward(request, project, name, kind, ref, upstream_url, proxy)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Harbor answers a failing backend with a 500 of its own.
            return self._error(500, "UNKNOWN", f"registry unreachable: {exc!r}")

    async def _forward(
        self,
        request: web.Request,
        project: str,
        name: str,
        kind: str,
        ref: str,
        upstream_url: str,
        proxy: bool,
    ) -> web.StreamResponse:
        forward: list[tuple[str, str]] = []
        for header in FORWARDED_REQUEST_HEADERS:
            forward.extend((header, value) for value in request.headers.getall(header, []))
        assert self._session is not None
        async with self._session.request(
            request.method, upstream_url, headers=forward, allow_redirects=False
        ) as upstream:
            if upstream.status == 404 and proxy:
                if kind == "tags":
                    return web.json_response({"name": f"{project}/{name}", "tags": []})
                return self._error(404, "NOT_FOUND", f"{kind[:-1]} {name}:{ref} not found")
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            truncate: int | None = request.get(TRUNCATE)
            stall: float | None = request.get(STALL)
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    if truncate is not None and len(chunk) >= truncate and stall is not None:
                        await response.write(chunk[:truncate])
                        await asyncio.sleep(stall)  # silent, the connection kept open
                        chunk, truncate = chunk[truncate:], None
                    if truncate is not None and len(chunk) >= truncate:
                        await response.write(chunk[:truncate])
                        await self._reset(request)
                    if truncate is not None:
                        truncate -= len(chunk)
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, aiohttp.ClientError, TimeoutError):
                return response  # either side went away mid-body: nothing left to answer
        if proxy and kind == "blobs" and upstream.status == 200:
            with self._lock:
                self._cached_blobs.add((project, ref))
        return response

    async def _referrers(
        self, request: web.Request, project: str, name: str, digest: str
    ) -> web.Response:
        """Harbor answers referrers itself: an (empty) index if the manifest exists."""
        assert self._session is not None
        url = f"{self.registry_url}/v2/{project}/{name}/manifests/{digest}"
        accept = ", ".join(
            (
                OCI_INDEX,
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            )
        )
        try:
            async with self._session.head(url, headers={"Accept": accept}) as upstream:
                exists = upstream.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._error(500, "UNKNOWN", f"registry unreachable: {exc!r}")
        if not exists:
            return self._error(404, "NOT_FOUND", f"artifact {project}/{name}@{digest} not found")
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
        headers = {}
        if request.rel_url.query.get("artifactType"):
            headers["OCI-Filters-Applied"] = "artifactType"
        return web.Response(body=body, content_type=OCI_INDEX, headers=headers)


def default_projects(team_before_ghcr: int = 60, team_after_ghcr: int = 60) -> list[Project]:
    """The test suite's project table, in Harbor's (project_id) order."""
    projects = [
        Project("library"),
        Project("proxy", "docker-hub"),
        Project("dockerhub", "docker-hub"),
    ]
    projects += [Project(f"team-{i:03d}") for i in range(team_before_ghcr)]
    projects.append(Project("ghcr", "github-ghcr"))
    last = team_before_ghcr + team_after_ghcr
    projects += [Project(f"team-{i:03d}") for i in range(team_before_ghcr, last)]
    projects.append(Project("quay", "quay"))
    return projects
