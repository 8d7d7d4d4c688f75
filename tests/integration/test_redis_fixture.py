"""The real redis-server fixture gives real Redis semantics (Lua, TIME, TTL, pub/sub)."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from tests.fixtures.servers import RedisServer


async def test_lua_reads_the_server_clock_and_keys_expire(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        script = client.register_script(
            "local t = redis.call('TIME'); redis.call('SET', KEYS[1], t[1], 'PX', ARGV[1]); "
            "return redis.call('PTTL', KEYS[1])"
        )
        ttl = await script(keys=["ctxroute-test:lease"], args=[150])
        assert 0 < ttl <= 150
        await asyncio.sleep(0.3)
        assert await client.exists("ctxroute-test:lease") == 0
    finally:
        await client.aclose()


async def test_pub_sub_delivers_between_two_connections(redis_server: RedisServer) -> None:
    sub_client = redis.Redis.from_url(redis_server.url)
    pub_client = redis.Redis.from_url(redis_server.url)
    pubsub = sub_client.pubsub()
    try:
        await pubsub.subscribe("ctxroute-test:events")
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        assert await pub_client.publish("ctxroute-test:events", b"open b1") == 1
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
        assert message is not None and message["data"] == b"open b1"
    finally:
        await pubsub.aclose()
        await sub_client.aclose()
        await pub_client.aclose()
