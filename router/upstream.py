"""The one aiohttp ClientSession to the backends, and the failures it can end in.

``auto_decompress`` is off (bytes are relayed as the backend sent them), there is no total
timeout (streams last as long as they last), and three clocks apply instead: connect, time
to first byte (checked by the proxy) and idle read (between two reads of the body).
"""

from __future__ import annotations

import aiohttp

from router.config import RouterConfig


class UpstreamError(Exception):
    """A backend failed; ``kind`` says how (connect, timeout, status, broken)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def make_session(config: RouterConfig) -> aiohttp.ClientSession:
    per_host = max(b.max_in_flight for p in config.pools for b in p.backends)
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=per_host,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
    )
    timeouts = config.timeouts
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.connect_s,
            sock_connect=timeouts.connect_s,
            sock_read=timeouts.idle_read_s,
        ),
    )
