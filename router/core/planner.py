"""Route planning: which backends to try, in which order. Pure.

Inside the chosen pool, the ring walk from the request's hash key gives the preference
order (the key's owner first: prefix-cache hits). Then, weighing token work rather than
request counts (../shared/ARCHITECTURE.md, "Pools are preferences, not walls"):

1. bounded loads: a backend whose load (pending prefill + token budgets in flight) would
   exceed ``c x`` the pool's mean load with this request added is passed over; an idle
   backend always qualifies;
2. a short request avoids a backend with a long prefill pending when another qualifying
   backend has none (it would wait behind the whole prefill for its first token);
3. spill: qualifying backends of other pools whose window holds the request come next, in
   their own ring order (a pool with headroom takes work from a busy one);
4. then the passed-over backends (still in ring order), and last the ones known down or
   full, so that retries before the first byte always have somewhere to go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router.classify import budget as budget_for
from router.hashring import PoolRing
from router.model import BackendState, PoolChoice, RequestFacts, RoutePlan


@dataclass(frozen=True, slots=True)
class PoolView:
    name: str
    model: str
    max_context_tokens: int
    default_max_tokens: int
    ring: PoolRing
    backends: Mapping[str, BackendState]


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    load_factor: float = 1.25
    long_prefill_tokens: int = 4096


def _usable(b: BackendState) -> bool:
    return b.up and b.in_flight < b.max_in_flight


def bounded_load_cap(backends: Mapping[str, BackendState], work: int, factor: float) -> float:
    """``factor`` x the mean load over usable backends with ``work`` added; at least ``work``."""
    total = work
    count = 0
    for b in backends.values():
        if _usable(b):
            total += b.load
            count += 1
    if count == 0:
        return float(work)
    return max(factor * total / count, float(work))


def _split(pool: PoolView, key: str, work: int, settings: PlannerSettings
           ) -> tuple[list[BackendState], list[BackendState], list[BackendState]]:  # fmt: skip
    """(qualifying, over the cap, unusable) backends of a pool, each in ring order."""
    cap = bounded_load_cap(pool.backends, work, settings.load_factor)
    good: list[BackendState] = []
    heavy: list[BackendState] = []
    down: list[BackendState] = []
    for url in pool.ring.walk(key):
        b = pool.backends[url]
        if not _usable(b):
            down.append(b)
        elif b.load + work > cap:
            heavy.append(b)
        else:
            good.append(b)
    return good, heavy, down


def plan_route(
    facts: RequestFacts,
    choice: PoolChoice,
    pools_by_window: Sequence[PoolView],
    settings: PlannerSettings,
) -> RoutePlan:
    primary = next(p for p in pools_by_window if p.name == choice.pool)
    work = choice.budget
    good, heavy, down = _split(primary, facts.hash_key, work, settings)

    if facts.prompt.estimate < settings.long_prefill_tokens and len(good) > 1:
        long = settings.long_prefill_tokens
        clear = [b for b in good if b.pending_prefill < long]
        if clear and len(clear) < len(good):
            good = clear + [b for b in good if b.pending_prefill >= long]

    spill: list[BackendState] = []
    for pool in pools_by_window:
        if pool is primary or pool.model != primary.model:
            continue
        need = budget_for(facts.prompt.upper, facts.max_tokens, pool)
        if need > pool.max_context_tokens:
            continue
        other_good, other_heavy, other_down = _split(pool, facts.hash_key, need, settings)
        spill.extend(other_good)
        heavy.extend(other_heavy)
        down.extend(other_down)

    candidates = tuple(good + spill + heavy + down)
    if good:
        reason = choice.reason
    elif spill:
        reason = "spill: every backend of the pool is over its bounded load"
    else:
        reason = "no backend under its bounded load"
    return RoutePlan(primary.name, candidates, work, reason)
