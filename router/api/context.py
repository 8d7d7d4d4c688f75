"""What every handler shares, stored on the aiohttp app under ``RouterContext.KEY``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import ClassVar

import aiohttp
from aiohttp import web

from router.config import RouterConfig
from router.core.breaker import BreakerState, retry_after
from router.core.tokens import TokenCounter
from router.dispatch.gate import Gate
from router.dispatch.proxy import ForwardSettings
from router.fleet.ledger import Ledger
from router.fleet.probe import Reading
from router.fleet.topology import Fleet
from router.observe.logs import RequestLog
from router.observe.metrics import Metrics
from router.upstream.pool import UpstreamPool


@dataclass(frozen=True, slots=True)
class HandlerSettings:
    """What a completion handler reads of the config on every request, copied out of the
    pydantic models once (a pydantic field read costs about three plain attribute reads:
    BaseModel defines ``__getattr__``)."""

    max_body_bytes: int
    session_header: str
    prefix_chars: int
    priority_header: str
    fallback: dict[str, str]

    @classmethod
    def of(cls, config: RouterConfig) -> HandlerSettings:
        return cls(config.max_body_bytes, config.routing.session_header,
                   config.routing.prefix_chars, config.admission.priority_header,
                   dict(config.fallback))  # fmt: skip


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
    gate: Gate
    handler_settings: HandlerSettings
    metrics: Metrics
    request_log: RequestLog | None  # None: request lines are off
    readings: list[Reading] = field(init=False)  # the last /metrics of each backend

    def __post_init__(self) -> None:
        self.readings = [Reading() for _ in self.fleet.backends]

    def ready(self) -> bool:
        """Every pool has a backend that is up."""
        up = self.ledger.up
        return all(any(up[b.index] for b in pool.backends) for pool in self.fleet.pools)

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        ledger = self.ledger
        store = ledger.store
        return {
            "pid": os.getpid(),  # which worker answered, under serve --workers
            "store": {"kind": store.kind, "up": store.up},
            "in_flight": sum(ledger.board.fleet(b.index).in_flight for b in self.fleet.backends),
            "admission": self.gate.status(),
            "outcomes": {kind.value: n for kind, n in ledger.outcomes.items()},
            "pools": [
                {
                    "name": pool.name,
                    "model": pool.model,
                    "max_context_tokens": pool.max_context_tokens,
                    "ttft_recent": self.metrics.recent_ttft(pool.name, now),
                    "backends": [self.status_of(b.index) for b in pool.backends],
                }
                for pool in self.fleet.pools
            ],
        }

    def status_of(self, i: int) -> dict[str, object]:
        ledger = self.ledger
        store = ledger.store
        backend = self.fleet.backends[i]
        local = ledger.board.local(i)
        fleet = ledger.board.fleet(i)
        now = time.monotonic()
        breaker = store.breaker(i)
        reading = self.readings[i]
        fresh = reading.fresh(now, self.config.probe.interval_s)
        return {
            "url": backend.url,
            "up": ledger.up[i],
            "usable": store.usable(i, now),
            "breaker": {
                "error": breaker.state.value,
                "memory": "open" if store.memory_open(i) else "closed",
                "openings": breaker.openings,
                "probe_in_s": round(retry_after(breaker, now), 3)
                if breaker.state is BreakerState.OPEN
                else None,
            },
            "drained": store.drained(i),
            "kv_cache_usage": reading.kv_usage if fresh else None,
            "requests_waiting": reading.waiting if fresh else None,
            "requests_running": reading.running if fresh else None,
            "metrics": "fresh" if fresh else (reading.error or "unknown: not read yet"),
            "in_flight": fleet.in_flight,
            "pending_prefill_tokens": fleet.pending_prefill,
            "long_prefills_pending": fleet.long_pending,
            "long_in_flight": fleet.long_in_flight,  # prefilling or decoding
            "budget_in_flight_tokens": fleet.budget_in_flight,
            "kv_capacity_tokens": ledger.kv_tokens[i],
            "prefill_tokens_per_s": round(ledger.rates[i]),
            "prefill_rate": "learned" if ledger.learned[i] else "configured",
            "local": {
                "in_flight": local.in_flight,
                "pending_prefill_tokens": local.pending_prefill,
                "budget_in_flight_tokens": local.budget_in_flight,
            },
        }


RouterContext.KEY = web.AppKey("ctxroute", RouterContext)
