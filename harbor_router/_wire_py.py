"""Per-request byte work of the data plane; the pure-Python twin of ``_wire_c``.

Three jobs, all on every request: validating a repository name, tag or digest (DESIGN §2),
turning Harbor's response headers into the client's (hop-by-hop dropped, ``Location``/``Link``
into ``/v2/{project}/`` rewritten to ``/v2/{P}/``), and joining a response head. This module is
the specification; ``_speedups/_wire_c.pyx`` does the same with typed loops.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")

HOP_BY_HOP = frozenset(
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
_REWRITTEN = frozenset({b"location", b"link"})
_PLAIN_CONNECTION = {
    b"keep-alive": frozenset({b"keep-alive"}),
    b"close": frozenset({b"close"}),
}


def valid_name(name: str) -> bool:
    """The OCI repository name grammar (the length limit is the caller's)."""
    return _NAME_RE.fullmatch(name) is not None


def valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


def valid_digest(digest: str) -> bool:
    """``sha256:`` + 64 or ``sha512:`` + 128 lowercase hex digits."""
    return _DIGEST_RE.fullmatch(digest) is not None


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names listed in one ``Connection`` value (hop-by-hop for this message too)."""
    plain = _PLAIN_CONNECTION.get(value.lower())
    if plain is not None:
        return plain
    return frozenset(t.strip().lower() for t in value.split(b","))


def end_to_end(
    headers: list[tuple[bytes, bytes]], needle: bytes, replacement: bytes
) -> tuple[list[tuple[bytes, bytes]], int]:
    """Headers to send on, in order, multi-valued ones intact; and the body's length when
    ``Content-Length`` frames it (present, digits, no ``Transfer-Encoding``), else -1."""
    out = []
    extra: frozenset[bytes] | None = None
    has_length = False
    length_value = b""
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
            if not has_length:
                has_length = True
                length_value = value.strip()
        elif lower in _REWRITTEN and needle in value:
            value = value.replace(needle, replacement)
        out.append((name, value))
    if extra and not extra <= HOP_BY_HOP:
        out = [(n, v) for n, v in out if n.lower() not in extra]
    if chunked and has_length:
        out = [(n, v) for n, v in out if n.lower() != b"content-length"]
    if not has_length or chunked:
        return out, -1
    if not length_value.isdigit() or len(length_value) > 18:
        return out, -1
    return out, int(length_value)


def build_head(
    status_line: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    extra: bytes,
    content_length: int,
    close: bool,
) -> bytes:
    """Status line, headers, ``extra`` (pre-joined lines), framing, blank line; one bytes.
    ``content_length`` < 0 adds no ``Content-Length``."""
    parts = [status_line]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(extra)
    if content_length >= 0:
        parts.append(b"Content-Length: %d\r\n" % content_length)
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
