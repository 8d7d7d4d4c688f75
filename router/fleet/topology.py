"""The fleet as configured: backends (frozen values), pools by model, the planner's settings.

Static: built once from the configuration. What changes while the router runs (load,
health, learned rates) lives in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.config import RouterConfig
from router.core.breaker import MemorySettings
from router.core.hashring import PoolRing
from router.core.planner import PlannerSettings, PoolView
from router.model import Backend


@dataclass(frozen=True, slots=True)
class Fleet:
    pools: tuple[PoolView, ...]  # ordered by window, smallest first
    by_model: dict[str, tuple[PoolView, ...]]
    backends: tuple[Backend, ...]  # by index
    settings: PlannerSettings
    pool_named: dict[str, PoolView]
    models: tuple[str, ...]  # the served model names, in configuration order
    host_lines: tuple[bytes, ...]  # each backend's Host header line, by index
    by_url: dict[str, Backend]

    @classmethod
    def from_config(cls, config: RouterConfig) -> Fleet:
        views: list[PoolView] = []
        backends: list[Backend] = []
        for pool in config.pools_by_window():
            members: list[Backend] = []
            for b in pool.backends:
                host, port = b.origin
                backend = Backend(
                    index=len(backends),
                    url=b.url,
                    pool=pool.name,
                    model=b.model or pool.model,
                    host=host,
                    port=port,
                    max_in_flight=b.max_in_flight,
                    weight=b.weight,
                    kv_tokens=b.kv_tokens or pool.kv_tokens,
                    prefill_tokens_per_s=pool.prefill_tokens_per_s,
                )
                backends.append(backend)
                members.append(backend)
            ring = PoolRing(((b.url, b.weight) for b in members), config.routing.vnodes)
            views.append(PoolView(pool.name, pool.model, pool.max_context_tokens,
                                  pool.default_max_tokens, ring, tuple(members),
                                  {b.url: b for b in members}))  # fmt: skip
        by_model: dict[str, list[PoolView]] = {}
        for view in views:
            by_model.setdefault(view.model, []).append(view)
        r = config.routing
        m = config.breakers.memory  # budgets in flight stay under its close threshold
        settings = PlannerSettings(
            long_prefill_tokens=r.long_prefill_tokens,
            pool_tolerance_ms=r.pool_tolerance_ms,
            affinity_tolerance_ms=r.affinity_tolerance_ms,
            load_factor=r.load_factor,
            keep_clean=r.keep_clean,
            long_wait_limit_ms=r.long_wait_limit_ms,
            step_ms_per_ktok=r.step_ms_per_ktok,
            kv_fill=MemorySettings(m.open_at, m.close_below).close_at,
            hold_long=config.admission.enabled and config.admission.hold_long,
        )
        return cls(tuple(views), {m: tuple(v) for m, v in by_model.items()}, tuple(backends),
                   settings, {v.name: v for v in views}, tuple(by_model),
                   tuple(f"Host: {b.host}:{b.port}\r\n".encode() for b in backends),
                   {b.url: b for b in backends})  # fmt: skip
