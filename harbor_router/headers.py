"""Header tables: what crosses the router in each direction (DESIGN §2)."""

from __future__ import annotations

from typing import Final

# Client request headers forwarded to Harbor, by lowercased name, with the name sent on.
# Everything else stays here; X-Forwarded-For is appended to, not copied.
FORWARD_REQUEST: Final = {
    b"accept": "Accept",
    b"range": "Range",
    b"if-range": "If-Range",
    b"if-none-match": "If-None-Match",
    b"user-agent": "User-Agent",
}
FORWARD_REQUEST_LINES: Final = {k: v.encode() + b": " for k, v in FORWARD_REQUEST.items()}

# Hop-by-hop headers (RFC 9110 §7.6.1) never cross the router; framing is the router's own.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Response headers whose URLs may point into /v2/{project}/ and are rewritten to /v2/{P}/.
REWRITTEN: Final = frozenset({b"location", b"link"})


_PLAIN_CONNECTION: Final = {
    b"keep-alive": frozenset({b"keep-alive"}),
    b"close": frozenset({b"close"}),
}


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names listed in one ``Connection`` value (hop-by-hop for this message too)."""
    plain = _PLAIN_CONNECTION.get(value.lower())
    if plain is not None:
        return plain
    return frozenset(t.strip().lower() for t in value.split(b","))


class Rewriter:
    """Rewrites ``/v2/{project}/`` to ``/v2/{P}/`` in Location and Link, drops hop-by-hop."""

    __slots__ = ("_needle", "_replacement")

    def __init__(self, project: str, proxy_project: str) -> None:
        self._needle = f"/v2/{project}/".encode()
        self._replacement = f"/v2/{proxy_project}/".encode()

    def end_to_end(
        self, headers: list[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Upstream response headers to send on, in order, multi-valued ones intact; and
        whether ``Content-Length`` frames the body (present, and no ``Transfer-Encoding``)."""
        out = []
        extra: frozenset[bytes] | None = None
        has_length = False
        chunked = False
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                if lower == b"connection":
                    tokens = connection_tokens(value)
                    extra = tokens if extra is None else extra | tokens
                elif lower == b"transfer-encoding":
                    chunked = True
                continue
            if lower == b"content-length":
                has_length = True
            elif lower in REWRITTEN and self._needle in value:
                value = value.replace(self._needle, self._replacement)
            out.append((name, value))
        if extra and not extra <= HOP_BY_HOP:
            out = [(n, v) for n, v in out if n.lower() not in extra]
        if chunked and has_length:
            out = [(n, v) for n, v in out if n.lower() != b"content-length"]
        return out, has_length and not chunked
