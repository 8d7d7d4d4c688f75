"""Fair shares between tenants: the Virtual Token Counter (Sheng et al., "Fairness in
Serving Large Language Models", OSDI 2024). Pure.

Each tenant has a counter of the service it got: input tokens when a request is
dispatched, output tokens (weighted ``OUTPUT_WEIGHT``: a decoded token costs the engine
more than a prefilled one) when it ends, each divided by the tenant's weight. Waiting
requests of one tier are served lowest counter first, so a tenant that sends ten times
more is served no more than its share while the other waits. A tenant that returns after
idling is lifted to the lowest counter among the tenants waiting (it cannot bank the
service it did not ask for while away and then starve the others); that lift is what
makes the bound hold.

The counters are added to, never set, so two replicas sharing them through the store
(``router/store/fairshare.py``) sum their charges; the lift is a charge too.
"""

from __future__ import annotations

from collections.abc import Iterable

INPUT_WEIGHT = 1.0
OUTPUT_WEIGHT = 2.0  # the paper's w_q / w_p


class VirtualCounters:
    """tenant -> counter, with the charges not yet shared (``take_pending``)."""

    __slots__ = ("counters", "pending")

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.pending: dict[str, float] = {}

    def of(self, tenant: str | None) -> float:
        return 0.0 if tenant is None else self.counters.get(tenant, 0.0)

    def charge(self, tenant: str, amount: float) -> None:
        if amount <= 0:
            return
        self.counters[tenant] = self.counters.get(tenant, 0.0) + amount
        self.pending[tenant] = self.pending.get(tenant, 0.0) + amount

    def served(self, tenant: str, input_tokens: int, output_tokens: int, weight: float) -> None:
        self.charge(tenant, (INPUT_WEIGHT * input_tokens + OUTPUT_WEIGHT * output_tokens) / weight)

    def lift(self, tenant: str, waiting: Iterable[str]) -> None:
        """``tenant`` starts waiting where ``waiting`` (other tenants) wait: it starts no
        lower than the lowest of them."""
        floor = min((self.of(t) for t in waiting if t != tenant), default=None)
        if floor is not None:
            self.charge(tenant, floor - self.of(tenant))

    def take_pending(self) -> dict[str, float]:
        pending, self.pending = self.pending, {}
        return pending

    def adopt(self, shared: dict[str, float]) -> None:
        """The counters as the store holds them (every replica's charges), plus the
        charges of this process not yet written there."""
        merged = dict(shared)
        for tenant, amount in self.pending.items():
            merged[tenant] = merged.get(tenant, 0.0) + amount
        self.counters = merged
