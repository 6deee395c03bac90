"""The per-request byte work, both twins: every case runs on ``_wire_c`` and ``_wire_py``."""

from __future__ import annotations

import ast
import asyncio
import bisect
import contextlib
import errno
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

import httptools
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twins import implementations, selected

from harbor_router import _wire, _wire_py, splice


@pytest.fixture(params=implementations(_wire_py, "harbor_router._wire_c"))
def wire(request: pytest.FixtureRequest) -> ModuleType:
    return selected(request)


def test_compiled_module_loaded_when_required() -> None:
    if os.environ.get("HARBOR_ROUTER_REQUIRE_EXTENSIONS", "") in ("", "0"):
        pytest.skip("HARBOR_ROUTER_REQUIRE_EXTENSIONS is not set")
    assert _wire.IMPLEMENTATION == "c"
    assert _wire.end_to_end.__module__ == "harbor_router._wire_c"


def test_every_import_branch_of_wire_gives_every_name(wire: ModuleType) -> None:
    """``_wire`` picks a twin in three places (no extensions, compiled, the fallback): each
    imports every name it exports, and both twins have each one."""
    tree = ast.parse(Path(_wire.__file__).read_text())
    branches = [
        {alias.name for alias in node.names}
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in ("_wire_py", "_wire_c")
    ]
    exported = set(_wire.__all__) - {"IMPLEMENTATION", "Seconds"}
    assert len(branches) == 3
    assert all(names == exported for names in branches)
    assert all(hasattr(wire, name) for name in exported)


NAMES = {
    "a": True, "library/nginx": True, "a.b_c__d-e--f": True, "a/b/c/d": True, "0x": True,
    "": False, "A": False, "a/": False, "/a": False, "a//b": False, "a..b": False, "a___b": False,
    "_a": False, "a_": False, "a-": False, "-a": False, "a.": False, "a/.b": False, "..": False,
    "a%2fb": False, "a b": False, "é": False, "a\x00": False, "a/B": False,
}  # fmt: skip
TAGS = {
    "latest": True, "1.25": True, "_x": True, "A-b.c_D": True, "t" * 128: True,
    "": False, "-x": False, ".x": False, "t" * 129: False, "a+b": False, "a b": False, "é": False,
}  # fmt: skip
DIGESTS = {
    "sha256:" + "a" * 64: True, "sha512:" + "0" * 128: True,
    "sha256:" + "a" * 63: False, "sha256:" + "a" * 65: False, "sha256:" + "A" * 64: False,
    "sha512:" + "a" * 64: False, "md5:" + "a" * 32: False, "sha256" + "a" * 65: False, "": False,
    "sha256:" + "g" * 64: False,
}  # fmt: skip


@pytest.mark.parametrize(("name", "ok"), NAMES.items())
def test_valid_name(wire: ModuleType, name: str, ok: bool) -> None:
    assert wire.valid_name(name) is ok


@pytest.mark.parametrize(("tag", "ok"), TAGS.items())
def test_valid_tag(wire: ModuleType, tag: str, ok: bool) -> None:
    assert wire.valid_tag(tag) is ok


@pytest.mark.parametrize(("digest", "ok"), DIGESTS.items())
def test_valid_digest(wire: ModuleType, digest: str, ok: bool) -> None:
    assert wire.valid_digest(digest) is ok


_NAME_ALPHABET = st.sampled_from(list("ab09._-/A%"))


@settings(max_examples=3000, derandomize=True)
@given(st.text(_NAME_ALPHABET, max_size=12))
def test_compiled_name_check_agrees_with_the_grammar(name: str) -> None:
    compiled = pytest.importorskip("harbor_router._wire_c")
    assert compiled.valid_name(name) is _wire_py.valid_name(name)


@settings(max_examples=2000, derandomize=True)
@given(st.text(st.sampled_from(list("aZ09._-+:")), max_size=130))
def test_compiled_tag_and_digest_checks_agree(text: str) -> None:
    compiled = pytest.importorskip("harbor_router._wire_c")
    assert compiled.valid_tag(text) is _wire_py.valid_tag(text)
    assert compiled.valid_digest(text) is _wire_py.valid_digest(text)


_E2E_NAMES = [*sorted(_wire_py.HOP_BY_HOP), b"content-length", b"location", b"link", b"close",
              b"content-type"]  # fmt: skip


@st.composite
def _e2e_name(draw: st.DrawFn) -> bytes:
    """A name end_to_end tells apart, in any case, or one byte away from one (a letter's
    case bit flipped on a non-letter: '\\r' for '-', '@' for '`'), or any bytes."""
    name = bytearray(draw(st.sampled_from(_E2E_NAMES)))
    for i in range(len(name)):
        if draw(st.booleans()):
            name[i] ^= 0x20 if chr(name[i]).isalpha() else 0
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(name) - 1))
        name[at] = draw(st.sampled_from([0x0D, 0x40, 0x60, 0x5F, 0x7F, 0xC3, name[at] ^ 0x20]))
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=20))
    return bytes(name)


@settings(max_examples=3000, derandomize=True)
@given(
    st.lists(
        st.tuples(_e2e_name(), st.sampled_from([b"5", b" 12 ", b"x", b"/a/b, c", b"chunked"])),
        max_size=8,
    )
)
def test_compiled_end_to_end_agrees_with_the_twin(headers: list[tuple[bytes, bytes]]) -> None:
    """The compiled rewrite tells names apart without lowercasing them: byte for byte the
    twin's ``name.lower()`` comparisons, whatever the bytes."""
    compiled = pytest.importorskip("harbor_router._wire_c")
    assert compiled.end_to_end(headers, b"/a/", b"/z/") == _wire_py.end_to_end(
        headers, b"/a/", b"/z/"
    )


HEADERS = [
    (b"Content-Type", b"application/json"),
    (b"Connection", b"keep-alive, X-Internal"),
    (b"Keep-Alive", b"timeout=5"),
    (b"X-Internal", b"1"),
    (b"Location", b"/v2/dockerhub/library/nginx/blobs/sha256:aa"),
    (b"Link", b'</v2/dockerhub/library/nginx/tags/list?n=1&last=a>; rel="next"'),
    (b"Warning", b"a"),
    (b"Warning", b"b"),
    (b"Content-Length", b"5"),
]


