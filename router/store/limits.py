"""Per-key rate limits at the edge: decided by this process (``LocalLimits``), or, with
``store.redis_url``, by one atomic script per request in Redis, so that N replicas
together admit what one would. While Redis is out of reach each replica decides alone
(then a key may get up to N x its limit) and serves on; it tries Redis again after
``_RETRY_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ctxroute.router.core.keys import Tenant
from ctxroute.router.core.ratelimit import LimitDecision, LocalLimits, Rate, decide
from ctxroute.router.store import redis_scripts as scripts

log = logging.getLogger("ctxroute.store")

_RETRY_S = 1.0
_US = 1_000_000


class Limiter:
    def __init__(self, client: Any = None, key_prefix: str = "ctxroute",
                 timeout_s: float = 0.1) -> None:  # fmt: skip
        self.local = LocalLimits()
        self.client = client  # a redis.asyncio client, or None: decided here
        self.tag = "{" + key_prefix + "}"
        self.timeout_s = timeout_s
        self.down_until = 0.0
        self._rate: Any = None
        self._settle: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    def take_here(self, tenant: Tenant, cost: int, quotas: bool = True) -> LimitDecision | None:
        """The decision, when this process makes it (no Redis, or Redis out of reach);
        None when ``take`` must ask Redis. (Apart, so that the local case costs no
        coroutine.) ``quotas``: an allowed decision carries them too."""
        now = time.monotonic()
        if self.client is None or now < self.down_until:
            return self.local.take(tenant.name, tenant.requests, tenant.tokens, cost, now, quotas)
        return None

    async def take(self, tenant: Tenant, cost: int, quotas: bool = True) -> LimitDecision:
        """The decision on a request of ``tenant`` reserving ``cost`` tokens."""
        here = self.take_here(tenant, cost, quotas)
        if here is not None:
            return here
        requests, tokens = tenant.requests, tenant.tokens
        now = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await self._script_rate()(
                    keys=self._keys(tenant.name),
                    args=[
                        0 if requests is None else round(requests.interval_s * _US),
                        0 if tokens is None else round(tokens.interval_s * _US),
                        round(_tolerance(requests, tokens) * _US),
                        cost,
                    ],
                )
        except Exception as exc:
            self._went_down(exc)
            return self.local.take(tenant.name, requests, tokens, cost, now)
        allowed, req_debt_us, tok_debt_us = (int(x) for x in reply)
        # the script decided; the pure arithmetic words the headers from the debts it saw
        if allowed:
            req_debt_us -= 0 if requests is None else round(requests.interval_s * _US)
            tok_debt_us -= 0 if tokens is None else round(cost * tokens.interval_s * _US)
        decision, _, _ = decide(requests, tokens, req_debt_us / _US, tok_debt_us / _US, cost,
                                quotas)  # fmt: skip
        return decision

    def settle(self, tenant: Tenant, delta: int) -> None:
        """The answer used ``delta`` tokens more than reserved (negative: fewer)."""
        tokens = tenant.tokens
        if tokens is None or delta == 0:
            return
        now = time.monotonic()
        self.local.settle(tenant.name, tokens, delta, now)
        if self.client is None or now < self.down_until:
            return
        task = asyncio.get_running_loop().create_task(
            self._settle_shared(tenant.name, round(delta * tokens.interval_s * _US))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_shared(self, tenant: str, delta_us: int) -> None:
        if self._settle is None:
            self._settle = self.client.register_script(scripts.SETTLE)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._settle(keys=[self._keys(tenant)[1]], args=[delta_us])
        except Exception as exc:
            self._went_down(exc)

    async def close(self) -> None:
        """Wait for the settlements under way, each bounded by its own timeout (the client
        is its owner's to close)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2 * self.timeout_s + 1.0)

    def _script_rate(self) -> Any:
        if self._rate is None:
            self._rate = self.client.register_script(scripts.RATE)
        return self._rate

    def _keys(self, tenant: str) -> list[str]:
        return [f"{self.tag}:rate:{tenant}:r", f"{self.tag}:rate:{tenant}:t"]

    def _went_down(self, exc: BaseException) -> None:
        if time.monotonic() >= self.down_until:
            log.warning("rate limits decided locally for %.0f s: redis: %s", _RETRY_S,
                        str(exc) or type(exc).__name__)  # fmt: skip
        self.down_until = time.monotonic() + _RETRY_S


def _tolerance(requests: Rate | None, tokens: Rate | None) -> float:
    """The burst of a key's buckets (one for both: the script takes one)."""
    rate = requests if requests is not None else tokens
    return 0.0 if rate is None else rate.tolerance_s
