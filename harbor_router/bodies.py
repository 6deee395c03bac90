"""Reading a control-plane (aiohttp) response body to its end, bounded.

``StreamReader.read(n)`` returns what has arrived, which for a body that comes in more than
one piece is only its beginning: every bounded read of a whole body goes through here.
"""

from __future__ import annotations

import aiohttp


async def read_body(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit`` + 1 bytes when it is larger than ``limit``."""
    body = await content.read(limit + 1)  # what has arrived: usually all of it
    if len(body) > limit or content.is_eof():
        return body
    parts = [body]
    size = len(body)
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)