def test_end_to_end(wire: ModuleType) -> None:
    out, known = wire.end_to_end(HEADERS, b"/v2/dockerhub/", b"/v2/proxy/")
    assert out == [
        (b"Content-Type", b"application/json"),
        (b"Location", b"/v2/proxy/library/nginx/blobs/sha256:aa"),
        (b"Link", b'</v2/proxy/library/nginx/tags/list?n=1&last=a>; rel="next"'),
        (b"Warning", b"a"),
        (b"Warning", b"b"),
        (b"Content-Length", b"5"),
    ]
    assert known == 5
    out, known = wire.end_to_end(
        [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")], b"/v2/x/", b"/v2/y/"
    )
    assert (out, known) == ([], -1)


def test_end_to_end_content_length_values(wire: ModuleType) -> None:
    """The length is the first Content-Length's digits (spaces around them allowed); anything
    else does not frame the body."""
    cases = {b"0": 0, b" 42 ": 42, b"1073741824": 1 << 30, b"": -1, b"12a": -1, b"-1": -1,
             b"+5": -1, b"9" * 19: -1, b"9" * 18: int(b"9" * 18)}  # fmt: skip
    for value, expected in cases.items():
        assert wire.end_to_end([(b"Content-Length", value)], b"/a/", b"/b/")[1] == expected
    two = [(b"Content-Length", b"3"), (b"content-length", b"3")]
    assert wire.end_to_end(two, b"/a/", b"/b/")[1] == 3


def test_build_head(wire: ModuleType) -> None:
    head = wire.build_head(b"HTTP/1.1 200 OK\r\n", [(b"A", b"1"), (b"B", b"2")], b"X: y\r\n", 3,
                           True)  # fmt: skip
    assert (
        head == b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nX: y\r\nContent-Length: 3\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert wire.build_head(b"HTTP/1.1 204 No Content\r\n", [], b"", -1, False) == (
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )


def test_build_head_is_the_twins(wire: ModuleType) -> None:
    lines = [(b"A", b"1"), (b"Bb", b"x y"), (b"C", b"")]
    kinds = [lambda: [], lambda: lines, lambda: tuple(lines), lambda: iter(lines),
             lambda: (list(line) for line in lines)]  # fmt: skip
    for kind in kinds:
        for length in (-1, 0, 7, 9, 10, 489, 12345678901234):
            for extra in (b"", b"X: y\r\n"):
                for close in (False, True):
                    status = b"HTTP/1.1 200 OK\r\n"
                    expected = _wire_py.build_head(status, kind(), extra, length, close)
                    assert wire.build_head(status, kind(), extra, length, close) == expected
    with pytest.raises(TypeError):
        wire.build_head(b"HTTP/1.1 200 OK\r\n", [(b"A", None)], b"", -1, False)


# scan_response: the plainest whole responses, read without the parser
def _scan_response(wire: ModuleType, data: bytes, head_only: bool) -> tuple[object, ...] | None:
    """What ``scan_response`` reads into a fresh ResponseScan, as a tuple (None: refused)."""
    scan = wire.ResponseScan()
    if not wire.scan_response(data, head_only, scan):
        return None
    return scan.status, scan.block, scan.body_at, scan.keep_alive


MANIFEST_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
    b"Docker-Content-Digest: sha256:aa\r\nX-Tab:\ta\tb\r\n\r\n{}"
)


def test_scan_response_reads_a_whole_plain_response(wire: ModuleType) -> None:
    status, block, body_at, keep_alive = _scan_response(wire, MANIFEST_RESPONSE, False)
    assert (status, keep_alive) == (200, True)
    assert MANIFEST_RESPONSE[body_at:] == b"{}"
    assert block == (
        b"Server: nginx\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Docker-Content-Digest: sha256:aa\r\nX-Tab: a\tb\r\n"
    )
    assert wire.head_fields(MANIFEST_RESPONSE) == [
        (b"Server", b"nginx"), (b"Content-Type", b"application/json"),
        (b"Content-Length", b"2"), (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"), (b"Docker-Content-Digest", b"sha256:aa"),
        (b"X-Tab", b"a\tb"),
    ]  # fmt: skip
    closing = MANIFEST_RESPONSE.replace(b"Connection: keep-alive", b"connection: CLOSE")
    assert _scan_response(wire, closing, False)[3] is False
    head_only = MANIFEST_RESPONSE[: -len(b"{}")]
    assert _scan_response(wire, head_only, True)[:3] == (200, block, len(head_only))
    not_modified = head_only.replace(b"200 OK", b"304 Not Modified")
    assert _scan_response(wire, not_modified, False)[0] == 304
    redirect = MANIFEST_RESPONSE.replace(b"Server: nginx", b"Location: /v2/p/a/blobs/x")
    assert _scan_response(wire, redirect, False)[1] is None  # Location: the rewriter's job
    assert _scan_response(wire, redirect.replace(b"Location", b"LINK"), False)[1] is None


SCAN_REFUSED = {
    "partial body": MANIFEST_RESPONSE[:-1],
    "bytes after the body": MANIFEST_RESPONSE + b"H",
    "partial head": MANIFEST_RESPONSE[:40],
    "HEAD answer with a body": MANIFEST_RESPONSE,  # scanned with head_only below
    "HTTP/1.0": MANIFEST_RESPONSE.replace(b"HTTP/1.1", b"HTTP/1.0"),
    "interim": MANIFEST_RESPONSE.replace(b"200 OK", b"100 Continue"),
    "no reason": MANIFEST_RESPONSE.replace(b"200 OK", b"200 "),
    "no length": MANIFEST_RESPONSE.replace(b"Content-Length: 2\r\n", b""),
    "two lengths": MANIFEST_RESPONSE.replace(b"Server: nginx", b"Content-Length: 2"),
    "signed length": MANIFEST_RESPONSE.replace(b"Length: 2", b"Length: +2"),
    "long length": MANIFEST_RESPONSE.replace(b"Length: 2", b"Length: 0000000000000000002"),
    "chunked": MANIFEST_RESPONSE.replace(b"Server: nginx", b"Transfer-Encoding: chunked"),
    "connection list": MANIFEST_RESPONSE.replace(b"keep-alive\r\n", b"keep-alive, Server\r\n"),
    "header named close": MANIFEST_RESPONSE.replace(b"Server", b"Close"),
    # the parser takes it for Connection: closes the connection where the scan would not
    "proxy-connection": MANIFEST_RESPONSE.replace(b"Server: nginx", b"Proxy-Connection: close"),
    "folded": MANIFEST_RESPONSE.replace(b"Server: nginx", b"Server: nginx\r\n x"),
    "space before colon": MANIFEST_RESPONSE.replace(b"Server:", b"Server :"),
    "empty value": MANIFEST_RESPONSE.replace(b"Server: nginx", b"Server:"),
    "trailing space": MANIFEST_RESPONSE.replace(b"nginx", b"nginx "),
    "bare LF": MANIFEST_RESPONSE.replace(b"nginx", b"ng\ninx"),
    "NUL": MANIFEST_RESPONSE.replace(b"nginx", b"ng\x00inx"),
    "bad name": MANIFEST_RESPONSE.replace(b"Server", b"Ser[ver"),
    "too many fields": MANIFEST_RESPONSE.replace(b"Server: nginx\r\n", b"X: y\r\n" * 64),
}


@pytest.mark.parametrize("case", SCAN_REFUSED)
def test_scan_response_leaves_the_rest_to_the_parser(wire: ModuleType, case: str) -> None:
    assert _scan_response(wire, SCAN_REFUSED[case], case.startswith("HEAD")) is None


def test_scan_response_overwrites_the_scan_it_is_given_only_when_it_takes_one(
    wire: ModuleType,
) -> None:
    scan = wire.ResponseScan()
    fields = ("status", "block", "body_at", "keep_alive")
    assert [getattr(scan, name) for name in fields] == [0, None, 0, False]
    assert wire.scan_response(MANIFEST_RESPONSE, False, scan) is True
    taken = [getattr(scan, name) for name in fields]
    assert taken == list(_scan_response(wire, MANIFEST_RESPONSE, False) or ())
    # refused after its head was read: the scan is as it was
    assert wire.scan_response(MANIFEST_RESPONSE[:-1], False, scan) is False
    assert [getattr(scan, name) for name in fields] == taken
    redirect = MANIFEST_RESPONSE.replace(b"200 OK", b"302 Found").replace(b"keep-alive", b"close")
    redirect = redirect.replace(b"Server: nginx", b"Location: /v2/p/a/blobs/x")
    assert wire.scan_response(redirect, False, scan) is True
    assert [getattr(scan, name) for name in fields] == [302, None, taken[2] + 10, False]
    for wrong in (None, wire.RequestScan()):
        with pytest.raises(TypeError):
            wire.scan_response(MANIFEST_RESPONSE, False, wrong)


@pytest.mark.parametrize("close", [False, True])
def test_whole_response_is_the_head_build_head_joins_and_the_body(
    wire: ModuleType, close: bool
) -> None:
    scan = wire.ResponseScan()
    for data in (MANIFEST_RESPONSE, MANIFEST_RESPONSE[: -len(b"{}")]):
        assert wire.scan_response(data, data != MANIFEST_RESPONSE, scan)
        block = scan.block
        for added in (b"", b"X-Router: a\r\n"):
            head = wire.build_head(b"HTTP/1.1 200 OK\r\n", (), block + added, -1, close)
            whole = wire.whole_response(b"HTTP/1.1 200 OK\r\n", block, added, close, data,
                                        scan.body_at)  # fmt: skip
            assert whole == head + data[scan.body_at :]
    assert wire.whole_response(b"S\r\n", b"", b"", False, b"abc", 3) == b"S\r\n\r\n"
    assert wire.whole_response(b"S\r\n", b"", b"", False, b"abc", 0) == b"S\r\n\r\nabc"
    for body_at in (-1, 4):
        with pytest.raises(ValueError):
            wire.whole_response(b"S\r\n", b"", b"", False, b"abc", body_at)


TAG_LIST = b'{"name":"hub/team/app","tags":["1.0"]}'
TAG_BLOCK = b"Content-Type: application/json\r\nContent-Length: 38\r\nX-A: b\r\n"
STATUS_200 = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize("close", [False, True])
def test_renamed_tag_response_is_the_whole_response_with_the_name_and_length_replaced(
    wire: ModuleType, close: bool
) -> None:
    renamed = b'{"name":"proxy/team/app","tags":["1.0"]}'
    for added in (b"", b"OCI-Namespace: docker.io\r\n"):
        for data, body_at in ((TAG_LIST, 0), (b"HEAD" + TAG_LIST, 4)):
            got = wire.renamed_tag_response(STATUS_200, TAG_BLOCK, added, close, data, body_at,
                                            "proxy/team/app")  # fmt: skip
            block = TAG_BLOCK.replace(b"Length: 38", b"Length: %d" % len(renamed))
            assert got == wire.whole_response(STATUS_200, block, added, close, renamed, 0)
    # the length line anywhere among the lines, alone, with a name of any printable length
    for block in (b"Content-Length: 38\r\n", b"A: b\r\nContent-Length: 38\r\n"):
        for name in ("p/" + "x" * 200, "p/a b!~"):
            got = wire.renamed_tag_response(STATUS_200, block, b"", close, TAG_LIST, 0, name)
            body = b'{"name":"%b"' % name.encode() + TAG_LIST[len(b'{"name":"hub/team/app"') :]
            new = block.replace(b"38", b"%d" % len(body))
            assert got == wire.whole_response(STATUS_200, new, b"", close, body, 0)
    # the first line that is exactly the old length's is the one rewritten
    twice = b"X: Content-Length: 38\r\nContent-Length: 38\r\nContent-Length: 38\r\n"
    got = wire.renamed_tag_response(STATUS_200, twice, b"", False, TAG_LIST, 0, "p/x")
    length = len(b'{"name":"p/x","tags":["1.0"]}')
    assert got is not None and b"\r\nContent-Length: %d\r\nContent-Length: 38\r\n" % length in got
    assert got.startswith(STATUS_200 + b"X: Content-Length: 38\r\n")


RENAME_REFUSED: dict[str, tuple[bytes, bytes, str]] = {  # (block, body, name)
    "another layout": (TAG_BLOCK, b'{ "name":"hub/team/app"}' + b" " * 14, "p/x"),
    "an escaped name": (TAG_BLOCK, b'{"name":"hub\\/team/app","tags":[]}    ', "p/x"),
    "no closing quote": (TAG_BLOCK, b'{"name":"hub/team/app' + b" " * 17, "p/x"),
    "a short body": (b"Content-Length: 8\r\n", b'{"name":', "p/x"),
    "no length line": (b"Content-Type: application/json\r\n", TAG_LIST, "p/x"),
    "another length": (TAG_BLOCK.replace(b"38", b"37"), TAG_LIST, "p/x"),
    "the length written otherwise": (
        TAG_BLOCK.replace(b"Content-Length", b"content-length"),
        TAG_LIST,
        "p/x",
    ),
    "the length inside another line": (b"X: Content-Length: 38\r\n", TAG_LIST, "p/x"),
    "a length line without its CRLF": (b"Content-Length: 38", TAG_LIST, "p/x"),
    "a quote in the name": (TAG_BLOCK, TAG_LIST, 'p/"x'),
    "a backslash in the name": (TAG_BLOCK, TAG_LIST, "p/\\x"),
    "a control byte in the name": (TAG_BLOCK, TAG_LIST, "p/\tx"),
    "DEL in the name": (TAG_BLOCK, TAG_LIST, "p/\x7fx"),
    "a non-ASCII name": (TAG_BLOCK, TAG_LIST, "p/é"),
}


@pytest.mark.parametrize("case", RENAME_REFUSED)
def test_renamed_tag_response_leaves_every_other_tag_list_to_the_handler(
    wire: ModuleType, case: str
) -> None:
    block, body, name = RENAME_REFUSED[case]
    if case != "another length":
        assert b"Content-Length: %d" % len(body) in block or "length" in case, case
    assert wire.renamed_tag_response(STATUS_200, block, b"", False, body, 0, name) is None


def test_renamed_tag_response_refuses_what_whole_response_refuses(wire: ModuleType) -> None:
    for body_at in (-1, len(TAG_LIST) + 1):
        with pytest.raises(ValueError):
            wire.renamed_tag_response(STATUS_200, TAG_BLOCK, b"", False, TAG_LIST, body_at, "p")
    for wrong in ((None, TAG_LIST, "p"), (TAG_BLOCK, None, "p"), (TAG_BLOCK, TAG_LIST, None),
                  (TAG_BLOCK, TAG_LIST, b"p")):  # fmt: skip
        block, data, name = wrong
        with pytest.raises(TypeError):
            wire.renamed_tag_response(STATUS_200, block, b"", False, data, 0, name)


@settings(max_examples=3000, derandomize=True, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"Content-Length: 38",
                b"Content-Length: 37",
                b"X: y",
                b"A:",
                b"Content-Length: 0",
                b"Content-Length: 38 ",
            ]
        ),
        max_size=4,
    ),
    st.booleans(),
    st.binary(max_size=40)
    | st.sampled_from([TAG_LIST, TAG_LIST.replace(b"hub", b"h\\b"), b'{"name":"', b'{"name":""}']),
    st.integers(0, 3),
    st.text(max_size=6) | st.sampled_from(["proxy/a", "p/x y", ""]),
)
def test_compiled_renamed_tag_response_agrees_with_the_twin(
    lines: list[bytes], crlf_last: bool, body: bytes, body_at: int, name: str
) -> None:
    compiled = pytest.importorskip("harbor_router._wire_c")
    block = b"\r\n".join(lines) + (b"\r\n" if lines and crlf_last else b"")
    data = b"HEAD"[:body_at] + body
    body_at = min(body_at, len(data))
    args = (STATUS_200, block, b"Y: z\r\n", crlf_last, data, body_at, name)
    assert compiled.renamed_tag_response(*args) == _wire_py.renamed_tag_response(*args)


