"""Route parsing and validation of the request target: pure, no I/O (DESIGN §2).

A request target is turned into a :class:`Route` or a :class:`~.errors.RegistryError`. Everything
the router forwards to Harbor has passed through here, so Harbor never sees a name, tag or digest
the router could have judged itself.
"""

from __future__ import annotations

import re
from typing import Final

from . import errors
from ._wire import valid_digest, valid_name, valid_tag

# Route kinds.
BASE: Final = 0
MANIFEST: Final = 1
BLOB: Final = 2
TAGS: Final = 3
REFERRERS: Final = 4
PASSTHROUGH: Final = 5  # outside the prefix, forwarded unchanged (PASSTHROUGH_UNMATCHED)
HEALTHZ: Final = 6
READYZ: Final = 7

KIND_NAMES: Final = (
    "base", "manifest", "blob", "tags", "referrers", "passthrough", "healthz", "readyz",
)  # fmt: skip

MAX_NAME_LENGTH: Final = 255
#: Valid targets whose routes are kept (``Router.parse``).
KNOWN_TARGETS: Final = 4096
KNOWN_TARGET_BYTES: Final = 512  # at most 2 MiB of keys in all

# Query strings forwarded for tags/list and referrers: n, last and artifactType only.
_QUERY_VALUE_RE: Final = re.compile(r"[A-Za-z0-9._~%+-]*")
_QUERY_KEYS: Final = {TAGS: frozenset({"n", "last"}), REFERRERS: frozenset({"artifactType"})}

# "/{section}/{reference}" endings of a route under the prefix, by the segment before the last.
_REFERENCE_SECTIONS: Final = {"manifests": MANIFEST, "blobs": BLOB, "referrers": REFERRERS}

# A pass-through path Harbor's front end could resolve outside /v2/: dot segments, encoded dots,
# slashes or backslashes, a backslash.
_UNSAFE_PASSTHROUGH: Final = re.compile(r"(?:^|/)\.\.?(?:/|$)|%2[eEfF]|%5[cC]|\\")

PULL_METHODS: Final = frozenset({"GET", "HEAD"})
ALLOW_HEADER: Final = ((b"Allow", b"GET, HEAD"),)


class Route:
    """One parsed request target. ``name`` is the repository as the client asked for it."""

    __slots__ = ("kind", "name", "query", "reference")

    def __init__(self, kind: int, name: str = "", reference: str = "", query: str = "") -> None:
        self.kind = kind
        self.name = name
        self.reference = reference
        self.query = query

    def __repr__(self) -> str:
        return f"Route({KIND_NAMES[self.kind]}, {self.name!r}, {self.reference!r}, {self.query!r})"


class Router:
    """Parses request targets for one ``PROXY_PROJECT`` prefix."""

    __slots__ = ("_base_paths", "_known", "_passthrough", "_prefix", "_prefix_len", "_special")

    def __init__(self, proxy_project: str, *, passthrough: bool = False) -> None:
        self._passthrough = passthrough
        # Targets already judged valid for GET/HEAD → their route: a pull asks for the same
        # few targets over and over. Bounded: emptied when full.
        self._known: dict[tuple[str, str], Route] = {}
        self._prefix = f"/v2/{proxy_project}/"
        self._prefix_len = len(self._prefix)
        self._base_paths = frozenset({"/v2/", "/v2"})
        self._special = {"/healthz": Route(HEALTHZ), "/readyz": Route(READYZ)}

    @property
    def prefix(self) -> str:
        return self._prefix

    def parse(self, method: str, path: str, query: str) -> Route:
        """Return the route of ``path`` or raise the registry error the client should see.

        A route is immutable once made; the same one is returned for the same target."""
        if method in PULL_METHODS:
            known = self._known.get((path, query))
            if known is not None:
                return known
            route = self._parse(method, path, query)
            if len(path) + len(query) > KNOWN_TARGET_BYTES:
                return route
            if len(self._known) >= KNOWN_TARGETS:
                self._known.clear()
            self._known[(path, query)] = route
            return route
        return self._parse(method, path, query)

    def _parse(self, method: str, path: str, query: str) -> Route:
        if path.startswith(self._prefix):
            if method not in PULL_METHODS:
                raise errors.MethodNotAllowed(
                    "harbor-router serves pulls only", {"method": method}, headers=ALLOW_HEADER
                )
            return self._parse_repository(path[self._prefix_len :], query)
        if path in self._base_paths:
            if method not in PULL_METHODS:
                raise errors.MethodNotAllowed(
                    "harbor-router serves pulls only", {"method": method}, headers=ALLOW_HEADER
                )
            return Route(BASE)
        special = self._special.get(path)
        if special is not None and method in PULL_METHODS:
            return special
        if self._passthrough and path.startswith("/v2/") and path != self._prefix[:-1]:
            if method not in PULL_METHODS:
                raise errors.MethodNotAllowed(
                    "harbor-router serves pulls only", {"method": method}, headers=ALLOW_HEADER
                )
            if _UNSAFE_PASSTHROUGH.search(path) is not None:
                raise errors.BadRequest(
                    "dot segments and encoded separators are not passed through",
                    {"path": path[:256]},
                )
            return Route(PASSTHROUGH, path, "", query)
        raise errors.NameUnknown("no route for this path", {"path": path})

    def _parse_repository(self, rest: str, query: str) -> Route:
        segments = rest.split("/")
        if len(segments) >= 3 and segments[-1] == "list" and segments[-2] == "tags":
            name = "/".join(segments[:-2])
            self._check_name(name)
            return Route(TAGS, name, "", self._check_query(TAGS, query))
        if len(segments) >= 3:
            kind = _REFERENCE_SECTIONS.get(segments[-2])
            if kind is not None:
                name = "/".join(segments[:-2])
                self._check_name(name)
                reference = segments[-1]
                if kind == MANIFEST and ":" not in reference:
                    if not valid_tag(reference):
                        raise errors.TagInvalid("invalid tag", {"tag": reference[:256]})
                elif not valid_digest(reference):
                    raise errors.DigestInvalid(
                        "invalid digest: sha256 or sha512 in lowercase hex expected",
                        {"digest": reference[:256]},
                    )
                q = self._check_query(REFERRERS, query) if kind == REFERRERS else ""
                return Route(kind, name, reference, q)
        raise errors.NameUnknown("unknown route under the proxy prefix", {"path": rest[:256]})

    def check_name(self, name: str) -> None:
        """Raise :class:`~.errors.NameInvalid` unless ``name`` is a repository a client may ask
        for under the prefix (grammar and length)."""
        self._check_name(name)

    def _check_name(self, name: str) -> None:
        if len(name) + self._prefix_len - 4 > MAX_NAME_LENGTH or not valid_name(name):
            raise errors.NameInvalid("invalid repository name", {"name": name[:256]})

    @staticmethod
    def _check_query(kind: int, query: str) -> str:
        if not query:
            return ""
        allowed = _QUERY_KEYS[kind]
        kept = []
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key not in allowed:
                continue
            if key == "n" and not (value.isdigit() and len(value) <= 9):
                raise errors.PaginationNumberInvalid("invalid number of results requested")
            if _QUERY_VALUE_RE.fullmatch(value) is None:
                raise errors.BadRequest("invalid query parameter", {"parameter": key})
            kept.append(part)
        return "&".join(kept)
