"""Authentication: the router's robot account towards Harbor, and the client challenge (DESIGN §5).

The robot's credentials are held only as a ready ``Authorization`` header value; when they come
from ``*_FILE`` variables the files are re-read when they change (a rotated Kubernetes Secret).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from . import errors
from .bodies import read_body

if TYPE_CHECKING:
    from .config import Config
    from .projects import Project

log = logging.getLogger("harbor_router.auth")

NONE, HEADER, HARBOR = "none", "header", "harbor"
_HOST_RE = re.compile(rb"[A-Za-z0-9.\-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")
_PROTOS = frozenset({b"http", b"https"})


def basic_header(username: str, password: str) -> bytes:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}".encode("ascii")


class Credentials:
    """The robot account as an ``Authorization`` value, refreshed from its files on change."""

    __slots__ = ("_files", "_mtimes", "_password", "_username", "header")

    def __init__(
        self,
        username: str,
        password: str,
        username_file: str | None = None,
        password_file: str | None = None,
    ) -> None:
        self._username = username
        self._password = password
        self._files = (username_file, password_file)
        self._mtimes = (self._mtime(username_file), self._mtime(password_file))
        self.header: bytes | None = basic_header(username, password) if username else None

    @classmethod
    def from_config(cls, config: Config) -> Credentials:
        return cls(
            config.harbor_username,
            config.harbor_password,
            config.harbor_username_file,
            config.harbor_password_file,
        )

    @property
    def username(self) -> str:
        return self._username

    @staticmethod
    def _mtime(path: str | None) -> float:
        if not path:
            return 0.0
        try:
            return os.stat(path).st_mtime
        except OSError:
            return 0.0

    def refresh(self) -> bool:
        """Re-read the ``*_FILE`` variables if they changed; True when the header changed."""
        user_file, pass_file = self._files
        mtimes = (self._mtime(user_file), self._mtime(pass_file))
        if mtimes == self._mtimes:
            return False
        self._mtimes = mtimes
        try:
            if user_file:
                with open(user_file, encoding="utf-8") as f:
                    self._username = f.read().strip()
            if pass_file:
                with open(pass_file, encoding="utf-8") as f:
                    self._password = f.read().rstrip("\r\n")
        except OSError as exc:
            log.warning("cannot re-read Harbor credentials: %s", exc.strerror)
            return False
        header = basic_header(self._username, self._password) if self._username else None
        changed = header != self.header
        self.header = header
        if changed:
            log.info("Harbor credentials reloaded for user %s", self._username)
        return changed


class ChallengeCache:
    """Harbor's ``WWW-Authenticate`` for a client ``Host``/``X-Forwarded-Proto``, cached briefly.

    Harbor builds the token realm from those two headers, so relaying its own challenge names a
    realm the client can reach even when ``HARBOR_URL`` is an in-cluster address.
    """

    MAX_ENTRIES = 1024

    def __init__(
        self,
        session: aiohttp.ClientSession,
        harbor_url: str,
        ttl: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self._session = session
        self._url = harbor_url + "/v2/"
        self._ttl = ttl
        self._timeout = timeout
        self._entries: OrderedDict[tuple[bytes, bytes], tuple[bytes, float]] = OrderedDict()

    async def get(self, host: bytes | None, proto: bytes | None) -> bytes:
        host = host or b""
        proto = (proto or b"http").split(b",")[0].strip().lower()
        if _HOST_RE.fullmatch(host) is None or proto not in _PROTOS:
            raise errors.BadRequest("invalid Host or X-Forwarded-Proto header")
        key = (host, proto)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and now - entry[1] < self._ttl:
            return entry[0]
        challenge = await self._fetch(host, proto)
        self._entries[key] = (challenge, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.MAX_ENTRIES:
            self._entries.popitem(last=False)
        return challenge

    async def _fetch(self, host: bytes, proto: bytes) -> bytes:
        headers = {"Host": host.decode("ascii"), "X-Forwarded-Proto": proto.decode("ascii")}
        try:
            async with self._session.get(
                self._url,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                value = resp.headers.get("WWW-Authenticate")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.Unavailable(
                "cannot fetch the authentication challenge from Harbor", type(exc).__name__
            ) from None
        if not value:
            raise errors.Unavailable("Harbor sent no authentication challenge")
        return value.encode("latin-1")


# -- AUTH_MODE=harbor ---------------------------------------------------------------------------

BASIC_CHALLENGE: Final = ((b"WWW-Authenticate", b'Basic realm="harbor-router"'),)
TOKEN_SERVICE: Final = "harbor-registry"
#: Refusals (bad credentials, no pull right) are cached at most this long.
NEGATIVE_TTL_MAX: Final = 10.0
#: Most decisions kept; past it the oldest are dropped first.
MAX_DECISIONS: Final = 100_000
MAX_NAMES: Final = 10_000  # Authorization hashes → digests kept (Decisions.credential)
#: A token service answer larger than this is not a token.
MAX_TOKEN_BYTES: Final = 64 * 1024

# Decisions.
ALLOWED, DENIED, REJECTED = 1, 2, 3
_LOGIN: Final = ""  # the "project" of a credential check without a scope (GET /v2/)


#: Basic with an empty user name and password: what containers/image clients (skopeo, podman,
#: CRI-O) answer a Basic challenge with when they have no credentials. Harbor treats it as
#: anonymous, and so does the router.
_EMPTY_BASIC: Final = frozenset({b"Basic Og==", b"basic Og==", b"BASIC Og=="})


def client_credentials(authorization: bytes | None) -> bytes | None:
    """The client's ``Authorization`` value, None for an anonymous client."""
    if authorization is None or authorization in _EMPTY_BASIC:
        return None
    return authorization