def test_scan_response_reads_up_to_64_header_lines(wire: ModuleType) -> None:
    for count in (63, 64, 65):
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"X: y\r\n" * (count - 1) + b"\r\n"
        scanned = _scan_response(wire, response, False)
        assert (scanned is not None) == (count <= 64), count
        if scanned is not None:
            assert len(wire.head_fields(response)) == count
            assert scanned[1] == response[17:-2]


class _Parsed:
    """What httptools' response parser makes of some bytes."""

    def __init__(self, data: bytes, head_only: bool) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.head_done = self.complete = False
        parser = self.parser = httptools.HttpResponseParser(self)
        parser.feed_data(data)
        self.status = parser.get_status_code()
        if head_only and self.head_done:
            self.complete = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


_NAMES = st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Connection",
    b"Keep-Alive", b"Location", b"link", b"TE", b"Upgrade", b"X-A", b"Close", b"Server",
    b"Docker-Content-Digest", b"ETag", b"Proxy-Connection"])  # fmt: skip
_VALUE_SAMPLES = [b"2", b"close", b"keep-alive", b"Keep-Alive", b"chunked", b"/v2/p/a", b"a b",
                  b"\x80x", b'"sha256:aa"']  # fmt: skip
_VALUES = st.one_of(st.sampled_from(_VALUE_SAMPLES), st.binary(min_size=1, max_size=4))
_STATUS_LINES = st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found",
    b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 204 No Content", b"HTTP/1.0 200 OK",
    b"HTTP/1.1 100 Continue", b"HTTP/1.1 599 X\x80", b"HTTP/1.1 200 "])  # fmt: skip
# a byte replaced, inserted or removed somewhere (None: the response as built)
_MUTATIONS = st.one_of(
    st.none(),
    st.tuples(st.sampled_from("rid"), st.integers(0, 400), st.sampled_from(b"\r\n\t :a\x00\x7f")),
)


def _mutated(data: bytes, mutation: tuple[str, int, int] | None) -> bytes:
    if mutation is None:
        return data
    how, at, byte = mutation
    at %= len(data)
    cut = at + (how != "i")
    return data[:at] + (b"" if how == "d" else bytes([byte])) + data[cut:]


