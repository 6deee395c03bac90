"""The baseline a Python user would write: a plain aiohttp reverse proxy with the same rewrite.

    .venv/bin/python benchmarks/aiohttp_proxy.py --listen 127.0.0.1:8081 \\
        --upstream http://127.0.0.1:8080 --project p00 [--prefix proxy] [--no-uvloop]

``/v2/<prefix>/<rest>`` is sent to ``<upstream>/v2/<project>/<rest>`` with the request's method
and its ``Accept``, ``Range`` and ``If-None-Match`` headers, over one shared
:class:`aiohttp.ClientSession` (keep-alive pool, ``auto_decompress=False``); the answer is
streamed back chunk by chunk with its status and end-to-end headers. No mapping, no fan-out, no
registry errors: it only stands for the cost of aiohttp's server and client in the same role as
harbor-router's hit path. ``benchmarks/loadtest.py`` runs it pinned to one CPU beside the router
and nginx. uvloop is used when installed (the router uses it too), unless ``--no-uvloop``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import aiohttp
from aiohttp import web

FORWARDED = ("Accept", "Range", "If-None-Match", "If-Range")
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "Content-Length",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    )
)
CHUNK = 256 * 1024


def build_app(upstream: str, project: str, prefix: str) -> web.Application:
    base = f"{upstream.rstrip('/')}/v2/{project}/"
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=64, keepalive_timeout=90)
        app[session_key] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[session_key].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
        url = base + request.match_info["rest"]
        async with app[session_key].request(
            request.method, url, headers=headers, allow_redirects=False
        ) as upstream_resp:
            response = web.StreamResponse(status=upstream_resp.status)
            for name, value in upstream_resp.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            if upstream_resp.content_length is not None:
                response.content_length = upstream_resp.content_length
            try:
                await response.prepare(request)
                if request.method != "HEAD":
                    async for chunk in upstream_resp.content.iter_chunked(CHUNK):
                        await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:  # the client went away (wrk stopping): not an error
                pass
            return response

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get(f"/v2/{prefix}/{{rest:.+}}", handle)  # and HEAD
    return app


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    runner = web.AppRunner(build_app(args.upstream, args.project, args.prefix), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, int(port), backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--upstream", required=True, help="http://host:port")
    parser.add_argument("--project", required=True)
    parser.add_argument("--prefix", default="proxy")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    runner = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    runner(serve(args))


if __name__ == "__main__":
    main()
