"""A bare aiohttp + uvloop reverse proxy: the floor ctxroute's own cost is measured against.

Parses the JSON body once (orjson), forwards to one upstream, relays the answer (chunks as
they arrive for streams). No routing, no accounting, no retries.

    python -m ctxroute.bench.bare_proxy --port 9000 --upstream http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse

import aiohttp
import orjson
from aiohttp import web
from ctxroute.router.run.runtime import run_async


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    key = web.AppKey("session", aiohttp.ClientSession)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        app[key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        yield
        await app[key].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        session = app[key]
        async with session.post(
            upstream + request.path, data=raw, headers={"Content-Type": "application/json"}
        ) as resp:
            if not body.get("stream"):
                return web.Response(
                    status=resp.status, body=await resp.read(), content_type="application/json"
                )
            out = web.StreamResponse(
                status=resp.status, headers={"Content-Type": resp.headers["Content-Type"]}
            )
            await out.prepare(request)
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/completions", handle)
    app.router.add_post("/v1/chat/completions", handle)
    return app


async def serve(port: int, upstream: str) -> None:
    import asyncio

    runner = web.AppRunner(make_app(upstream), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    run_async(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
