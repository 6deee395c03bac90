"""Header tables and the Location/Link rewrite (DESIGN §2)."""

from __future__ import annotations

from harbor_router.headers import FORWARD_REQUEST, HOP_BY_HOP, Rewriter

R = Rewriter("dockerhub", "proxy")


def test_location_and_link_into_the_project_are_rewritten() -> None:
    out, _ = R.end_to_end(
        [
            (b"Location", b"/v2/dockerhub/library/nginx/blobs/sha256:aa"),
            (b"Link", b'</v2/dockerhub/library/nginx/tags/list?last=b&n=1>; rel="next"'),
        ]
    )
    assert out == [
        (b"Location", b"/v2/proxy/library/nginx/blobs/sha256:aa"),
        (b"Link", b'</v2/proxy/library/nginx/tags/list?last=b&n=1>; rel="next"'),
    ]


def test_absolute_location_to_storage_passes_untouched() -> None:
    url = b"https://storage.example.com/docker/registry/v2/blobs/sha256/aa/data?X-Amz=1"
    out, _ = R.end_to_end([(b"Location", url), (b"ETag", b'"/v2/dockerhub/x"')])
    assert out == [(b"Location", url), (b"ETag", b'"/v2/dockerhub/x"')]


def test_other_projects_paths_are_not_rewritten() -> None:
    value = b"/v2/ghcr/acme/tool/blobs/sha256:aa"
    assert R.end_to_end([(b"Location", value)])[0] == [(b"Location", value)]


def test_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    out, length_known = R.end_to_end(
        [
            (b"Content-Type", b"application/json"),
            (b"Connection", b"keep-alive, X-Internal"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Internal", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Warning", b"a"),
            (b"Warning", b"b"),
        ]
    )
    assert out == [(b"Content-Type", b"application/json"), (b"Warning", b"a"), (b"Warning", b"b")]
    assert length_known == -1


def test_content_length_frames_unless_chunked() -> None:
    assert R.end_to_end([(b"Content-Length", b"5")]) == ([(b"Content-Length", b"5")], 5)
    out, known = R.end_to_end([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")])
    assert (out, known) == ([], -1)


def test_tables_are_lowercase_and_disjoint() -> None:
    assert all(name == name.lower() for name in FORWARD_REQUEST)
    assert all(name == name.lower() for name in HOP_BY_HOP)
    assert not set(FORWARD_REQUEST) & HOP_BY_HOP
    assert b"authorization" not in FORWARD_REQUEST  # the robot account is used upstream
    assert b"cookie" not in FORWARD_REQUEST
