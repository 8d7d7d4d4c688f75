"""The aiohttp ClientSession of the control path (health probes).

The request path does not use it: it runs on router/h1.py, which splices streams.
"""

from __future__ import annotations

import aiohttp

from router.config import RouterConfig


def make_session(config: RouterConfig) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
        timeout=aiohttp.ClientTimeout(
            total=config.probe.timeout_s, connect=config.timeouts.connect_s
        ),
    )
