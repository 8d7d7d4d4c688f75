"""The fleet as the router sees it: pools, their rings, and live per-backend accounting.

Built once from the configuration. ``BackendState`` objects are mutated by the proxy
(dispatch, first byte, finish) and by probes; the planner only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from router.config import RouterConfig
from router.hashring import PoolRing
from router.model import BackendState
from router.planner import PlannerSettings, PoolView


@dataclass(frozen=True, slots=True)
class Fleet:
    pools: tuple[PoolView, ...]  # ordered by window, smallest first
    by_model: dict[str, tuple[PoolView, ...]]
    backends: tuple[BackendState, ...]
    settings: PlannerSettings

    @classmethod
    def from_config(cls, config: RouterConfig) -> Fleet:
        views = []
        states: list[BackendState] = []
        for pool in config.pools_by_window():
            backends = {}
            for b in pool.backends:
                parts = urlsplit(b.url)
                state = BackendState(
                    url=b.url,
                    pool=pool.name,
                    model=b.model or pool.model,
                    max_in_flight=b.max_in_flight,
                    weight=b.weight,
                    host=parts.hostname or "127.0.0.1",
                    port=parts.port or 80,
                )
                backends[b.url] = state
                states.append(state)
            ring = PoolRing(((b.url, b.weight) for b in pool.backends), config.routing.vnodes)
            views.append(PoolView(pool.name, pool.model, pool.max_context_tokens,
                                  pool.default_max_tokens, ring, backends))  # fmt: skip
        by_model: dict[str, list[PoolView]] = {}
        for view in views:
            by_model.setdefault(view.model, []).append(view)
        settings = PlannerSettings(config.routing.load_factor, config.routing.long_prefill_tokens)
        return cls(
            tuple(views), {m: tuple(v) for m, v in by_model.items()}, tuple(states), settings
        )

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.by_model)

    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.backends)

    def ready(self) -> bool:
        """Every pool has a backend that is up."""
        return all(any(b.up for b in pool.backends.values()) for pool in self.pools)

    def status(self) -> dict[str, object]:
        return {
            "in_flight": self.in_flight(),
            "pools": [
                {
                    "name": pool.name,
                    "model": pool.model,
                    "max_context_tokens": pool.max_context_tokens,
                    "backends": [
                        {
                            "url": b.url,
                            "up": b.up,
                            "in_flight": b.in_flight,
                            "pending_prefill_tokens": b.pending_prefill,
                            "budget_in_flight_tokens": b.budget_in_flight,
                        }
                        for b in pool.backends.values()
                    ],
                }
                for pool in self.pools
            ],
        }
