"""Active health probes: GET /health on every backend, marking it up or down.

Passive signals (connect errors in the proxy) mark a backend down at once; the probe
brings it back when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from router.fleet import Fleet

log = logging.getLogger("ctxroute.probe")


async def probe_once(session: aiohttp.ClientSession, fleet: Fleet, timeout_s: float) -> None:
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def one(url: str) -> bool:
        try:
            async with session.get(url + "/health", timeout=timeout) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    results = await asyncio.gather(*(one(b.url) for b in fleet.backends))
    for backend, up in zip(fleet.backends, results, strict=True):
        if backend.up != up:
            log.warning("backend %s is %s", backend.url, "up" if up else "down")
        backend.up = up


async def probe_forever(session: aiohttp.ClientSession, fleet: Fleet, interval_s: float,
                        timeout_s: float) -> None:  # fmt: skip
    while True:
        with contextlib.suppress(Exception):
            await probe_once(session, fleet, timeout_s)
        await asyncio.sleep(interval_s)
