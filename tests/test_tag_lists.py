"""tags/list answers: the name rewritten to the client's, whatever form Harbor's list takes.

A scripted Harbor (one docker-hub proxy project, ``hub``) answers each repository's tag list
with the raw bytes a case gives. A first GET misses (the fan-out maps the repository), the
next ones hit: the first hit through the handler's task, the rest from the upstream callbacks
(``RequestHandler.fast``). A list in the plain form, whole in one read, is renamed by the relay
itself and goes out as Harbor wrote it, only the name and the ``Content-Length`` changed; every
other form is captured and rewritten (``replies.renamed_tags``), with the same answer.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from router_runner import RunningRouter, router_config
from support_tools import LoopbackServer, free_port, read_response, request_heads

PLAIN = b'{"name":"hub/team/app","tags":["1.0","1.1"]}\n'
RENAMED = b'{"name":"proxy/team/app","tags":["1.0","1.1"]}\n'
HITS = 3


def harbor_head(body: bytes, *lines: bytes, length_name: bytes = b"Content-Length") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += length_name + b": %d\r\n" % len(body)
    head += b"Docker-Distribution-Api-Version: registry/2.0\r\n" + b"".join(lines)
    return head + b"\r\n"


class TagHarbor:
    """The projects API, the project's summary, and ``/v2/hub/<repo>/tags/list`` from a table
    of raw responses (404 for any other path)."""

    def __init__(self) -> None:
        self.lists: dict[str, bytes] = {}
        self.tag_gets = 0
        self._server = LoopbackServer(self._serve).start()
        self.port = self._server.port

    def close(self) -> None:
        self._server.close()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        with sock:
            for head in request_heads(sock):
                sock.sendall(self._answer(head.split(b" ", 2)[1].decode()))

    def _answer(self, target: str) -> bytes:
        if target.startswith("/api/v2.0/projects?"):
            body = json.dumps([{"project_id": 1, "name": "hub", "registry_id": 1}]).encode()
        elif target.endswith("/summary"):
            body = b'{"registry": {"type": "docker-hub"}}'
        elif target.startswith("/v2/hub/") and target.endswith("/tags/list"):
            self.tag_gets += 1
            return self.lists.get(target[len("/v2/hub/") : -len("/tags/list")], NOT_FOUND)
        else:
            return NOT_FOUND
        return harbor_head(body) + body


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture
def harbor() -> Iterator[TagHarbor]:
    server = TagHarbor()
    yield server
    server.close()


@pytest.fixture
def router(harbor: TagHarbor) -> Iterator[RunningRouter]:
    config = router_config(f"http://127.0.0.1:{harbor.port}", "robot$x", "pw", free_port())
    running = RunningRouter(config).start()
    yield running
    running.close()


def get(router: RunningRouter, path: str, version: bytes = b"1.1") -> tuple[bytes, bytes]:
    """One GET on a connection of its own: the raw head and the body."""
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"GET %b HTTP/%b\r\nHost: r\r\n\r\n" % (path.encode(), version))
        return read_response(sock)


def fields(head: bytes) -> dict[bytes, bytes]:
    lines = head.split(b"\r\n")[1:]
    return {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines)}


def names(head: bytes) -> list[bytes]:
    return [line.partition(b":")[0].lower() for line in head.split(b"\r\n")[1:]]


def answers(router: RunningRouter, path: str, version: bytes = b"1.1") -> list[tuple[bytes, bytes]]:
    """The miss and then HITS hits; the last ones started on the fast path."""
    handler = router.app.handler
    assert handler is not None
    out = [get(router, path, version)]
    before = handler.fast_starts
    out += [get(router, path, version) for _ in range(HITS)]
    assert handler.fast_starts - before >= HITS - 1  # the first may find no idle connection yet
    return out


def test_a_plain_tag_list_hit_is_harbor_s_answer_with_the_name_replaced(
    router: RunningRouter, harbor: TagHarbor
) -> None:
    harbor.lists["team/app"] = harbor_head(PLAIN) + PLAIN
    got = answers(router, "/v2/proxy/team/app/tags/list")
    for head, body in got:
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert body == RENAMED
        assert fields(head)[b"content-type"] == b"application/json"
    # renamed by the relay: Harbor's header lines in Harbor's order, the length in its place
    last_head, _ = got[-1]
    assert names(last_head) == names(harbor_head(PLAIN)[:-4])
    assert fields(last_head)[b"content-length"] == b"%d" % len(RENAMED)
    assert harbor.tag_gets == 1 + HITS


def test_an_http_1_0_client_gets_the_renamed_list_and_the_close(
    router: RunningRouter, harbor: TagHarbor
) -> None:
    harbor.lists["team/app"] = harbor_head(PLAIN) + PLAIN
    for head, body in answers(router, "/v2/proxy/team/app/tags/list", b"1.0"):
        assert body == RENAMED
        assert fields(head)[b"connection"] == b"close"


# Forms the relay leaves to the handler: (Harbor's raw answer, the body the client gets).
ESCAPED = b'{"name":"hub\\/team\\/app","tags":["1.0"]}'
PRETTY = b'{\n  "name": "hub/team/app",\n  "tags": ["1.0"]\n}\n'
COMPACT = b'{"name":"proxy/team/app","tags":["1.0"]}'
LINKED = b'{"name":"hub/team/app","tags":["1.0"]}'
OTHER_FORMS: dict[str, tuple[bytes, bytes]] = {
    "lowercase length name": (
        harbor_head(PLAIN, length_name=b"content-length") + PLAIN,
        RENAMED,
    ),
    "escaped name": (harbor_head(ESCAPED) + ESCAPED, COMPACT),
    "pretty-printed": (harbor_head(PRETTY) + PRETTY, COMPACT),
    "a Link to the next page": (
        harbor_head(LINKED, b'Link: </v2/hub/team/app/tags/list?last=1.0&n=1>; rel="next"\r\n')
        + LINKED,
        b'{"name":"proxy/team/app","tags":["1.0"]}',
    ),
}


@pytest.mark.parametrize("case", OTHER_FORMS)
def test_other_forms_of_a_tag_list_get_the_same_answer(
    router: RunningRouter, harbor: TagHarbor, case: str
) -> None:
    raw, expected = OTHER_FORMS[case]
    harbor.lists["team/app"] = raw
    for head, body in answers(router, "/v2/proxy/team/app/tags/list"):
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert body == expected
        assert fields(head)[b"content-type"] == b"application/json"
        link = fields(head).get(b"link")
        if case.startswith("a Link"):
            assert link == b'</v2/proxy/team/app/tags/list?last=1.0&n=1>; rel="next"'
        else:
            assert link is None


def test_a_tag_list_that_is_not_json_is_a_bad_gateway_on_every_path(
    router: RunningRouter, harbor: TagHarbor
) -> None:
    harbor.lists["team/app"] = harbor_head(PLAIN) + PLAIN  # mapped by a good answer first
    assert get(router, "/v2/proxy/team/app/tags/list")[1] == RENAMED
    broken = b"<html>tags</html>"
    harbor.lists["team/app"] = harbor_head(broken) + broken
    for _ in range(HITS):
        head, body = get(router, "/v2/proxy/team/app/tags/list")
        assert head.startswith(b"HTTP/1.1 502 "), head
        assert b"invalid tag list" in body


def test_the_renamed_name_is_the_client_s_repository(
    router: RunningRouter, harbor: TagHarbor
) -> None:
    # (a one-part name is a Docker Hub official image's: asked for as library/<name>)
    for repo in ("library/a", "team/app", "deep/er/path/x"):
        listed = b'{"name":"hub/%b","tags":["v"]}' % repo.encode()
        harbor.lists[repo] = harbor_head(listed) + listed
        for _, body in answers(router, f"/v2/proxy/{repo}/tags/list"):
            assert json.loads(body) == {"name": f"proxy/{repo}", "tags": ["v"]}
