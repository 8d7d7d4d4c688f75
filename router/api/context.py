"""What every handler shares, stored on the aiohttp app under ``RouterContext.KEY``, and
the one place the read model of the router's state is built (``snapshot``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import aiohttp
from aiohttp import web
from ctxroute.router.api.auth import Gatekeeper
from ctxroute.router.api.lifecycle import Lifecycle
from ctxroute.router.config import RouterConfig
from ctxroute.router.core.breaker import BreakerState, retry_after
from ctxroute.router.dispatch.answer import kept_from
from ctxroute.router.dispatch.completion import Dispatcher
from ctxroute.router.dispatch.gate import Gate
from ctxroute.router.fleet.ledger import Ledger
from ctxroute.router.fleet.probe import Reading
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.observe.drift import NO_DRIFT, DriftWatch
from ctxroute.router.observe.logs import RequestLog
from ctxroute.router.observe.metrics import Metrics
from ctxroute.router.observe.snapshot import BackendState, PoolState, RouterState
from ctxroute.router.upstream.pool import UpstreamPool

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from ctxroute.router.observe.tracing import Tracing


@dataclass(frozen=True, slots=True)
class HandlerSettings:
    """What a completion handler reads of the config on every request, copied out of the
    pydantic models once (why: docs/architecture.md, "Performance budget")."""

    max_body_bytes: int
    session_header: str
    priority_header: str
    body_timeout_s: float

    @classmethod
    def of(cls, config: RouterConfig) -> HandlerSettings:
        return cls(
            config.max_body_bytes,
            config.routing.session_header,
            config.admission.priority_header,
            config.limits.body_timeout_s,
        )


@dataclass(slots=True)
class RouterContext:
    KEY: ClassVar[web.AppKey[RouterContext]]

    config: RouterConfig
    fleet: Fleet
    ledger: Ledger
    upstream: UpstreamPool  # the request path
    probe_session: aiohttp.ClientSession  # health probes only
    started: int
    gate: Gate
    dispatcher: Dispatcher
    handler_settings: HandlerSettings
    metrics: Metrics
    request_log: RequestLog | None  # None: request lines are off
    gatekeeper: Gatekeeper
    readings: list[Reading] = field(init=False)  # the last /metrics of each backend
    lifecycle: Lifecycle = field(default_factory=Lifecycle)  # serving, or how far in stopping
    admin_ports: frozenset[int] = frozenset()  # local ports of the admin address, once bound
    tracing: Tracing | None = None  # spans of completion requests, when tracing is on
    drift: DriftWatch | None = None  # each backend's recent answers, for drift scores

    def __post_init__(self) -> None:
        self.readings = [Reading() for _ in self.fleet.backends]

    def ready(self) -> bool:
        """Every pool has a backend that is up."""
        up = self.ledger.up
        return all(any(up[b.index] for b in pool.backends) for pool in self.fleet.pools)

    def snapshot(self) -> RouterState:
        """The router's state now, for ``/status``, ``/metrics`` and the dashboard."""
        now = time.monotonic()
        store = self.ledger.store
        backends = tuple(self.backend_state(b.index, now) for b in self.fleet.backends)
        pools = tuple(
            PoolState(
                p.name, p.model, p.max_context_tokens, tuple(backends[b.index] for b in p.backends)
            )
            for p in self.fleet.pools
        )
        return RouterState(
            os.getpid(),
            store.kind,
            store.up,
            backends,
            pools,
            self.gate.snapshot(now),
            dict(self.ledger.outcomes),
        )

    def backend_state(self, i: int, now: float) -> BackendState:
        ledger = self.ledger
        store = ledger.store
        breaker = store.breaker(i)
        reading = self.readings[i]
        fresh = reading.fresh(now, self.config.probe.interval_s)
        probe_in = retry_after(breaker, now) if breaker.state is BreakerState.OPEN else None
        load = ledger.board.fleet(i)
        size = ledger.kv_tokens[i]
        taken = load.budget_in_flight + ledger.kv_unaccounted[i]  # committed, kvroom.py
        room = None
        if size is not None:
            marks = self.fleet.work.kv
            room = (int(size * marks.long) - taken, int(size * marks.short) - taken)
        drift = NO_DRIFT if self.drift is None else self.drift.views(now).get(i, NO_DRIFT)
        return BackendState(
            backend=self.fleet.backends[i],
            up=ledger.up[i],
            usable=store.looks_usable(i, now),
            breaker=breaker,
            probe_in_s=probe_in,
            memory_open=store.memory_open(i),
            drained=store.drained(i),
            kv_usage=reading.kv_usage if fresh else None,
            requests_waiting=reading.waiting if fresh else None,
            requests_running=reading.running if fresh else None,
            metrics="fresh" if fresh else (reading.error or "unknown: not read yet"),
            load=load,
            local=ledger.board.local(i),
            kv_capacity_tokens=size,
            prefill_tokens_per_s=ledger.rates[i],
            prefill_learned=ledger.learned[i],
            memory_why=str(ledger.memory_why[i]) if store.memory_open(i) else "",
            memory_openings={k.name.lower(): n for k, n in ledger.memory_openings[i].items()},
            kv_unaccounted_tokens=ledger.kv_unaccounted[i],
            kv_committed_tokens=taken,
            kv_room_tokens=room,
            kept_from=kept_from(ledger, self.fleet.backends[i], load, room),
            skew=ledger.skew[i],
            drift=drift.scores,
            drift_baseline=drift.baseline,
            length_share=drift.length_share,
        )


RouterContext.KEY = web.AppKey("ctxroute", RouterContext)
