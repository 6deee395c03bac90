"""The per-request byte work, both twins: every case runs on ``_wire_c`` and ``_wire_py``."""

from __future__ import annotations

import os
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twins import implementations, selected

from harbor_router import _wire, _wire_py


@pytest.fixture(params=implementations(_wire_py, "harbor_router._wire_c"))
def wire(request: pytest.FixtureRequest) -> ModuleType:
    return selected(request)


def test_compiled_module_loaded_when_required() -> None:
    if os.environ.get("HARBOR_ROUTER_REQUIRE_EXTENSIONS", "") in ("", "0"):
        pytest.skip("HARBOR_ROUTER_REQUIRE_EXTENSIONS is not set")
    assert _wire.IMPLEMENTATION == "c"
    assert _wire.end_to_end.__module__ == "harbor_router._wire_c"


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