@settings(max_examples=6000, derandomize=True, deadline=None)
@given(
    _STATUS_LINES,
    st.lists(
        st.tuples(_NAMES, st.sampled_from([b": ", b": ", b":", b":\t", b" : "]), _VALUES),
        max_size=5,
    ),
    st.binary(max_size=8),
    st.integers(-1, 1),
    _MUTATIONS,
    st.booleans(),
)
def test_scan_response_reads_what_the_parser_reads(
    status_line: bytes,
    lines: list[tuple[bytes, bytes, bytes]],
    body: bytes,
    length_off: int,
    mutation: tuple[str, int, int] | None,
    head_only: bool,
) -> None:
    """Whatever the scan takes, httptools reads the same way: status, fields, body, the end
    of the message and keep-alive; both twins take exactly the same responses. The
    responses are plausible ones (a Content-Length near the body's length) with a byte
    changed here and there."""
    lines = [*lines, (b"Content-Length", b": ", str(len(body) + length_off).encode())]
    data = status_line + b"\r\n" + b"".join(n + s + v + b"\r\n" for n, s, v in lines)
    data += b"\r\n" + (b"" if head_only else body)
    data = _mutated(data, mutation)
    compiled = pytest.importorskip("harbor_router._wire_c")
    scanned = _scan_response(compiled, data, head_only)
    assert scanned == _scan_response(_wire_py, data, head_only)
    if scanned is None:
        return
    assert compiled.head_fields(data) == _wire_py.head_fields(data)
    status, block, body_at, keep_alive = scanned
    parsed = _Parsed(data, head_only)
    assert parsed.complete
    assert (parsed.status, parsed.fields, parsed.keep_alive) == (
        status, compiled.head_fields(data), keep_alive
    )  # fmt: skip
    if not head_only:
        assert parsed.body == data[body_at:]
    if block is not None:
        out, _ = _wire_py.end_to_end(parsed.fields, b"/v2/p/", b"/v2/q/")
        assert block == b"".join(n + b": " + v + b"\r\n" for n, v in out)


# scan_request: the plainest whole request heads, read without the parser
PULL = (
    b"GET /v2/proxy/library/nginx/manifests/latest?ns=docker.io&n=1 HTTP/1.1\r\n"
    b"Host: registry\r\nUser-Agent: skopeo\r\nAccept: a/b, c/d\r\nX-Forwarded-For: 10.0.0.1\r\n"
    b"Connection: Keep-Alive\r\n\r\n"
)
LIMITS = (16384, 8192, 100)  # head bytes, target bytes, header fields


def _scan_request(
    wire: ModuleType, data: bytes, max_bytes: int, max_url: int, max_fields: int
) -> tuple[object, ...] | None:
    """What ``scan_request`` reads into a fresh RequestScan, as a tuple (None: refused)."""
    scan = wire.RequestScan()
    if not wire.scan_request(data, max_bytes, max_url, max_fields, scan):
        return None
    return scan.method, scan.path, scan.query, scan.headers, scan.http11, scan.keep_alive


def test_scan_request_reads_a_whole_plain_head(wire: ModuleType) -> None:
    method, path, query, headers, http11, keep_alive = _scan_request(wire, PULL, *LIMITS)
    assert (method, path, query) == ("GET", "/v2/proxy/library/nginx/manifests/latest",
                                     "ns=docker.io&n=1")  # fmt: skip
    assert headers == [(b"host", b"registry"), (b"user-agent", b"skopeo"),
                       (b"accept", b"a/b, c/d"), (b"x-forwarded-for", b"10.0.0.1"),
                       (b"connection", b"Keep-Alive")]  # fmt: skip
    assert (http11, keep_alive) == (True, True)
    head = PULL.replace(b"GET", b"HEAD").replace(b"Keep-Alive", b"close")
    assert _scan_request(wire, head, *LIMITS)[0::4] == ("HEAD", True)
    assert _scan_request(wire, head, *LIMITS)[5] is False
    old = PULL.replace(b"HTTP/1.1", b"HTTP/1.0")
    assert _scan_request(wire, old, *LIMITS)[4:] == (False, True)
    assert _scan_request(wire, old.replace(b"Keep-Alive", b"close"), *LIMITS)[4:] == (False, False)
    assert _scan_request(wire, PULL.replace(b"?ns=docker.io&n=1", b""), *LIMITS)[2] == ""
    # the limits as the protocol counts them: target, then name + value + 4 per field
    target = len(b"/v2/proxy/library/nginx/manifests/latest?ns=docker.io&n=1")
    size = target + sum(len(n) + len(v) + 4 for n, v in headers)
    assert _scan_request(wire, PULL, size, 8192, 100) is not None
    assert _scan_request(wire, PULL, size - 1, 8192, 100) is None
    assert _scan_request(wire, PULL, 16384, target, 100) is not None
    assert _scan_request(wire, PULL, 16384, target - 1, 100) is None
    assert _scan_request(wire, PULL, 16384, 8192, 5) is not None
    assert _scan_request(wire, PULL, 16384, 8192, 4) is None


REQUEST_SCAN_REFUSED = {
    "partial": PULL[:-2],
    "two requests": PULL + PULL,
    "a body follows": PULL + b"x",
    "POST": PULL.replace(b"GET", b"POST"),
    "lowercase method": PULL.replace(b"GET", b"get"),
    "absolute form": PULL.replace(b"GET /", b"GET http://x/"),
    "asterisk": PULL.replace(b"/v2/proxy/library/nginx/manifests/latest?ns=docker.io&n=1", b"*"),
    "fragment": PULL.replace(b"&n=1", b"#n=1"),
    "space in target": PULL.replace(b"nginx/", b"ng inx/"),
    "non-ASCII target": PULL.replace(b"nginx", b"ngi\xc3\xa9nx"),
    "HTTP/2.0": PULL.replace(b"HTTP/1.1", b"HTTP/2.0"),
    "HTTP/1.10": PULL.replace(b"HTTP/1.1", b"HTTP/1.10"),
    "content-length": PULL.replace(b"Host", b"Content-Length: 0\r\nHost"),
    "chunked": PULL.replace(b"Host", b"Transfer-Encoding: chunked\r\nHost"),
    "upgrade": PULL.replace(b"Host", b"Upgrade: h2c\r\nHost"),
    "proxy-connection": PULL.replace(b"Host", b"Proxy-Connection: close\r\nHost"),
    "connection list": PULL.replace(b"Keep-Alive", b"Keep-Alive, Upgrade"),
    "keep-alive and close": PULL.replace(b"Host", b"Connection: close\r\nHost"),
    "folded": PULL.replace(b"skopeo", b"skopeo\r\n x"),
    "space before colon": PULL.replace(b"Host:", b"Host :"),
    "empty value": PULL.replace(b"Host: registry", b"Host:"),
    "bare LF": PULL.replace(b"Host: registry\r\n", b"Host: registry\n"),
    "NUL": PULL.replace(b"registry", b"regi\x00stry"),
    "leading CRLF": b"\r\n" + PULL,
}


@pytest.mark.parametrize("case", REQUEST_SCAN_REFUSED)
def test_scan_request_leaves_the_rest_to_the_parser(wire: ModuleType, case: str) -> None:
    assert _scan_request(wire, REQUEST_SCAN_REFUSED[case], *LIMITS) is None


def test_scan_request_overwrites_the_scan_it_is_given_only_when_it_takes_one(
    wire: ModuleType,
) -> None:
    scan = wire.RequestScan()
    fields = ("method", "path", "query", "headers", "http11", "keep_alive")
    assert [getattr(scan, name) for name in fields] == ["", "", "", [], False, False]
    assert wire.scan_request(PULL, *LIMITS, scan) is True
    taken = [getattr(scan, name) for name in fields]
    assert taken == list(_scan_request(wire, PULL, *LIMITS) or ())
    first_headers = scan.headers
    # refused after every header line was read: the scan is as it was
    both = PULL.replace(b"Host", b"Connection: close\r\nHost")
    assert wire.scan_request(both, *LIMITS, scan) is False
    assert [getattr(scan, name) for name in fields] == taken
    plain = b"HEAD /v2/ HTTP/1.0\r\nHost: registry\r\n\r\n"
    assert wire.scan_request(plain, *LIMITS, scan) is True
    assert [getattr(scan, name) for name in fields] == [
        "HEAD", "/v2/", "", [(b"host", b"registry")], False, False
    ]  # fmt: skip
    # each head's headers are a list of its own (a request holds on to the one it was given)
    assert scan.headers is not first_headers and first_headers == taken[3]
    assert len(first_headers) == 5
    for wrong in (None, wire.ResponseScan()):
        with pytest.raises(TypeError):
            wire.scan_request(PULL, *LIMITS, wrong)


class _ParsedRequest:
    """What httptools' request parser (and its URL parser) makes of some bytes."""

    def __init__(self, data: bytes) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.messages = 0
        self.parser = httptools.HttpRequestParser(self)
        self.parser.feed_data(data)
        url = httptools.parse_url(self.url)
        self.path = (url.path or b"").decode("latin-1")
        self.query = (url.query or b"").decode("latin-1")
        self.method = self.parser.get_method().decode()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.version = self.parser.get_http_version()
        self.keep_alive = bool(self.parser.should_keep_alive())

    def on_message_complete(self) -> None:
        self.messages += 1


