"""The tenants' virtual token counters (``router/core/admission/fairshare.py``) shared
through Redis, so that replicas are fair together: every ``every_s`` this process adds its
new charges to one hash (HINCRBYFLOAT: charges from every replica sum) and reads the
whole hash back. While Redis is away, the counters go on locally and the charges wait to
be written."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ctxroute.router.aio.tasks import stop_requested, stop_tasks
from ctxroute.router.core.admission.fairshare import VirtualCounters

log = logging.getLogger("ctxroute.store")


class SharedCounters:
    def __init__(self, counters: VirtualCounters, client: Any, key_prefix: str,
                 every_s: float = 0.05, timeout_s: float = 0.1) -> None:  # fmt: skip
        self.counters = counters
        self.client = client
        self.key = "{" + key_prefix + "}:vtc"
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.up = True
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forever(), name="ctxroute-vtc")

    async def close(self) -> None:
        """Stop syncing (the client is its owner's to close)."""
        if self._task is not None:
            await stop_tasks([self._task])

    async def sync(self) -> None:
        """One round: write this process's new charges, read everyone's."""
        pending = self.counters.take_pending()
        try:
            async with asyncio.timeout(self.timeout_s):
                pipe = self.client.pipeline(transaction=False)
                for tenant, amount in pending.items():
                    pipe.hincrbyfloat(self.key, tenant, amount)
                pipe.hgetall(self.key)
                replies = await pipe.execute()
        except BaseException:
            for tenant, amount in pending.items():  # written next time
                self.counters.pending[tenant] = self.counters.pending.get(tenant, 0.0) + amount
            raise
        shared = {str(k): float(v) for k, v in replies[-1].items()}
        self.counters.adopt(shared)

    async def _forever(self) -> None:
        # asks stop_requested rather than trusting the CancelledError to arrive: redis-py
        # may turn it into a connection error, and Python 3.11's wait_for (redis-py's
        # socket timeout) may drop it when the command completes in the same step
        while not stop_requested():
            try:
                await self.sync()
                if not self.up:
                    log.warning("fair-share counters are shared through redis again")
                self.up = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop_requested():
                    break
                if self.up:
                    log.warning("fair-share counters kept locally: redis: %s", exc)
                self.up = False
            await asyncio.sleep(self.every_s)
