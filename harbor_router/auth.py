"""Authentication: the router's robot account towards Harbor, and the client challenge (DESIGN §5).

The robot's credentials are held only as a ready ``Authorization`` header value; when they come
from ``*_FILE`` variables the files are re-read when they change (a rotated Kubernetes Secret).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import aiohttp

from . import errors

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("harbor_router.auth")

NONE, HEADER = "none", "header"
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
