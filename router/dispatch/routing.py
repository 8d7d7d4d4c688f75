"""Planning a request over its model's pools, and the fallback model's when every backend
of its own is unusable (``fallback:`` in the config)."""

from __future__ import annotations

from dataclasses import dataclass

from ctxroute.router.core.classify import Eligibility, eligible_pools
from ctxroute.router.core.planner import PoolView, ViewOf, plan
from ctxroute.router.errors import RouterError
from ctxroute.router.fleet.ledger import Ledger
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.model import RequestFacts, RoutePlan


@dataclass(slots=True)
class Route:
    """A request planned over one model's pools; ``replan`` plans it again (for a request
    that waited at the router, over the load as it is then)."""

    facts: RequestFacts
    pools: tuple[PoolView, ...]
    eligibility: Eligibility
    plan: RoutePlan

    def replan(self, fleet: Fleet, ledger: Ledger) -> RoutePlan:
        return plan(self.facts, self.pools, self.eligibility, ledger.view_of, fleet.settings)

    def unusable(self, view_of: ViewOf) -> bool:
        """No backend that could hold it is usable (breakers, drains, down), as opposed to
        all of them merely busy (at max_in_flight: then it waits for one, as configured)."""
        for i in self.plan.pools:
            for b in self.pools[i].backends:
                v = view_of(b)
                if v.usable and v.up:
                    return False
        return True


def route(facts: RequestFacts, fleet: Fleet, view_of: ViewOf) -> Route:
    """Plan ``facts`` over its model's pools (ContextTooLong when no window can hold it)."""
    pools = fleet.by_model[facts.model]
    eligibility = eligible_pools(facts.prompt, facts.max_tokens, pools)
    return Route(facts, pools, eligibility,
                 plan(facts, pools, eligibility, view_of, fleet.settings))  # fmt: skip


def fallback_route(facts: RequestFacts, small: str, fleet: Fleet,
                   view_of: ViewOf) -> Route | None:  # fmt: skip
    """The request planned on the fallback model's pools, when one of them can take it
    now; None when none can (then the first model's 503 stands)."""
    facts = RequestFacts(small, facts.prompt, facts.max_tokens, facts.stream, facts.hash_key)
    try:
        alternative = route(facts, fleet, view_of)
    except RouterError:
        return None  # over the small model's window: no fallback for this request
    return alternative if alternative.plan.candidates else None