_REQUEST_LINES = st.sampled_from([b"GET", b"HEAD", b"POST", b"GET "])
_TARGET_BYTES = st.binary(max_size=6).map(lambda b: b.replace(b"\r\n", b""))
_REQUEST_NAMES = st.sampled_from([b"Host", b"Accept", b"Connection", b"Content-Length",
    b"Transfer-Encoding", b"Upgrade", b"X-A", b"close", b"Keep-Alive",
    b"Proxy-Connection"])  # fmt: skip
_REQUEST_VALUES = st.one_of(
    st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"0", b"a, b", b"h2c"]),
    st.binary(min_size=1, max_size=4),
)


@settings(max_examples=6000, derandomize=True, deadline=None)
@given(
    _REQUEST_LINES,
    st.sampled_from([b"/v2/p/a/manifests/b", b"/v2/", b"/", b"/a?b=c?d", b"x"]),
    _TARGET_BYTES,
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2"]),
    st.lists(
        st.tuples(_REQUEST_NAMES, st.sampled_from([b": ", b":", b":\t", b" : "]), _REQUEST_VALUES),
        max_size=4,
    ),
    _MUTATIONS,
)
def test_scan_request_reads_what_the_parser_reads(
    method: bytes,
    target: bytes,
    noise: bytes,
    version: bytes,
    lines: list[tuple[bytes, bytes, bytes]],
    mutation: tuple[str, int, int] | None,
) -> None:
    """Whatever the scan takes, httptools reads the same way (method, path and query as
    parse_url splits them, lowercased fields, version, keep-alive, one whole message, no
    error); both twins take exactly the same heads."""
    data = method + b" " + target + noise + b" " + version + b"\r\n"
    data += b"".join(n + s + v + b"\r\n" for n, s, v in lines) + b"\r\n"
    data = _mutated(data, mutation)
    compiled = pytest.importorskip("harbor_router._wire_c")
    scanned = _scan_request(compiled, data, *LIMITS)
    assert scanned == _scan_request(_wire_py, data, *LIMITS)
    if scanned is None:
        return
    parsed = _ParsedRequest(data)
    assert parsed.messages == 1
    method_text, path, query, headers, http11, keep_alive = scanned
    assert (method_text, path, query, headers) == (
        parsed.method, parsed.path, parsed.query, parsed.fields
    )  # fmt: skip
    assert (http11, keep_alive) == (parsed.version == "1.1", parsed.keep_alive)


def test_scan_request_target_bytes_are_ones_the_parser_takes() -> None:
    """Every byte the scan lets into a target, at any place in the path and the query,
    is one httptools reads into the same path and query."""
    compiled = pytest.importorskip("harbor_router._wire_c")
    taken = 0
    for byte in range(256):
        for target in (b"/a%cb" % byte, b"/a?b%cc" % byte, b"/%c" % byte):
            data = b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"
            scanned = _scan_request(compiled, data, *LIMITS)
            assert scanned == _scan_request(_wire_py, data, *LIMITS)
            if scanned is not None:
                taken += 1
                parsed = _ParsedRequest(data)
                assert (parsed.messages, parsed.path, parsed.query) == (1, *scanned[1:3])
    assert taken == 3 * 93  # visible ASCII but '#'


@pytest.mark.parametrize("value", [0.0, 0.0004, 0.0005, 0.0006, 1.0, 29.9, 30.0, 31.0, 1e9])
def test_observe_counts_into_the_bucket_bisect_left_finds(wire: ModuleType, value: float) -> None:
    bounds = (0.0005, 0.001, 1.0, 30.0)
    hist = [0.0] * (len(bounds) + 2)
    wire.observe(hist, bounds, value)
    wire.observe(hist, bounds, value)
    expected = [0.0] * (len(bounds) + 2)
    expected[bisect.bisect_left(bounds, value)] = 2.0
    expected[-1] = 2 * value
    assert hist == expected


# the compiled scans read values eight bytes at a time and compare names a word at a time:
# every length around a word, every byte class at every place in one
_EDGE_BYTES = b"\x00\x01\x08\t\n\x0b\r\x1f \x21-:~\x7f\x80\xa0\xff"


def _edge_values() -> list[bytes]:
    values = []
    for length in range(18):
        values.append(b"v" * length)
        for at in range(length):
            for byte in _EDGE_BYTES:
                values.append(b"v" * at + bytes([byte]) + b"v" * (length - at - 1))
    return values


def test_compiled_scans_agree_on_values_of_every_length_and_byte() -> None:
    compiled = pytest.importorskip("harbor_router._wire_c")
    taken = 0
    for value in _edge_values():
        for before in (b"", b"X: y\r\n"):
            for after in (b"", b"Server: s\r\n"):
                response = (b"HTTP/1.1 200 OK\r\n" + before + b"Content-Length: 0\r\nA: " + value
                            + b"\r\n" + after + b"\r\n")  # fmt: skip
                scanned = _scan_response(compiled, response, False)
                assert scanned == _scan_response(_wire_py, response, False), response
                taken += scanned is not None
                if scanned is not None:
                    assert compiled.head_fields(response) == _wire_py.head_fields(response)
                request = (
                    b"GET / HTTP/1.1\r\n" + before + b"A: " + value + b"\r\n" + after + b"\r\n"
                )
                scanned = _scan_request(compiled, request, *LIMITS)
                assert scanned == _scan_request(_wire_py, request, *LIMITS), request
        reason = b"HTTP/1.1 200 " + value + b"\r\nContent-Length: 0\r\n\r\n"
        assert _scan_response(compiled, reason, False) == _scan_response(_wire_py, reason, False)
    assert taken > 1000


def _spellings(name: bytes) -> list[bytes]:
    """``name`` in other cases, and with each byte changed to a token byte near it in the
    case folding (and to one that is not a token byte)."""
    out = [name, name.upper(), name.title(), name.swapcase(), name[:-1], name + b"s"]
    for at in range(len(name)):
        for byte in b"Aa-_^~`@[{|0\r":
            out.append(name[:at] + bytes([byte]) + name[at + 1 :])
    return out


_SPECIAL_NAMES = [*_wire_py.HOP_BY_HOP, b"content-length", b"close", b"location", b"link",
                  b"host", b"accept", b"user-agent", b"range", b"if-range", b"if-none-match",
                  b"x-forwarded-for", b"authorization", b"accept-encoding"]  # fmt: skip


@pytest.mark.parametrize("name", sorted(_SPECIAL_NAMES))
def test_compiled_scans_agree_on_names_near_the_ones_they_know(name: bytes) -> None:
    compiled = pytest.importorskip("harbor_router._wire_c")
    for spelling in _spellings(name):
        for value in (b"2", b"x", b"close", b"keep-alive", b"CLOSE", b"Keep-Alive", b"clos",
                      b"closed", b"keep_alive", b"keep-alivf", b"keep-alive2"):  # fmt: skip
            line = spelling + b": " + value + b"\r\n"
            response = b"HTTP/1.1 200 OK\r\n" + line + b"Content-Length: 2\r\n\r\n{}"
            scanned = _scan_response(compiled, response, False)
            assert scanned == _scan_response(_wire_py, response, False), response
            request = b"GET /a HTTP/1.1\r\nHost: h\r\n" + line + b"\r\n"
            scanned = _scan_request(compiled, request, *LIMITS)
            assert scanned == _scan_request(_wire_py, request, *LIMITS), request


def test_scan_response_leaves_every_hop_by_hop_line_out_of_the_block(wire: ModuleType) -> None:
    for name in sorted(_wire_py.HOP_BY_HOP - {b"connection", b"transfer-encoding",
                                               b"proxy-connection"}):  # fmt: skip
        response = MANIFEST_RESPONSE.replace(b"Server: nginx", name.title() + b": x")
        scanned = _scan_response(wire, response, False)
        assert scanned is not None and name.title() not in scanned[1], name


def test_compiled_request_scan_agrees_on_targets_of_every_length_and_byte() -> None:
    """The target is read eight bytes at a time too: every length around a word, in the path
    and in the query, with a byte of each class at every place."""
    compiled = pytest.importorskip("harbor_router._wire_c")
    for length in range(18):
        for at in range(length):
            for byte in b'\x00\t !"#$%/?@~\x7f\x80\xff':
                part = b"a" * at + bytes([byte]) + b"a" * (length - at - 1)
                for target in (b"/" + part, b"/" + part + b"?q", b"/x?" + part, b"/?" + part):
                    data = b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"
                    scanned = _scan_request(compiled, data, *LIMITS)
                    assert scanned == _scan_request(_wire_py, data, *LIMITS), data


