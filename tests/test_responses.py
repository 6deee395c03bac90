"""Response status lines (``responses.status_line``): compiled, a C int indexes a table."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from harbor_router import responses
from harbor_router.responses import status_line


def test_every_known_status_has_its_line() -> None:
    for status in HTTPStatus:
        phrase = "URI Too Long" if status == 414 else status.phrase
        assert status_line(status.value) == f"HTTP/1.1 {status.value} {phrase}\r\n".encode()
    assert status_line(200) is status_line(200)  # one bytes per status, made once


@pytest.mark.parametrize("status", [0, 1, 99, 299, 499, 599, 999, 1000, 12345, -1, -200])
def test_an_unknown_status_is_unknown(status: int) -> None:
    """A status no line is known for, within 0-999 or not (a negative one indexes nothing)."""
    assert status_line(status) == b"HTTP/1.1 %d Unknown\r\n" % status


def test_a_head_begins_with_its_status_line() -> None:
    assert responses.head(404, close=True).startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert responses.head(299).startswith(b"HTTP/1.1 299 Unknown\r\n")
