"""bodies.read_body: a bounded read of a whole aiohttp response body, however it arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from harbor_router.bodies import read_body

PIECES = [b'{"token":"', b"a" * 3000, b'"}']


async def _in_pieces(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = sum(map(len, PIECES))
    await response.prepare(request)
    for piece in PIECES:
        await response.write(piece)
        await asyncio.sleep(0.05)  # each piece its own read on the other side
    return response


@pytest.fixture
async def base() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/pieces", _in_pieces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_body_in_pieces_is_read_whole(base: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(base + "/pieces") as resp:
        assert await read_body(resp.content, 10_000) == b"".join(PIECES)


async def test_a_body_over_the_limit_is_cut_one_byte_past_it(base: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(base + "/pieces") as resp:
        body = await read_body(resp.content, 100)
    assert body == b"".join(PIECES)[:101]
