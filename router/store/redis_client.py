"""A redis-py client for every kind of Redis URL the store accepts."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel


def make_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A client for redis:// rediss:// unix:// URLs and redis+sentinel://h1:p1,h2:p2/service
    [/db] (the current master of that service). Not Redis Cluster: the store's pub/sub and
    multi-key scripts want one node (config/schema.py refuses the URL, saying so)."""
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": True,
    }
    if url.startswith("redis+sentinel://"):
        parts = urlsplit(url)
        hosts = []
        for item in parts.netloc.split("@")[-1].split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host or "localhost", int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a sentinel URL names its service: redis+sentinel://host:port/name")
        db = int(path[1]) if len(path) > 1 else 0
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(hosts, sentinel_kwargs={"socket_timeout": timeout_s}, **common)  # type: ignore[no-untyped-call]
        master: aioredis.Redis = sentinel.master_for(path[0], db=db, password=password)
        return master
    return aioredis.Redis.from_url(url, **common)
