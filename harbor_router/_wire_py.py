"""Per-request byte work of the data plane; the pure-Python twin of ``_wire_c``.

Four jobs, all on every request: validating a repository name, tag or digest (DESIGN §2),
turning Harbor's response headers into the client's (hop-by-hop dropped, ``Location``/``Link``
into ``/v2/{project}/`` rewritten to ``/v2/{P}/``), joining a response head (and the upstream
request head, ``forward_head``), and reading a
whole small response that came in one read (``scan_response``). This module is the
specification; ``_speedups/_wire_c.pyx`` does the same with typed loops.
"""

from __future__ import annotations

import asyncio
import os
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from time import perf_counter as perf_counter  # the compiled twin's is the same clock, called in C

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
# header names whose heads the scans leave to the parser, which reads them its own way (it
# takes Proxy-Connection for Connection: the scans would keep alive what it closes)
_PARSER_JUDGES = frozenset({b"transfer-encoding", b"close", b"proxy-connection"})
# and of a request's, a body's length and an upgrade too
_REQUEST_DECLINED = _PARSER_JUDGES | {b"content-length", b"upgrade"}
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


def whole_response(
    status_line: bytes, block: bytes, added: bytes, close: bool, data: bytes, body_at: int
) -> bytes:
    """A response :func:`scan_response` took, for the client in one bytes: ``status_line``,
    the end-to-end lines ``block`` and the ``added`` ones, ``Connection: close`` when
    ``close``, the blank line, then the body, ``data[body_at:]`` (the compiled one copies it
    once, into the result, with no slice of it first)."""
    if not 0 <= body_at <= len(data):
        raise ValueError("the body starts inside the response")
    ending = b"Connection: close\r\n\r\n" if close else b"\r\n"
    return b"".join((status_line, block, added, ending, data[body_at:]))


_TAGS_FIRST = b'{"name":"'


def renamed_tag_response(
    status_line: bytes,
    block: bytes,
    added: bytes,
    close: bool,
    data: bytes,
    body_at: int,
    name: str,
) -> bytes | None:
    """:func:`whole_response` of a scanned tag list, its ``name`` replaced by ``name`` and its
    length by the new body's; None when there is nothing this renames: the body,
    ``data[body_at:]``, must begin the way distribution writes it (``{"name":"`` and a name
    without a backslash), ``name`` be printable ASCII without ``"`` or ``\\`` (written as it
    is), and one of ``block``'s lines be exactly ``Content-Length: <the body's length>`` (the
    first such is the one rewritten)."""
    parts = (status_line, block, added, data)
    if not all(isinstance(part, bytes) for part in parts) or not isinstance(name, str):
        raise TypeError("the status line, the lines and the response are bytes, the name str")
    if not 0 <= body_at <= len(data):
        raise ValueError("the body starts inside the response")
    if not (name.isascii() and name.isprintable()) or '"' in name or "\\" in name:
        return None
    if not data.startswith(_TAGS_FIRST, body_at):
        return None
    start = body_at + len(_TAGS_FIRST)
    end = data.find(b'"', start)
    if end < 0 or data.find(b"\\", start, end) >= 0:
        return None
    old = b"Content-Length: %d" % (len(data) - body_at)
    at = 0
    while True:
        line_end = block.find(b"\r\n", at)
        if line_end < 0:
            return None
        if block[at:line_end] == old:
            break
        at = line_end + 2
    body = _TAGS_FIRST + name.encode() + data[end:]
    lines = b"%bContent-Length: %d%b" % (block[:at], len(body), block[line_end:])
    ending = b"Connection: close\r\n\r\n" if close else b"\r\n"
    return b"".join((status_line, lines, added, ending, body))


class ForwardLines:
    """The client request headers :func:`forward_head` passes on: each one's line start
    (``Name: ``) by its lowercased name (bytes both)."""

    __slots__ = ("lines",)

    def __init__(self, lines: Mapping[bytes, bytes]) -> None:
        for name, line in lines.items():
            if type(name) is not bytes or type(line) is not bytes:
                raise TypeError("header names and line starts are bytes")
        self.lines = dict(lines)


