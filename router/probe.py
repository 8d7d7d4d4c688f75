"""Active health probes: GET /health on every backend; the ledger records up or down.

Passive signals (a connect error in the proxy) mark a backend down at once; the probe
brings it back when it answers again. Every change is logged, and so is a probe round
that fails as a whole (it never dies silently).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from router.config import RouterConfig
from router.fleet import Fleet
from router.ledger import Ledger

log = logging.getLogger("ctxroute.probe")


def make_probe_session(config: RouterConfig) -> aiohttp.ClientSession:
    """The aiohttp client of the control path (the request path runs on router/upstream)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
        timeout=aiohttp.ClientTimeout(
            total=config.probe.timeout_s, connect=config.timeouts.connect_s
        ),
    )


async def probe_once(session: aiohttp.ClientSession, fleet: Fleet, ledger: Ledger,
                     timeout_s: float) -> None:  # fmt: skip
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def one(url: str) -> tuple[bool, str]:
        try:
            async with session.get(url + "/health", timeout=timeout) as resp:
                return resp.status == 200, f"/health answered {resp.status}"
        except TimeoutError:
            return False, f"/health did not answer within {timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"/health failed: {exc}"

    results = await asyncio.gather(*(one(b.url) for b in fleet.backends))
    for backend, (up, why) in zip(fleet.backends, results, strict=True):
        if ledger.set_up(backend, up):
            if up:
                log.warning("backend %s is up", backend.url)
            else:
                log.warning("backend %s is down: %s", backend.url, why)


async def probe_forever(session: aiohttp.ClientSession, fleet: Fleet, ledger: Ledger,
                        interval_s: float, timeout_s: float) -> None:  # fmt: skip
    while True:
        try:
            await probe_once(session, fleet, ledger, timeout_s)
        except Exception:
            log.exception("health probe round failed")
        await asyncio.sleep(interval_s)
