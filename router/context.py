"""What every handler shares, stored on the aiohttp app under ``RouterContext.KEY``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import aiohttp
from aiohttp import web

from router.config import RouterConfig
from router.core.tokens import TokenCounter
from router.fleet import Fleet
from router.ledger import Ledger
from router.proxy import ForwardSettings
from router.upstream.pool import UpstreamPool


@dataclass(slots=True)
class RouterContext:
    KEY: ClassVar[web.AppKey[RouterContext]]

    config: RouterConfig
    fleet: Fleet
    ledger: Ledger
    upstream: UpstreamPool  # the request path
    probe_session: aiohttp.ClientSession  # health probes only
    counters: dict[str, TokenCounter]
    started: int
    forward_settings: ForwardSettings

    def ready(self) -> bool:
        """Every pool has a backend that is up."""
        up = self.ledger.up
        return all(any(up[b.index] for b in pool.backends) for pool in self.fleet.pools)

    def status(self) -> dict[str, object]:
        ledger = self.ledger
        return {
            "pid": os.getpid(),  # which worker answered, under serve --workers
            "in_flight": sum(ledger.board.fleet(b.index).in_flight for b in self.fleet.backends),
            "outcomes": {kind.value: n for kind, n in ledger.outcomes.items()},
            "pools": [
                {
                    "name": pool.name,
                    "model": pool.model,
                    "max_context_tokens": pool.max_context_tokens,
                    "backends": [self._backend_status(b.index) for b in pool.backends],
                }
                for pool in self.fleet.pools
            ],
        }

    def _backend_status(self, i: int) -> dict[str, object]:
        ledger = self.ledger
        backend = self.fleet.backends[i]
        local = ledger.board.local(i)
        fleet = ledger.board.fleet(i)
        return {
            "url": backend.url,
            "up": ledger.up[i],
            "in_flight": fleet.in_flight,
            "pending_prefill_tokens": fleet.pending_prefill,
            "long_prefills_pending": fleet.long_pending,
            "budget_in_flight_tokens": fleet.budget_in_flight,
            "prefill_tokens_per_s": round(ledger.rates[i]),
            "prefill_rate": "learned" if ledger.learned[i] else "configured",
            "local": {
                "in_flight": local.in_flight,
                "pending_prefill_tokens": local.pending_prefill,
                "budget_in_flight_tokens": local.budget_in_flight,
            },
        }


RouterContext.KEY = web.AppKey("ctxroute", RouterContext)