def forward_head(
    method: str,
    start: bytes,
    headers: list[tuple[bytes, bytes]],
    lines: ForwardLines,
    client_ip: str,
) -> bytes:
    """A request head to send upstream, one bytes: ``method`` and a space, ``start`` (the
    rest of the request line and the lines of the router's own), each header of ``headers``
    that ``lines`` has a line start for (in order), then ``X-Forwarded-For``: the values of
    the request's own (if they are not one empty value), ``client_ip`` appended; and the
    blank line."""
    table = lines.lines
    parts = [method.encode(), b" ", start]
    forwarded: bytes | None = None
    for name, value in headers:
        line = table.get(name)
        if line is not None:
            parts += (line, value, b"\r\n")
        elif name == b"x-forwarded-for":
            forwarded = value if forwarded is None else forwarded + b", " + value
    parts.append(b"X-Forwarded-For: ")
    if forwarded:
        parts += (forwarded, b", ")
    parts += (client_ip.encode(), b"\r\n\r\n")
    return b"".join(parts)


# scan_response: the strict subset of HTTP/1.1 responses it reads itself.
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\t\x20-\x7e\x80-\xff]+")
_FIELD_LINE = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*"
    rb"[\x21-\x7e\x80-\xff])?)"
)
_NO_BODY = (204, 304)
#: At most this many header lines are scanned (more: the parser reads the response).
MAX_FIELDS = 64


class ResponseScan:
    """What :func:`scan_response` read of the last response it took: one a caller keeps and
    hands it every time (it is overwritten by the next one taken)."""

    __slots__ = ("block", "body_at", "keep_alive", "status")

    def __init__(self) -> None:
        self.status = 0
        self.block: bytes | None = None
        self.body_at = 0
        self.keep_alive = False


def _plain_fields(lines: list[bytes]) -> list[tuple[bytes, bytes, bytes]] | None:
    """(name, value, lowercased name) of each header line, or None if one is not plain."""
    fields = []
    for line in lines:
        field = _FIELD_LINE.fullmatch(line)
        if field is None:
            return None
        name, value = field.groups()
        fields.append((name, value, name.lower()))
    return fields


def _scan_head(data: bytes) -> tuple[int, int, list[tuple[bytes, bytes]], bool, int] | None:
    """(status, where the blank line starts, fields, keep-alive, Content-Length) of the
    plainest kind of head at the start of ``data``, or None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None or len(lines) - 1 > MAX_FIELDS:
        return None
    fields = []
    length = -1
    keep_alive = True
    plain = _plain_fields(lines[1:])
    if plain is None:
        return None
    for name, value, lower in plain:
        if lower == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        elif lower in _PARSER_JUDGES:
            return None
        elif lower == b"connection":
            token = value.lower()
            if token == b"close":
                keep_alive = False
            elif token != b"keep-alive":
                return None
        fields.append((name, value))
    if length < 0:
        return None
    return int(match.group(1)), end, fields, keep_alive, length


def scan_response(data: bytes, head_only: bool, scan: ResponseScan) -> bool:
    """Whether ``data`` is one whole response of the plainest kind, read without the parser
    into ``scan``; False for anything else (then the parser reads ``data`` as usual, and
    ``scan`` is as it was).

    Plainest: an ``HTTP/1.1`` status line with a final status and a reason phrase, at most
    ``MAX_FIELDS`` header lines ``name: value`` (token name, no folding, no empty value, no
    whitespace at the end of a value), exactly one decimal ``Content-Length``, no
    ``Transfer-Encoding``, ``Connection`` absent or exactly ``keep-alive`` or ``close``, and
    ``data`` ending exactly where the response does (after the head for HEAD, 204 and 304;
    after Content-Length body bytes otherwise). Every such response is one the parser reads
    the same way.

    Sets ``scan``'s ``status``, ``block``, ``body_at`` and ``keep_alive``: ``block`` is the
    end-to-end header lines joined ``Name: value\\r\\n`` (hop-by-hop ones left out), or None
    when a ``Location`` or ``Link`` header may need rewriting; ``body_at`` is where the body
    starts. :func:`head_fields` gives the header fields themselves.
    """
    if not isinstance(scan, ResponseScan):
        raise TypeError("scan_response takes bytes and a ResponseScan")
    head = _scan_head(data)
    if head is None:
        return False
    status, end, fields, keep_alive, length = head
    body_at = end + 4
    body = 0 if head_only or status in _NO_BODY else length
    if len(data) != body_at + body:
        return False
    scan.status, scan.body_at, scan.keep_alive = status, body_at, keep_alive
    block: list[bytes] = []
    for name, value in fields:
        lower = name.lower()
        if lower in _REWRITTEN:
            scan.block = None
            return True
        if lower not in HOP_BY_HOP:
            block.append(name + b": " + value + b"\r\n")
    scan.block = b"".join(block)
    return True


def head_fields(data: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of a head :func:`scan_response` took, as the parser gives them."""
    head = _scan_head(data)
    if head is None:
        raise ValueError("not a head scan_response takes")
    return head[2]