def challenge(message: str = "authentication required") -> errors.Unauthorized:
    return errors.Unauthorized(message, headers=BASIC_CHALLENGE)


def _check_basic(authorization: bytes) -> None:
    """Refuse anything but well-formed HTTP Basic (Bearer tokens included) with the challenge."""
    scheme, _, param = authorization.partition(b" ")
    try:
        decoded = base64.b64decode(param.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if scheme.lower() != b"basic" or b":" not in decoded:
        raise challenge("HTTP Basic credentials required")


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def token_claims(body: bytes) -> dict[str, Any]:
    """The claims of the JWT in a token service answer (``token`` or ``access_token``)."""
    data = json.loads(body)
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or token.count(".") != 2:
        raise ValueError("no JWT in the answer")
    claims = json.loads(_b64url(token.split(".")[1]))
    if not isinstance(claims, dict):
        raise ValueError("JWT claims are not an object")
    return claims


def grants_pull(claims: dict[str, Any], repository: str) -> bool:
    """True when the ``access`` claim grants ``pull`` on exactly ``repository``."""
    access = claims.get("access")
    if not isinstance(access, list):
        return False
    for entry in access:
        if (
            isinstance(entry, dict)
            and entry.get("type") == "repository"
            and entry.get("name") == repository
        ):
            actions = entry.get("actions")
            if isinstance(actions, list) and "pull" in actions:
                return True
    return False


class Decisions:
    """Access decisions per (credential hash, project, repository), each with its expiry."""

    __slots__ = ("_clock", "_entries", "_hasher", "_max_entries", "_names", "_negative_ttl",
                 "_ttl")  # fmt: skip

    def __init__(
        self,
        ttl: float,
        *,
        negative_ttl: float | None = None,
        max_entries: int = MAX_DECISIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Keyed once: each value costs a copy of this state and one compression, not two.
        self._hasher = hashlib.blake2b(digest_size=16, key=secrets.token_bytes(32))
        self._ttl = ttl
        self._negative_ttl = min(ttl, NEGATIVE_TTL_MAX) if negative_ttl is None else negative_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[tuple[bytes, str, str], tuple[int, float]] = {}
        # hash(value) → its keyed digest: a client's next request skips the digest. hash() is
        # SipHash keyed with the process's own random secret; a 64-bit collision would have to
        # be found without that secret, against a value the attacker does not know.
        self._names: dict[int, bytes] = {}

    def credential(self, authorization: bytes | None) -> bytes:
        """The cache's name for an ``Authorization`` value: a keyed hash (b"" for none)."""
        if authorization is None:
            return b""
        names = self._names
        short = hash(authorization)
        name = names.get(short)
        if name is None:
            hasher = self._hasher.copy()
            hasher.update(authorization)
            name = hasher.digest()
            if len(names) >= MAX_NAMES:
                names.clear()
            names[short] = name
        return name

    def allowed(self, authorization: bytes | None, project: str, name: str) -> bool:
        """The fast path's question, in one call: is an allow for this request cached?"""
        # (the length test first: a set lookup would hash the whole value once more)
        if authorization is None or (len(authorization) == 10 and authorization in _EMPTY_BASIC):
            credential = b""
        else:
            credential = self._names.get(hash(authorization)) or self.credential(authorization)
        entry = self._entries.get((credential, project, name))
        return entry is not None and entry[0] == ALLOWED and self._clock() < entry[1]

    def get(self, credential: bytes, project: str, name: str) -> int | None:
        key = (credential, project, name)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._entries[key]
            return None
        return entry[0]

    def put(self, credential: bytes, project: str, name: str, decision: int) -> None:
        ttl = self._ttl if decision == ALLOWED else self._negative_ttl
        if ttl <= 0:
            return
        entries = self._entries
        key = (credential, project, name)
        entries.pop(key, None)
        entries[key] = (decision, self._clock() + ttl)
        if len(entries) > self._max_entries:
            del entries[next(iter(entries))]

    def __len__(self) -> int:
        return len(self._entries)


class HarborAuth:
    """``AUTH_MODE=harbor``: Harbor's token service decides whether a client may pull."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        harbor_url: str,
        *,
        ttl: float,
        timeout: float,
        decisions: Decisions | None = None,
    ) -> None:
        self._session = session
        self._url = harbor_url + "/service/token"
        self._timeout = timeout
        self.decisions = decisions if decisions is not None else Decisions(ttl)
        self._inflight: dict[tuple[bytes, str, str], asyncio.Future[int]] = {}
        self.token_requests = 0  # asked of Harbor (tests, benchmarks)
        #: ``allowed(authorization, project, name)``: is an allow cached? No I/O (fast path).
        self.allowed = self.decisions.allowed

    async def login(self, authorization: bytes | None) -> None:
        """``GET /v2/``: a client without credentials is asked for them; credentials are
        checked (``docker login`` through the router then tells a wrong password at once)."""
        authorization = client_credentials(authorization)
        if authorization is None:
            raise challenge()
        _check_basic(authorization)
        decision = await self._decide(authorization, _LOGIN, "", "")
        if decision != ALLOWED:
            raise challenge("invalid username or password")

    async def authorize(self, authorization: bytes | None, project: Project, name: str) -> None:
        """Return when the client may pull ``name`` (as the client named it) from ``project``;
        raise 401 (no or bad credentials) or 403 ``DENIED`` (no pull right) otherwise."""
        authorization = client_credentials(authorization)
        if authorization is not None:
            _check_basic(authorization)
        decision = await self._decide(
            authorization, project.name, name, f"{project.name}/{project.upstream_name(name)}"
        )
        if decision == ALLOWED:
            return
        if authorization is None:
            raise challenge()
        if decision == REJECTED:
            raise challenge("invalid username or password")
        raise errors.Denied("requested access to the resource is denied", {"name": name})

    async def _decide(
        self, authorization: bytes | None, project: str, name: str, repository: str
    ) -> int:
        decisions = self.decisions
        credential = decisions.credential(authorization)
        decision = decisions.get(credential, project, name)
        if decision is not None:
            return decision
        key = (credential, project, name)
        shared = self._inflight.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            decision = await self._ask(authorization, repository)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                exc = errors.Unavailable("the credential check was interrupted")
            future.set_exception(exc)
            future.exception()  # retrieved: followers re-raise it themselves
            raise
        else:
            decisions.put(credential, project, name, decision)
            future.set_result(decision)
            return decision
        finally:
            del self._inflight[key]

    async def _ask(self, authorization: bytes | None, repository: str) -> int:
        """One token request to Harbor, with the client's own credentials (or none)."""
        params = {"service": TOKEN_SERVICE}
        if repository:
            params["scope"] = f"repository:{repository}:pull"
        headers = {"Authorization": authorization.decode("latin-1")} if authorization else {}
        self.token_requests += 1
        try:
            async with self._session.get(
                self._url,
                params=params,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                status = resp.status
                body = await read_body(resp.content, MAX_TOKEN_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("Harbor's token service cannot be reached: %s", type(exc).__name__)
            raise errors.Unavailable(
                "cannot check the credentials with Harbor", type(exc).__name__
            ) from None
        if status == 401:
            return REJECTED
        if status != 200 or len(body) > MAX_TOKEN_BYTES:
            log.warning("Harbor's token service answered %d", status)
            raise errors.Unavailable(f"Harbor's token service answered {status}")
        try:
            claims = token_claims(body)
        except (ValueError, UnicodeDecodeError):
            log.warning("Harbor's token service sent no readable token")
            raise errors.Unavailable("Harbor's token service sent no readable token") from None
        if authorization is not None and not claims.get("sub"):
            return REJECTED  # Harbor could not verify them and fell back to anonymous
        if not repository:
            return ALLOWED
        return ALLOWED if grants_pull(claims, repository) else DENIED
