"""Hostile input, generated: request lines, targets and headers the router must judge itself.

Every generated request carries at least one defect the router decides on its own (a name,
tag or digest outside the grammar, traversal plain or percent-encoded, encoded CR/LF, another
Harbor project or Harbor's API reached through the prefix, a non-origin target, a bad version,
control bytes). Each one, over its own socket, ends with a 4xx, 501 or 505, or with the
connection closed — never another 5xx — and Harbor sees no ``/v2/`` request at all. The router
then still serves a good pull. Bounded and derandomized, so a run is repeatable.
"""

from __future__ import annotations

import socket
import time

import pytest
from conftest import Seeded
from harbor_emulator import HarborEmulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from router_runner import RunningRouter

pytestmark = pytest.mark.integration

PREFIX = "/v2/proxy/"
PROJECTS = ("dockerhub", "ghcr", "quay", "library", "proxy")
HEX = "0123456789abcdef"

good_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,6})?", fullmatch=True)
bad_component = st.sampled_from([
    "..", ".", "", "%2e%2e", "%2E%2e", ".%2e", "%2e", "..%2f", "%2f..", "%252e%252e", "%2f",
    "%00", "%0d%0a", "%0D%0A", "%0a", "a%0d%0aSet-Cookie:x", "A", "Library", "a..b", "-a",
    "a-", "_a", "a__", "a%20b", "~a", "a;b", "a,b",
])  # fmt: skip
good_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
digest = st.builds(lambda n: "sha256:" + "a" * n, st.integers(0, 63)) | st.builds(
    lambda n: "sha256:" + "b" * n, st.integers(65, 200)
)


@st.composite
def bad_name(draw: st.DrawFn) -> str:
    """A repository name with at least one defect, or one too long."""
    if draw(st.booleans()):
        parts = draw(st.lists(good_component, min_size=0, max_size=4))
        parts.insert(draw(st.integers(0, len(parts))), draw(bad_component))
        return "/".join(parts)
    return "/".join(["n" * 60] * draw(st.integers(5, 8)))  # over MAX_NAME_LENGTH


def section(name: str) -> st.SearchStrategy[str]:
    return st.one_of(
        good_tag.map(lambda tag: f"{name}/manifests/{tag}"),
        digest.map(lambda d: f"{name}/blobs/{d}"),
        st.just(f"{name}/tags/list"),
        digest.map(lambda d: f"{name}/referrers/{d}"),
    )


bad_reference = st.one_of(
    st.from_regex(r"[a-z0-9_]{129,300}", fullmatch=True).map(lambda t: f"acme/tool/manifests/{t}"),
    st.sampled_from(["-x", ".x", "a+b", "a%0d%0ab", "%2e%2e", "a%20b", "a%00"]).map(
        lambda t: f"acme/tool/manifests/{t}"
    ),
    digest.map(lambda d: f"acme/tool/blobs/{d}"),
    st.sampled_from(["md5:" + "c" * 32, "sha256:" + "A" * 64, "sha512:" + "d" * 64]).map(
        lambda d: f"acme/tool/blobs/{d}"
    ),
)

harbor_api = st.sampled_from([
    "api/v2.0/projects", "api/v2.0/users", "api/v2.0/systeminfo", "api/v2.0/projects/1/members",
    "api/v2.0/registries", "api/v2.0/users/current/password", "service/token", "c/login",
])  # fmt: skip

target = st.one_of(
    bad_name().flatmap(section).map(lambda rest: PREFIX + rest),
    bad_reference.map(lambda rest: PREFIX + rest),
    st.tuples(st.sampled_from(PROJECTS), st.sampled_from(["", "../", "%2e%2e/", "..%2f"])).map(
        lambda t: f"{PREFIX}..{'/' if not t[1] else '/' + t[1]}{t[0]}/library/alpine/manifests/3.19"
    ),
    harbor_api.map(lambda p: PREFIX + p),
    harbor_api.map(lambda p: PREFIX + "../../" + p),
    harbor_api.map(lambda p: "/" + p),
    st.sampled_from(PROJECTS).map(lambda p: f"/v2/{p}/library/alpine/manifests/3.19"),
    st.sampled_from(["http://evil.example", "https://127.0.0.1:1", "//evil.example"]).map(
        lambda h: h + "/v2/proxy/library/alpine/manifests/3.19"
    ),
    st.just("evil.example:443"),
    st.just("*"),
    st.text(st.characters(codec="latin-1", categories=["Cc"]), min_size=1, max_size=4).map(
        lambda c: f"/v2/proxy/library/al{c}pine/manifests/3.19"
    ),
)

method = st.sampled_from(["GET", "HEAD"]) | st.sampled_from(
    ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PRI", "get", "G\x00T"]
)
version = st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.2", ""])
header_name = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,30}", fullmatch=True) | st.sampled_from(
    ["Host", "Accept", "Authorization", "X-Forwarded-For", "Expect", "Range", "If-None-Match"]
)
header_value = st.text(st.characters(codec="latin-1"), max_size=60) | st.sampled_from(
    ["100-continue", "a\r\nX-Injected: 1", "a\r\n b", "\x00", "x" * 500, "bytes=0-1"]
)
headers = st.lists(st.tuples(header_name, header_value), max_size=5)


def request_bytes(m: str, t: str, v: str, hs: list[tuple[str, str]]) -> bytes:
    line = f"{m} {t} {v}".rstrip() if v else f"{m} {t}"
    lines = [line, "Host: router", "Connection: close"] + [f"{n}: {val}" for n, val in hs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes | None:
    """The first response head, or None when the router closed without one."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return None
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in received:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"no answer and no close for {data[:200]!r}") from None
            if not chunk:
                break
            received += chunk
    if not received:
        return None
    assert b"\r\n\r\n" in received, f"partial answer {received!r}"
    return received.partition(b"\r\n\r\n")[0]


def test_hostile_requests_are_judged_by_the_router(
    router: RunningRouter, harbor: HarborEmulator, seeded: Seeded
) -> None:
    harbor.clear_log()
    statuses: list[int] = []

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(method, target, version, headers)
    def one(m: str, t: str, v: str, hs: list[tuple[str, str]]) -> None:
        data = request_bytes(m, t, v, hs)
        head = exchange(router.port, data)
        if head is not None:
            status_line = head.split(b"\r\n", 1)[0]
            assert status_line.startswith(b"HTTP/1.1 "), head
            status = int(status_line[9:12])
            statuses.append(status)
            assert 400 <= status < 500 or status in (501, 505), (status, data[:300])
        assert harbor.count(path_contains="/v2/") == 0, (data[:300], harbor.requests()[-1].path)

    one()
    time.sleep(0.2)  # anything forwarded by mistake would be logged by now
    assert harbor.count(path_contains="/v2/") == 0, [r.path for r in harbor.requests()]
    assert len(set(statuses)) > 3, statuses  # the generator reaches several judgements
    image = seeded.get("ghcr", "acme/tool")
    status, _, body = router.request(
        "GET", f"/v2/proxy/{image.repo}/manifests/{image.tag}", {"Accept": image.media_type}
    )
    assert status == 200 and body == image.manifest