# scan_request: the strict subset of request heads it reads itself.
_REQUEST_LINE = re.compile(rb"(GET|HEAD) (/[\x21-\x22\x24-\x7e]*) HTTP/1\.([01])")


class RequestScan:
    """What :func:`scan_request` read of the last request head it took: one a caller keeps
    and hands it every time (it is overwritten by the next one taken)."""

    __slots__ = ("headers", "http11", "keep_alive", "method", "path", "query")

    def __init__(self) -> None:
        self.method = self.path = self.query = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.http11 = self.keep_alive = False


def scan_request(
    data: bytes, max_bytes: int, max_url: int, max_fields: int, scan: RequestScan
) -> bool:
    """Whether ``data`` is one whole request head of the plainest kind, read without the
    parser into ``scan``; False for anything else (then the parser reads ``data`` as usual,
    and ``scan`` is as it was).

    Plainest: ``GET`` or ``HEAD``, an origin-form target of visible ASCII without ``#``,
    ``HTTP/1.1`` or ``HTTP/1.0``, header lines as :func:`scan_response` takes them, no
    ``Content-Length``, ``Transfer-Encoding`` or ``Upgrade``, ``Connection`` absent or exactly
    ``keep-alive`` or ``close``, within the limits (target bytes, header fields, and the
    head's size counted as the protocol counts it: target plus name, value and 4 per field),
    and ``data`` ending exactly at the blank line. Every such head is one the parser reads
    the same way.

    Sets ``scan``'s ``method``, ``path``, ``query``, ``headers`` (names lowercased),
    ``http11`` and ``keep_alive``.
    """
    if not isinstance(scan, RequestScan):
        raise TypeError("scan_request takes bytes and a RequestScan")
    if not data.endswith(b"\r\n\r\n"):
        return False
    lines = data[:-4].split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        return False
    method, target, minor = match.groups()
    count = len(target)
    if count > max_url or len(lines) - 1 > max_fields:
        return False
    headers = []
    close = keep = False
    plain = _plain_fields(lines[1:])
    if plain is None:
        return False
    for name, value, lower in plain:
        if lower in _REQUEST_DECLINED:
            return False
        if lower == b"connection":
            token = value.lower()
            if token == b"close":
                close = True
            elif token == b"keep-alive":
                keep = True
            else:
                return False
        count += len(name) + len(value) + 4
        headers.append((lower, value))
    if count > max_bytes or (close and keep):
        return False
    http11 = minor == b"1"
    path, _, query = target.partition(b"?")
    scan.method = method.decode()
    scan.path, scan.query = path.decode("latin-1"), query.decode("latin-1")
    scan.headers, scan.http11 = headers, http11
    scan.keep_alive = not close if http11 else keep
    return True


def observe(hist: list[float], bounds: Sequence[float], value: float) -> None:
    """Counts ``value`` into a histogram (``metrics``: bucket counts, the +Inf one last, then
    the sum): the first bucket whose bound is not below it."""
    hist[bisect_left(bounds, value)] += 1
    hist[-1] += value


def write_to(transport: asyncio.WriteTransport, fd: int, queued: bool, data: bytes) -> bool:
    """``transport.write(data)``, by a write of its own when ``fd`` is the transport's plain
    socket (-1: none) and nothing waits in the transport's buffer; True when some of it may
    wait there now (the next call asks the transport whether it still does).

    The transport's own write costs more than the system call it makes; bytes the kernel
    takes at once need none of it. Only an open transport's descriptor is written (a closing
    one may have closed it, and the number may be another connection's by now); whatever the
    kernel does not take, and any error, is the transport's to buffer and to report."""
    if fd >= 0:
        if queued:
            queued = transport.get_write_buffer_size() != 0
        if not queued and not transport.is_closing():
            try:
                sent = os.write(fd, data)
            except OSError:  # EAGAIN: the transport buffers it; an error: it reports its own
                sent = 0
            if sent == len(data):
                return False
            data = data[sent:]
    transport.write(data)
    return True


