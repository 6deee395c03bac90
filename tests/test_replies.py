"""Rewriting a tag list's name (replies.renamed_tags): in place, or parsed and written again."""

from __future__ import annotations

import json

import pytest

from harbor_router import errors
from harbor_router.replies import renamed_tags

CLIENT = "proxy/library/nginx"


def test_distributions_own_layout_is_renamed_in_place() -> None:
    body = b'{"name":"dockerhub/library/nginx","tags":["1.25","latest"]}\n'
    out = renamed_tags(body, CLIENT, "dockerhub")
    assert out == b'{"name":"proxy/library/nginx","tags":["1.25","latest"]}\n'  # rest as sent


@pytest.mark.parametrize(
    "body",
    [
        b'{ "name": "dockerhub/library/nginx", "tags": ["a"] }',  # other spacing
        b'{"tags":["a"],"name":"dockerhub/library/nginx"}',  # other order
        b'{"name":"docker\\u0068ub/library/nginx","tags":["a"]}',  # an escape in the name
        b'{"name":"dockerhub/library/nginx\\"","tags":["a"]}',
    ],
)
def test_any_other_layout_is_parsed_and_written_again(body: bytes) -> None:
    out = renamed_tags(body, CLIENT, "dockerhub")
    assert json.loads(out) == {"name": CLIENT, "tags": ["a"]}
    assert b" " not in out  # written again, compact


@pytest.mark.parametrize("body", [b"", b"not json", b'{"name":', b'{"name":"unterminated'])
def test_an_invalid_list_is_harbors_fault(body: bytes) -> None:
    with pytest.raises(errors.BadGateway, match="dockerhub sent an invalid tag list"):
        renamed_tags(body, CLIENT, "dockerhub")


@pytest.mark.parametrize(
    "name",
    ["proxy/library/nginx", "a b", 'quo"te', "back\\slash", "tab\there", "del\x7f", "é", "\x1f", ""]
    + [chr(c) for c in range(0x20, 0x7F)],
)
def test_the_new_name_is_written_as_json_writes_it(name: str) -> None:
    """Quoted as it is when that is what JSON makes of it, escaped otherwise."""
    body = renamed_tags(b'{"name":"p00/x","tags":["a"]}\n', name, "p00")
    assert body == b'{"name":' + json.dumps(name).encode() + b',"tags":["a"]}\n'
    assert json.loads(body)["name"] == name
