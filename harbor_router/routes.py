"""Route parsing and validation of the request target: pure, no I/O (DESIGN §2).

A request target is turned into a :class:`Route` or a :class:`~.errors.RegistryError`. Everything
the router forwards to Harbor has passed through here, so Harbor never sees a name, tag or digest
the router could have judged itself.

Routing hints: a name whose first segment looks like a registry host (it has a ``.`` or a ``:``,
or is ``localhost``, as in docker references) names its upstream (``ghcr.io/acme/tool``), and
containerd's ``ns`` query parameter names the upstream of a mirrored request. Both are checked
against a ``host[:port]`` grammar here; which project mirrors the host is the handler's business.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

from . import errors
from ._cache import Memo
from ._wire import valid_digest, valid_name, valid_tag
from .projects import DOCKER_HUB_HOSTS

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

# A registry host as docker references and containerd's ns name it: DNS labels or an IPv4
# address, an optional port (IPv6 literals are not accepted).
_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::(?P<port>[0-9]{{1,5}}))?")
MAX_HOST_LENGTH: Final = 253 + 6

PULL_METHODS: Final = frozenset({"GET", "HEAD"})
ALLOW_HEADER: Final = ((b"Allow", b"GET, HEAD"),)


def valid_host(host: str) -> bool:
    """``host[:port]``, lowercase: DNS labels or an IPv4 address, port 1-65535."""
    if len(host) > MAX_HOST_LENGTH:
        return False
    match = _HOST_RE.fullmatch(host)
    if match is None:
        return False
    port = match.group("port")
    return port is None or 0 < int(port) <= 65535


class Route:
    """One parsed request target.

    ``name`` is the repository as the client asked for it (host prefix included), ``upstream``
    the repository Harbor is asked for (host prefix removed), ``key`` the mapping and negative
    cache key. A :class:`HintedRoute` also carries a routing hint.
    """

    __slots__ = ("host", "key", "kind", "name", "ns", "prefixed", "query", "reference", "upstream")

    def __init__(self, kind: int, name: str = "", reference: str = "", query: str = "") -> None:
        self.kind = kind
        self.name = self.key = self.upstream = name
        self.reference = reference
        self.query = query
        self.host = self.ns = ""  # no routing hint (a HintedRoute's)
        self.prefixed = False

    def plain(self) -> Route:
        """The same request without its routing hint."""
        return Route(self.kind, self.name, self.reference, self.query)

    def __repr__(self) -> str:
        hint = f", host={self.host!r}" if self.host else ""
        return (
            f"Route({KIND_NAMES[self.kind]}, {self.name!r}, {self.reference!r}, {self.query!r}"
            f"{hint})"
        )


class HintedRoute(Route):
    """A route with a routing hint: ``host`` (lowercase ``host[:port]``) comes from the name's
    first segment when ``prefixed``, else from ``ns``, which is then echoed as
    ``OCI-Namespace``."""

    __slots__ = ()

    def __init__(
        self,
        kind: int,
        name: str,
        reference: str,
        query: str,
        *,
        upstream: str,
        key: str,
        host: str,
        prefixed: bool = False,
        ns: str = "",
    ) -> None:
        super().__init__(kind, name, reference, query)
        self.upstream = upstream
        self.key = key
        self.host = host
        self.prefixed = prefixed
        self.ns = ns


class Router:
    """Parses request targets for one ``PROXY_PROJECT`` prefix."""

    __slots__ = ("_base_paths", "_known", "_passthrough", "_prefix", "_prefix_len", "_special")

    def __init__(self, proxy_project: str, *, passthrough: bool = False) -> None:
        self._passthrough = passthrough
        # Targets already judged valid for GET/HEAD → their route: a pull asks for the same
        # few targets over and over. Bounded: emptied when full (``_cache.Memo``, whose
        # compiled hash of a fresh target costs a third of str's).
        self._known: Memo[Route] = Memo(KNOWN_TARGETS)
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
        if method == "GET" or method == "HEAD":  # PULL_METHODS
            # as it came: a path has no "?" (compared, not truth-tested: compiled, no call)
            target = path + "?" + query if query != "" else path
            known = self._known.get(target)
            if known is not None:
                return known
            route = self._parse(method, path, query)
            if len(target) <= KNOWN_TARGET_BYTES:
                self._known.set(target, route)
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
        count = len(segments)
        if count >= 3 and segments[-1] == "list" and segments[-2] == "tags":
            kind, reference = TAGS, ""
        else:
            section = _REFERENCE_SECTIONS.get(segments[-2]) if count >= 3 else None
            if section is None:
                raise errors.NameUnknown(
                    "unknown route under the proxy prefix", {"path": rest[:256]}
                )
            kind, reference = section, segments[-1]
        first = segments[0]
        if count >= 4 and ("." in first or ":" in first or first == "localhost"):
            return self._host_prefixed(kind, segments, reference, query)
        name = "/".join(segments[:-2])
        if len(name) + self._prefix_len - 4 > MAX_NAME_LENGTH or not valid_name(name):
            raise errors.NameInvalid("invalid repository name", {"name": name[:256]})
        if kind == MANIFEST and ":" not in reference:
            if not valid_tag(reference):
                raise errors.TagInvalid("invalid tag", {"tag": reference[:256]})
        elif kind != TAGS and not valid_digest(reference):
            raise errors.DigestInvalid(
                "invalid digest: sha256 or sha512 in lowercase hex expected",
                {"digest": reference[:256]},
            )
        if not query:
            return Route(kind, name, reference, "")
        q = self._check_query(kind, query) if kind >= TAGS else ""
        if "ns=" in query:
            ns = self._namespace(query)
            if ns:
                return HintedRoute(
                    kind, name, reference, q, upstream=name, key=f"{ns}/{name}", host=ns, ns=ns
                )
        return Route(kind, name, reference, q)

    def _host_prefixed(self, kind: int, segments: list[str], reference: str, query: str) -> Route:
        """``{host}/{repository}``: Harbor is asked for ``{repository}`` in the project that
        mirrors ``host``; Docker Hub's one-segment names get ``library/``."""
        host = segments[0].lower()
        if not valid_host(host):
            raise errors.NameInvalid(
                "invalid registry host in the repository name: host[:port] expected",
                {"host": segments[0][:256]},
            )
        repository = "/".join(segments[1:-2])
        name = f"{host}/{repository}"
        if len(name) + self._prefix_len - 4 > MAX_NAME_LENGTH or not valid_name(repository):
            raise errors.NameInvalid("invalid repository name", {"name": name[:256]})
        self._check_reference(kind, reference)
        q = self._check_query(kind, query) if kind >= TAGS and query else ""
        if query and "ns=" in query:
            self._namespace(query)  # validated; the host in the path decides
        upstream = repository
        if host in DOCKER_HUB_HOSTS and "/" not in repository:
            upstream = "library/" + repository
        return HintedRoute(
            kind, name, reference, q, upstream=upstream, key=name, host=host, prefixed=True
        )

    @staticmethod
    def _check_reference(kind: int, reference: str) -> None:
        if kind == TAGS:
            return
        if kind == MANIFEST and ":" not in reference:
            if not valid_tag(reference):
                raise errors.TagInvalid("invalid tag", {"tag": reference[:256]})
        elif not valid_digest(reference):
            raise errors.DigestInvalid(
                "invalid digest: sha256 or sha512 in lowercase hex expected",
                {"digest": reference[:256]},
            )

    @staticmethod
    def _namespace(query: str) -> str:
        """containerd's ``ns`` (the upstream host of a mirrored request), lowercased; "" when
        absent. It is only ever a routing hint, never forwarded."""
        found: str | None = None
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key != "ns":
                continue
            if found is not None:
                raise errors.NameInvalid("more than one ns parameter")
            found = (unquote(value) if "%" in value else value).lower()
            if not valid_host(found):
                raise errors.NameInvalid(
                    "invalid ns parameter: a registry host[:port] expected", {"ns": value[:256]}
                )
        return found or ""

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
        allowed = _QUERY_KEYS.get(kind)
        if allowed is None:  # manifests and blobs: no query is forwarded
            return ""
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