#: The most one :func:`read_from` takes (what uvloop's own reads take).
READ_SIZE = 256 * 1024


def read_from(fd: int) -> bytes | None:
    """One read of the non-blocking socket ``fd``: its bytes, ``b""`` at its end (the peer
    closed it), None when nothing is there (a spurious wake-up); any other error raises
    :class:`OSError`. The compiled twin reads into one static buffer and copies out what came."""
    try:
        return os.read(fd, READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None


def send_to(fd: int, data: bytes, start: int) -> int:
    """Sends ``data[start:]`` on the non-blocking socket ``fd``: how many bytes the kernel took
    (0 when it takes none now: its buffer is full); any other error raises :class:`OSError`."""
    try:
        return os.write(fd, memoryview(data)[start:] if start else data)
    except (BlockingIOError, InterruptedError):
        return 0


class RequestTable:
    """Request duration histograms (bucket counts, the +Inf one last, then the sum) by method,
    route kind and status class, and the bytes sent by route kind: the per-request numbers of
    ``metrics``. ``methods``: the method labels, the last one also that of any other method;
    a kind or class is a row or slot index (-1: the last), a class ``status // 100``."""

    def __init__(
        self, methods: Sequence[str], kinds: int, classes: int, bounds: Sequence[float]
    ) -> None:
        self.methods = tuple(methods)
        if not self.methods or kinds < 1 or classes < 1:
            raise ValueError("a request table needs a method, a kind and a class")
        self._bounds = tuple(bounds)
        self._rows: dict[str, list[list[list[float] | None]]] = {
            method: [[None] * classes for _ in range(kinds)] for method in self.methods
        }
        self._sent = [0] * kinds

    def rows(self, method: str) -> list[list[list[float] | None]]:
        """A method's histograms by [kind][class] (copies), None where none was counted."""
        return [[None if h is None else list(h) for h in row] for row in self._rows[method]]

    def sent(self) -> list[int]:
        """Bytes sent, by kind."""
        return list(self._sent)


def count_request(
    table: RequestTable, method: str, kind: int, status: int, duration: float, sent: int
) -> None:
    """One request answered: its duration into its histogram, its bytes to its kind's."""
    rows = table._rows.get(method)
    if rows is None:
        rows = table._rows[table.methods[-1]]
    row = rows[kind]
    cls = status // 100
    hist = row[cls]
    if hist is None:
        hist = row[cls] = [0.0] * (len(table._bounds) + 2)
    observe(hist, table._bounds, duration)
    table._sent[kind] += sent


class UpstreamTable:
    """Requests to Harbor by project: counts by status label (a status of ``codes`` is its
    own, any other its class's, ``"5xx"``; a label given as one, any), and a duration
    histogram a project, as :class:`RequestTable`'s."""

    def __init__(self, codes: Iterable[int], bounds: Sequence[float]) -> None:
        self._labels = {code: str(code) for code in codes}
        for code in self._labels:
            if not 0 <= code < 1000:
                raise ValueError(f"status code out of range: {code}")
        self._bounds = tuple(bounds)
        self._projects: dict[str, tuple[dict[str, int], list[float]]] = {}

    def counts(self) -> dict[tuple[str, str], int]:
        """Requests by (project, status label)."""
        return {
            (project, label): count
            for project, (counts, _) in self._projects.items()
            for label, count in counts.items()
        }

    def durations(self) -> dict[str, list[float]]:
        """Each project's duration histogram (a copy)."""
        return {project: list(hist) for project, (_, hist) in self._projects.items()}


def count_upstream(table: UpstreamTable, project: str, label: str, duration: float) -> None:
    """A request to ``project`` that ended as ``label`` (a status's, ``timeout``, ``error``)."""
    calls = table._projects.get(project)
    if calls is None:
        calls = table._projects[project] = ({}, [0.0] * (len(table._bounds) + 2))
    counts = calls[0]
    counts[label] = counts.get(label, 0) + 1
    observe(calls[1], table._bounds, duration)


def count_answer(table: UpstreamTable, project: str, status: int, duration: float) -> None:
    """:func:`count_upstream` of a request Harbor answered with ``status``."""
    label = table._labels.get(status)
    if label is None:
        label = f"{status // 100}xx"
    count_upstream(table, project, label, duration)
