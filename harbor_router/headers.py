"""Header tables: what crosses the router in each direction (DESIGN §2)."""

from __future__ import annotations

from typing import Final

from ._wire import HOP_BY_HOP, connection_tokens, end_to_end

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
# Location and Link into /v2/{project}/ are rewritten to /v2/{P}/ (both tables live in _wire).
__all__ = ("FORWARD_REQUEST", "FORWARD_REQUEST_LINES", "HOP_BY_HOP", "HintRewriter", "Rewriter",
           "connection_tokens")  # fmt: skip


class Rewriter:
    """Rewrites ``/v2/{project}/`` to ``/v2/{P}/`` in Location and Link, drops hop-by-hop."""

    __slots__ = ("_needle", "_replacement", "lines")

    def __init__(self, project: str, proxy_project: str) -> None:
        self._needle = f"/v2/{project}/".encode()
        self._replacement = f"/v2/{proxy_project}/".encode()
        self.lines = b""  # header lines added to every response, joined

    def end_to_end(
        self, headers: list[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], int]:
        """Upstream response headers to send on, in order, multi-valued ones intact; and the
        body's length when ``Content-Length`` frames it (no ``Transfer-Encoding``), else -1."""
        return end_to_end(headers, self._needle, self._replacement)


class HintRewriter(Rewriter):
    """A :class:`Rewriter` that also adds fixed headers (``OCI-Namespace`` of a request whose
    routing hint chose the project). A subclass, so the plain rewriter of every other request
    pays nothing for it."""

    __slots__ = ("_extra",)

    def __init__(
        self, project: str, proxy_project: str, extra: tuple[tuple[bytes, bytes], ...]
    ) -> None:
        super().__init__(project, proxy_project)
        self._extra = extra
        self.lines = b"".join(name + b": " + value + b"\r\n" for name, value in extra)

    def end_to_end(
        self, headers: list[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], int]:
        out, framed = end_to_end(headers, self._needle, self._replacement)
        if self._extra:
            out.extend(self._extra)
        return out, framed
