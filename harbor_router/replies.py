"""Writing a fan-out's winner to the client: buffered, streamed, or as a rewritten tag list."""

from __future__ import annotations

import json

from . import errors, responses
from .headers import Rewriter
from .protocol import HttpProtocol, Request
from .resolver import Winner

NO_BODY = (204, 304)


def write_winner(
    request: Request, client: HttpProtocol, winner: Winner, rewriter: Rewriter | None = None
) -> None:
    rewriter = winner.project.rewriter if rewriter is None else rewriter
    headers, _ = rewriter.end_to_end(winner.headers)
    close = not client.keep_alive
    if request.method == "HEAD" or winner.status in NO_BODY:
        client.write(responses.head(winner.status, headers, close=close))
        return
    headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
    body = winner.body
    client.write(
        responses.head(winner.status, headers, content_length=len(body), close=close) + body
    )


async def stream_winner(
    request: Request, client: HttpProtocol, winner: Winner, rewriter: Rewriter | None = None
) -> None:
    """Relay an open aiohttp response (the blob GET race) with back-pressure from the client."""
    response = winner.response
    assert response is not None
    rewriter = winner.project.rewriter if rewriter is None else rewriter
    headers, length = rewriter.end_to_end(winner.headers)
    head_only = request.method == "HEAD"
    chunked = not head_only and length < 0 and winner.status not in NO_BODY
    if chunked and not client.http11:
        client.keep_alive = False
        chunked = False
    extra = b"Transfer-Encoding: chunked\r\n" if chunked else b""
    client.write(responses.head(winner.status, headers, close=not client.keep_alive, extra=extra))
    if head_only:
        return
    try:
        async for chunk in response.content.iter_any():
            client.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await client.drain()
        if chunked:
            client.write(b"0\r\n\r\n")
    except Exception as exc:
        raise errors.ResponseAborted(str(exc)) from exc


def write_tags(
    request: Request,
    client: HttpProtocol,
    winner: Winner,
    client_name: str,
    rewriter: Rewriter | None = None,
) -> None:
    """tags/list with ``name`` as the client asked for it (``{P}/{name}``), Link rewritten."""
    body = renamed_tags(winner.body, client_name, winner.project.name)
    rewriter = winner.project.rewriter if rewriter is None else rewriter
    headers = [
        (n, v)
        for n, v in rewriter.end_to_end(winner.headers)[0]
        if len(n) != 14 or n.lower() != b"content-length"  # the length is the new body's
    ]
    out = responses.head(
        winner.status, headers, content_length=len(body), close=not client.keep_alive
    )
    client.write(out if request.method == "HEAD" else out + body)


_NAME_FIRST = b'{"name":"'


def _json_string(text: str) -> bytes:
    """``json.dumps(text)``, encoded; a repository name (printable ASCII, no quote or
    backslash: what the routes let through) is only quoted."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return b'"' + text.encode() + b'"'
    return json.dumps(text).encode()


def renamed_tags(body: bytes, client_name: str, project: str) -> bytes:
    """A tag list with its ``name`` replaced by ``client_name``. A list that begins the way
    distribution writes it (``{"name":"`` and a name without escapes) has the name replaced
    in place and the rest passed on as Harbor sent it, like any relayed body; any other is
    parsed and written again (an invalid one is Harbor's fault: 502)."""
    if body.startswith(_NAME_FIRST):
        end = body.find(b'"', len(_NAME_FIRST))
        if end > 0 and b"\\" not in body[len(_NAME_FIRST) : end]:
            return b'{"name":' + _json_string(client_name) + body[end + 1 :]
    try:
        data = json.loads(body)
    except ValueError:
        raise errors.BadGateway(f"project {project} sent an invalid tag list") from None
    if isinstance(data, dict):
        data["name"] = client_name
    return json.dumps(data, separators=(",", ":")).encode()