# the compiled scans skip name, value and target bytes sixteen at a time (SSE2), the last step
# the sixteen bytes that end at the scan's end: every length around one and two such steps,
# every byte value at every place, and runs that end at every distance from the buffer's end
_RUN_LENGTHS = [*range(1, 19), *range(30, 35)]
_NAME_FILL = b"aZ0-9zA"  # the bytes skipped sixteen at a time: letters, digits and '-'


def _agree_on_response(compiled: ModuleType, response: bytes, head_only: bool = False) -> bool:
    scanned = _scan_response(compiled, response, head_only)
    assert scanned == _scan_response(_wire_py, response, head_only), response
    if scanned is not None:
        assert compiled.head_fields(response) == _wire_py.head_fields(response), response
    return scanned is not None


def _agree_on_request(compiled: ModuleType, request: bytes) -> bool:
    scanned = _scan_request(compiled, request, *LIMITS)
    assert scanned == _scan_request(_wire_py, request, *LIMITS), request
    return scanned is not None


def _with_every_byte(fill: bytes, length: int) -> list[bytes]:
    """``length`` bytes of ``fill`` (repeated), and the same with each byte value at each place."""
    plain = (fill * (length // len(fill) + 1))[:length]
    return [plain] + [plain[:at] + bytes([byte]) + plain[at + 1 :]
                      for at in range(length) for byte in range(256)]  # fmt: skip


def test_compiled_scans_agree_on_names_of_every_length_and_byte() -> None:
    compiled = pytest.importorskip("harbor_router._wire_c")
    taken = 0
    for length in _RUN_LENGTHS:
        for name in _with_every_byte(_NAME_FILL, length):
            line = name + b": v\r\n"
            taken += _agree_on_response(
                compiled, b"HTTP/1.1 200 OK\r\n" + line + b"Content-Length: 0\r\n\r\n"
            )
            _agree_on_request(compiled, b"GET / HTTP/1.1\r\n" + line + b"\r\n")
    assert taken > 2000


def test_compiled_scans_agree_on_long_values_of_every_byte() -> None:
    compiled = pytest.importorskip("harbor_router._wire_c")
    taken = 0
    for length in _RUN_LENGTHS:
        for value in _with_every_byte(b"vA1 ~,", length):
            line = b"A: " + value + b"\r\n"
            taken += _agree_on_response(
                compiled, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + line + b"\r\n"
            )
            _agree_on_request(compiled, b"GET / HTTP/1.1\r\n" + line + b"\r\n")
            _agree_on_response(
                compiled, b"HTTP/1.1 200 " + value + b"\r\nContent-Length: 0\r\n\r\n"
            )
    assert taken > 2000


def test_compiled_scans_agree_where_a_head_ends_at_the_buffer_end() -> None:
    """The last line's name and value at every distance from the end of the buffer (a head
    with no body after it, or a few body bytes), a byte of each class last or next to last."""
    compiled = pytest.importorskip("harbor_router._wire_c")
    taken = 0
    for name_length in range(1, 20):
        for value_length in range(1, 20):
            for last in b"\x00\t\r\x1f -:_~\x7f\x80\xff":
                for at in (name_length - 1, name_length - 2):
                    name = (_NAME_FILL * 3)[:name_length]
                    if at >= 0:
                        name = name[:at] + bytes([last]) + name[at + 1 :]
                    value = (b"x" * value_length)[:-1] + bytes([last])
                    for body in (b"", b"{", b"{}\r\n"):
                        head = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
                                + name + b": " + value + b"\r\n\r\n")  # fmt: skip
                        taken += _agree_on_response(compiled, head + body)
                        _agree_on_response(compiled, head, True)
                        _agree_on_response(compiled, head[:-1] + body)
                    _agree_on_request(compiled, b"GET / HTTP/1.1\r\n" + name + b": " + value
                                      + b"\r\n\r\n")  # fmt: skip
    assert taken > 1000


def test_compiled_request_scan_agrees_on_short_heads_and_long_targets() -> None:
    """Heads shorter than sixteen bytes past the request line's start (no step of sixteen at
    all), and targets with a byte of each class at each place of one and two steps."""
    compiled = pytest.importorskip("harbor_router._wire_c")
    for length in range(0, 6):
        for target in _with_every_byte(b"/a", length + 1):
            for tail in (b"", b"A:b\r\n"):
                _agree_on_request(compiled, b"GET " + target + b" HTTP/1.1\r\n" + tail + b"\r\n")
                _agree_on_request(compiled, b"HEAD " + target + b" HTTP/1.0\r\n" + tail + b"\r\n")
    for length in (15, 16, 17, 31, 32, 33):
        for part in _with_every_byte(b"a/b.c", length):
            for target in (b"/" + part, b"/x?" + part, b"/" + part + b"?q"):
                _agree_on_request(compiled, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")


def test_scan_request_lines_are_the_ones_of_this_head(wire: ModuleType) -> None:
    """The compiled scan hands out the previous head's line again when it is the same; a
    value that differs in a byte, or in length, is this head's own."""
    first = _scan_request(wire, PULL, *LIMITS)[3]
    assert _scan_request(wire, PULL, *LIMITS)[3] == first
    for host in (b"registrx", b"Registry", b"registry2", b"r"):
        other = PULL.replace(b"Host: registry", b"Host: " + host)
        assert _scan_request(wire, other, *LIMITS)[3][0] == (b"host", host)
    assert _scan_request(wire, PULL, *LIMITS)[3] == first


def test_scan_request_lines_that_differ_anywhere_are_this_heads(wire: ModuleType) -> None:
    """The previous value is compared a word at a time: of every length around one and two
    words, a value with any one byte changed is this head's own."""
    for length in range(1, 20):
        value = b"abcdefghijklmnopqrstuvwxyz"[:length]
        head = b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n"
        for at in range(length):
            other = value[:at] + b"X" + value[at + 1 :]
            scanned = _scan_request(wire, head, *LIMITS)
            assert scanned is not None and scanned[3] == [(b"host", value)]
            scanned = _scan_request(wire, head.replace(value, other), *LIMITS)
            assert scanned is not None and scanned[3] == [(b"host", other)]


# write_to: bytes the kernel takes at once go to the socket itself, the rest to the transport
# (whose buffer then keeps the order), and a closing transport's descriptor is never written.
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
Reader = Callable[[int], None]


class _Quiet(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def _with_connection(loop_name: str, body: Callable[..., Awaitable[None]]) -> bytes:
    """Runs ``body(transport, fd, protocol, read_some)`` on a loopback connection whose peer
    reads nothing until ``body`` returns (but what ``read_some(n)`` reads at once); what the
    peer received, to EOF."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname()[:2], timeout=10)
        peer, _ = listener.accept()
    received = bytearray()

    def read() -> None:
        while chunk := peer.recv(1 << 20):
            received.extend(chunk)

    def read_some(n: int) -> None:
        while n > 0:
            chunk = peer.recv(n)
            received.extend(chunk)
            n -= len(chunk)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(_Quiet, sock=ours)
        await body(transport, splice.plain_fd(transport), protocol, read_some)
        reader = loop.run_in_executor(None, read)
        transport.close()
        await asyncio.wait_for(protocol.lost, 10)
        await asyncio.wait_for(reader, 10)

    with peer, asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        peer.settimeout(10)
        ours.setblocking(False)
        runner.run(main())
    return bytes(received)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_write_to_sends_itself_what_the_kernel_takes_and_keeps_the_order(
    wire: ModuleType, loop_name: str
) -> None:
    small, large, tail = b"a" * 100, bytes(range(256)) * 32768, b"the end"  # 8 MiB unread

    async def body(
        transport: asyncio.Transport, fd: int, protocol: _Quiet, read_some: Reader
    ) -> None:
        assert fd >= 0
        assert wire.write_to(transport, fd, False, small) is False  # taken whole, by a send
        assert transport.get_write_buffer_size() == 0
        assert wire.write_to(transport, fd, False, large) is True  # the kernel took a part
        waiting = transport.get_write_buffer_size()
        assert 0 < waiting < len(large)
        read_some(len(large) - waiting)  # the socket has room again; the buffer still waits
        assert wire.write_to(transport, fd, True, tail) is True  # behind what waits
        assert transport.get_write_buffer_size() == waiting + len(tail)

    assert _with_connection(loop_name, body) == small + large + tail


@pytest.mark.parametrize("loop_name", LOOPS)
def test_write_to_asks_the_transport_whether_its_buffer_emptied(
    wire: ModuleType, loop_name: str
) -> None:
    async def body(
        transport: asyncio.Transport, fd: int, protocol: _Quiet, read_some: Reader
    ) -> None:
        assert wire.write_to(transport, fd, True, b"one") is False  # queued, but it is empty
        assert wire.write_to(transport, -1, False, b"two") is True  # no socket: the transport's
        await asyncio.sleep(0)
        assert wire.write_to(transport, fd, True, b"three") is False

    assert _with_connection(loop_name, body) == b"onetwothree"


@pytest.mark.parametrize("loop_name", LOOPS)
def test_write_to_never_writes_the_descriptor_of_a_closing_transport(
    wire: ModuleType, loop_name: str
) -> None:
    """Closing, the transport may have closed the descriptor, and its number may be another
    connection's by now: the write is the transport's (which drops it)."""

    async def body(
        transport: asyncio.Transport, fd: int, protocol: _Quiet, read_some: Reader
    ) -> None:
        assert wire.write_to(transport, fd, False, b"before") is False
        transport.close()
        with contextlib.suppress(RuntimeError):  # the transport's own answer
            wire.write_to(transport, fd, False, b"after")
        await asyncio.wait_for(protocol.lost, 10)

    assert _with_connection(loop_name, body) == b"before"


class _Fake:
    """A transport of another type: open unless told, its buffer empty, what it was given."""

    def __init__(self, closing: bool) -> None:
        self.closing = closing
        self.written: list[bytes] = []

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_write_to_asks_each_transport_its_own_questions(wire: ModuleType, loop_name: str) -> None:
    """Transports of several types in turn: each answers for itself (the compiled twin calls
    the methods of a type found once, for a type whose instances all have the same ones)."""

    async def body(
        transport: asyncio.Transport, fd: int, protocol: _Quiet, read_some: Reader
    ) -> None:
        closing, shadowed = _Fake(True), _Fake(False)
        shadowed.is_closing = lambda: True  # type: ignore[method-assign]
        assert wire.write_to(transport, fd, False, b"one") is False
        for fake in (closing, shadowed):  # the socket's descriptor, but a closing transport
            assert wire.write_to(fake, fd, False, b"not") is True
            assert wire.write_to(transport, fd, True, b"two") is False
        assert closing.written == shadowed.written == [b"not"]
        transport.close()
        with contextlib.suppress(RuntimeError):  # the transport's own answer
            wire.write_to(transport, fd, False, b"after")
        assert wire.write_to(_Fake(False), -1, False, b"none") is True
        await asyncio.wait_for(protocol.lost, 10)

    assert _with_connection(loop_name, body) == b"onetwotwo"


# -- the metrics tables: both twins against the dictionaries and lists they replace ----------

_TABLE_BOUNDS = (0.0005, 0.001, 1.0, 30.0)
_TABLE_METHODS = ("GET", "HEAD", "PUT", "OTHER")  # the last: any other method
_KINDS, _CLASSES = 4, 10
# the fixture is only a module: nothing carries over between examples
_STATELESS = [HealthCheck.function_scoped_fixture]
_DURATIONS = st.one_of(
    st.sampled_from([0.0, 0.0005, 0.001, 30.0, 31.0, -1.0, float("inf")]),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
)


def _new_histogram() -> list[float]:
    return [0.0] * (len(_TABLE_BOUNDS) + 2)


def _observed(hist: list[float], value: float) -> None:
    hist[bisect.bisect_left(_TABLE_BOUNDS, value)] += 1
    hist[-1] += value


_REQUESTS = st.lists(
    st.tuples(
        st.sampled_from([*_TABLE_METHODS, "POST", "get", "", "BREW"]),
        st.integers(-_KINDS - 1, _KINDS),  # out of range too: IndexError, nothing counted
        st.integers(-1100, 1100),  # a class out of range too
        _DURATIONS,
        st.integers(0, 2**40),
    ),
    max_size=60,
)


@given(requests=_REQUESTS)
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=_STATELESS)
def test_request_table_counts_as_lists_indexed_by_method_kind_and_class(
    wire: ModuleType, requests: list[tuple[str, int, int, float, int]]
) -> None:
    table = wire.RequestTable(_TABLE_METHODS, _KINDS, _CLASSES, _TABLE_BOUNDS)
    rows: dict[str, list[list[list[float] | None]]] = {
        m: [[None] * _CLASSES for _ in range(_KINDS)] for m in _TABLE_METHODS
    }
    sent = [0] * _KINDS
    for method, kind, status, duration, size in requests:
        row = rows.get(method, rows["OTHER"])
        try:
            cells = row[kind]
            hist = cells[status // 100]
        except IndexError:
            with pytest.raises(IndexError):
                wire.count_request(table, method, kind, status, duration, size)
            continue
        if hist is None:
            hist = cells[status // 100] = _new_histogram()
        _observed(hist, duration)
        sent[kind] += size
        wire.count_request(table, method, kind, status, duration, size)
    assert {m: table.rows(m) for m in table.methods} == rows
    assert table.sent() == sent


def test_request_table_refuses_what_it_cannot_index(wire: ModuleType) -> None:
    with pytest.raises(ValueError):
        wire.RequestTable((), 1, 1, _TABLE_BOUNDS)
    with pytest.raises(ValueError):
        wire.RequestTable(("GET",), 0, 1, _TABLE_BOUNDS)
    with pytest.raises(KeyError):
        wire.RequestTable(("GET",), 1, 1, _TABLE_BOUNDS).rows("HEAD")


_CODES = (200, 304, 404, 503)
# a project given as a copy of its name too: the compiled table keeps the last project looked up
# by identity, so an equal string that is another object must find the same record
_UPSTREAM = st.lists(
    st.tuples(
        st.booleans(),
        st.sampled_from(["dockerhub", "quay", "ghcr"]),
        st.booleans(),
        st.one_of(st.sampled_from(_CODES), st.integers(-1100, 1100)),
        st.sampled_from(["timeout", "error", "200", "5xx", "10xx", "other"]),
        _DURATIONS,
    ),
    max_size=60,
)


@given(calls=_UPSTREAM)
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=_STATELESS)
def test_upstream_table_counts_as_a_dict_by_project_and_label(
    wire: ModuleType, calls: list[tuple[bool, str, bool, int, str, float]]
) -> None:
    table = wire.UpstreamTable(_CODES, _TABLE_BOUNDS)
    counts: dict[tuple[str, str], int] = {}
    durations: dict[str, list[float]] = {}
    for answered, name, copy, status, label, duration in calls:
        project = "".join(list(name)) if copy else name
        if answered:
            label = str(status) if status in _CODES else f"{status // 100}xx"
            wire.count_answer(table, project, status, duration)
        else:
            wire.count_upstream(table, project, label, duration)
        counts[name, label] = counts.get((name, label), 0) + 1
        _observed(durations.setdefault(name, _new_histogram()), duration)
    assert table.counts() == counts
    assert table.durations() == durations


def test_upstream_table_refuses_a_code_of_more_than_three_digits(wire: ModuleType) -> None:
    with pytest.raises(ValueError):
        wire.UpstreamTable((200, 1000), _TABLE_BOUNDS)


# forward_head: the upstream request head of a hit
_LINES = {b"accept": b"Accept: ", b"range": b"Range: ", b"if-range": b"If-Range: ",
          b"if-none-match": b"If-None-Match: ", b"user-agent": b"User-Agent: "}  # fmt: skip
_START = b"/v2/p/library/nginx/manifests/1 HTTP/1.1\r\nHost: harbor\r\n"


def _old_request_head(
    method: str, start: bytes, headers: list[tuple[bytes, bytes]], lines: dict[bytes, bytes],
    client_ip: str,
) -> bytes:  # fmt: skip
    """The head ``Forwarder.request_head`` joined before ``forward_head`` did: the method
    word, the start, the lines it forwards, the client's X-Forwarded-For values (a comma list,
    unless they are one empty one) with the client's address appended, the blank line."""
    kept = [lines[name] + value + b"\r\n" for name, value in headers if name in lines]
    forwarded = b", ".join(
        value for name, value in headers if name == b"x-forwarded-for" and name not in lines
    )
    ip = client_ip.encode()
    last = forwarded + b", " + ip if forwarded else ip
    head = [method.encode(), b" ", start, *kept, b"X-Forwarded-For: ", last, b"\r\n\r\n"]
    return b"".join(head)


def test_forward_head(wire: ModuleType) -> None:
    lines = wire.ForwardLines(_LINES)
    headers = [(b"host", b"registry"), (b"accept", b"a/b"), (b"x-forwarded-for", b"10.0.0.1"),
               (b"authorization", b"Basic x"), (b"accept", b"c/d"), (b"x-forwarded-for", b"::1"),
               (b"cookie", b"c")]  # fmt: skip
    assert wire.forward_head("GET", _START, headers, lines, "127.0.0.1") == (
        b"GET " + _START + b"Accept: a/b\r\nAccept: c/d\r\n"
        b"X-Forwarded-For: 10.0.0.1, ::1, 127.0.0.1\r\n\r\n"
    )
    assert wire.forward_head("HEAD", b"", [], lines, "::1") == (
        b"HEAD X-Forwarded-For: ::1\r\n\r\n"
    )
    only_empty = [(b"x-forwarded-for", b""), (b"user-agent", b"u")]
    assert wire.forward_head("GET", _START, only_empty, lines, "1.2.3.4") == (
        b"GET " + _START + b"User-Agent: u\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
    )
    # a name the scans do not know, and X-Forwarded-For itself, may have a line start too
    own = wire.ForwardLines({b"x-a": b"X-A: ", b"x-forwarded-for": b"Via-XFF: "})
    headers = [(b"x-a", b"1"), (b"X-A", b"2"), (b"x-forwarded-for", b"3")]
    assert wire.forward_head("GET", b"", headers, own, "h") == (
        b"GET X-A: 1\r\nVia-XFF: 3\r\nX-Forwarded-For: h\r\n\r\n"
    )
    for bad in ({"accept": b"Accept: "}, {b"accept": "Accept: "}):
        with pytest.raises(TypeError):
            wire.ForwardLines(bad)


_HEAD_NAMES = st.one_of(
    st.sampled_from([*_LINES, *_SPECIAL_NAMES, b"x-a", b"Accept", b"accepts", b"hos", b""]),
    st.binary(max_size=20),
).flatmap(lambda name: st.sampled_from([name, bytes(bytearray(name))]))  # a copy: not the same
_HEAD_VALUES = st.one_of(st.sampled_from([b"", b"a", b"1.2.3.4"]), st.binary(max_size=12))


@settings(max_examples=3000, derandomize=True, deadline=None)
@given(
    st.sampled_from(["GET", "HEAD", "PUT", "GÉT"]),
    st.binary(max_size=40),
    st.lists(st.tuples(_HEAD_NAMES, _HEAD_VALUES), max_size=8),
    st.dictionaries(_HEAD_NAMES, st.binary(max_size=12), max_size=6),
    st.sampled_from(["127.0.0.1", "::1", "", "2001:db8::7", "é"]),
)
def test_forward_head_is_the_twins_and_the_old_join(
    method: str, start: bytes, headers: list[tuple[bytes, bytes]], lines: dict[bytes, bytes],
    client_ip: str,
) -> None:  # fmt: skip
    """Over arbitrary header lists and line tables, both twins join the head the hit path
    joined before (every forwarded line in order, X-Forwarded-For's values merged)."""
    compiled = pytest.importorskip("harbor_router._wire_c")
    expected = _old_request_head(method, start, headers, lines, client_ip)
    assert _wire_py.forward_head(method, start, headers, _wire_py.ForwardLines(lines),
                                 client_ip) == expected  # fmt: skip
    assert compiled.forward_head(method, start, headers, compiled.ForwardLines(lines),
                                 client_ip) == expected  # fmt: skip


def test_compiled_forward_head_refuses_what_is_not_bytes() -> None:
    compiled = pytest.importorskip("harbor_router._wire_c")
    lines = compiled.ForwardLines(_LINES)
    for headers in ([(b"accept", None)], [(None, b"x")], [[b"accept", b"x"]], [(b"a",)], [b"ab"]):
        with pytest.raises(TypeError):
            compiled.forward_head("GET", b"", headers, lines, "h")
    with pytest.raises(TypeError):
        compiled.forward_head("GET", b"", [], None, "h")
    blank = compiled.ForwardLines.__new__(compiled.ForwardLines)  # never initialised: no lines
    assert compiled.forward_head("GET", b"", [(b"accept", b"x")], blank, "h") == (
        b"GET X-Forwarded-For: h\r\n\r\n"
    )


def test_forward_head_of_a_scanned_request(wire: ModuleType) -> None:
    """The header names scan_request hands out (one object per known name) join alike."""
    data = PULL.replace(b"\r\n\r\n", b"\r\nRange: bytes=0-1\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n")
    for head in (PULL, data):
        headers = _scan_request(wire, head, *LIMITS)[3]
        for _ in range(2):  # the second time the scan hands out the lines it kept
            expected = _old_request_head("GET", _START, headers, _LINES, "10.1.2.3")
            got = wire.forward_head("GET", _START, headers, wire.ForwardLines(_LINES), "10.1.2.3")
            assert got == expected
            headers = _scan_request(wire, head, *LIMITS)[3]
    assert b"Range: bytes=0-1\r\n" in expected and b"10.0.0.9, 10.1.2.3\r\n" in expected


def test_perf_counter_is_time_perf_counter(wire: ModuleType) -> None:
    """The same clock in the same seconds: read between two of time.perf_counter's readings,
    it lies between them."""
    for _ in range(1000):
        before = time.perf_counter()
        now = wire.perf_counter()
        assert type(now) is float and before <= now <= time.perf_counter()


# read_from / send_to: a plain upstream socket read and written without a transport
def _socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair: ours non-blocking, the peer blocking (10 s)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname()[:2], timeout=10)
        peer, _ = listener.accept()
    ours.setblocking(False)
    peer.settimeout(10)
    return ours, peer


def test_read_from_gives_what_came_none_when_nothing_and_empty_at_the_end(
    wire: ModuleType,
) -> None:
    ours, peer = _socket_pair()
    with ours, peer:
        assert wire.read_from(ours.fileno()) is None  # nothing yet: a wake-up for nothing
        peer.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        deadline = time.monotonic() + 10
        got = wire.read_from(ours.fileno())
        while got is None and time.monotonic() < deadline:
            time.sleep(0.001)
            got = wire.read_from(ours.fileno())
        assert got == b"HTTP/1.1 200 OK\r\n\r\n" and type(got) is bytes
        assert wire.read_from(ours.fileno()) is None
        peer.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        assert wire.read_from(ours.fileno()) == b""  # the peer closed its side


def test_read_from_takes_at_most_256_kib_a_read(wire: ModuleType) -> None:
    ours, peer = _socket_pair()
    with ours, peer:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sent = bytes(range(256)) * 4096  # 1 MiB
        peer.sendall(sent)
        received = bytearray()
        deadline = time.monotonic() + 10
        while len(received) < len(sent) and time.monotonic() < deadline:
            got = wire.read_from(ours.fileno())
            if got is None:
                time.sleep(0.001)
                continue
            assert 0 < len(got) <= 256 * 1024
            received += got
        assert received == sent


def test_read_from_and_send_to_raise_other_errors(wire: ModuleType) -> None:
    ours, peer = _socket_pair()
    fd = ours.fileno()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # a reset
    time.sleep(0.05)
    with ours:
        with pytest.raises(ConnectionResetError):
            wire.read_from(fd)
        with pytest.raises(OSError):  # EPIPE (or the reset again)
            wire.send_to(fd, b"GET / HTTP/1.1\r\n\r\n", 0)
    with pytest.raises(OSError) as bad:
        wire.read_from(fd)  # closed now
    assert bad.value.errno == errno.EBADF


def test_send_to_sends_from_start_and_takes_none_when_full(wire: ModuleType) -> None:
    ours, peer = _socket_pair()
    with ours, peer:
        assert wire.send_to(ours.fileno(), b"0123456789", 4) == 6
        assert peer.recv(100) == b"456789"
        large = bytes(range(256)) * 65536  # 16 MiB, more than the two socket buffers hold
        at = 0
        while True:
            sent = wire.send_to(ours.fileno(), large, at)
            if sent == 0:
                break  # full: nothing taken, no error
            at += sent
        assert 0 < at < len(large)
        received = bytearray()
        while len(received) < at:
            received += peer.recv(1 << 20)
        assert received == large[:at]
