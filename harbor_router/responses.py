"""Response heads and registry error bodies, built from precomputed byte strings."""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import Final, TypeAlias

from ._wire import build_head
from .errors import RegistryError

#: An HTTP status code: compiled, a C int where the source annotates one so
#: (``_speedups/dataplane.py``), else an int.
Status: TypeAlias = int

API_VERSION_HEADER: Final = b"Docker-Distribution-API-Version: registry/2.0\r\n"
JSON_TYPE: Final = b"Content-Type: application/json\r\n"

_PHRASES: Final = {414: "URI Too Long"}  # RFC 9110 wording where Python's is older
STATUS_LINES: Final[dict[int, bytes]] = {
    s.value: f"HTTP/1.1 {s.value} {_PHRASES.get(s.value, s.phrase)}\r\n".encode("latin-1")
    for s in HTTPStatus
}

# by status, 0-999 (the three digits a response scan reads): its line, None for one unknown
_LINES: Final[tuple[bytes | None, ...]] = tuple(STATUS_LINES.get(s) for s in range(1000))


def status_line(status: Status) -> bytes:
    if 0 <= status < 1000:  # compiled, a C int indexing a tuple: no int object, no hashing
        line = _LINES[status]
        if line is not None:
            return line
    return b"HTTP/1.1 %d Unknown\r\n" % status


def error_body(code: str, message: str, detail: object = None) -> bytes:
    entry: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}, separators=(",", ":")).encode()


def head(
    status: int,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    content_length: int | None = None,
    close: bool = False,
    extra: bytes = b"",
) -> bytes:
    """One joined response head: status line, headers, framing, blank line."""
    return build_head(
        status_line(status), headers, extra, -1 if content_length is None else content_length, close
    )


def simple(
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    head_only: bool = False,
    close: bool = False,
) -> bytes:
    """A whole JSON response with a body (the body is left out for HEAD, its length is not)."""
    data = head(
        status,
        headers,
        content_length=len(body),
        close=close,
        extra=JSON_TYPE + API_VERSION_HEADER,
    )
    return data if head_only else data + body


def for_error(error: RegistryError, *, head_only: bool = False, close: bool = False) -> bytes:
    body = error_body(error.code, error.message, error.detail)
    return simple(
        error.status, body, error.headers, head_only=head_only, close=close or error.close
    )
