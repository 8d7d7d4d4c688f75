"""Route planning over the fleet: which backends to try, in which order, and why. Pure.

Every backend of every pool whose window holds the request is a candidate (pools are
preferences, not walls). Filters come first: one whose breaker is open, whose KV cache is
under pressure or that an operator drained is left out; a backend known down goes to the
end of the list (a last resort for retries), one at ``max_in_flight`` is left out, one
whose KV cache (when its size is known) cannot hold the request's budget next to what is
in flight on it comes after the rest. The others are ordered by an explicit score, in milliseconds:

    estimated wait for the first token   (pending prefill ahead of it + its own prompt,
                                          at the backend's prefill rate, + two engine
                                          steps: the one under way and its own, each
                                          reading the KV of every request in flight there)
  + pool_tolerance_ms                    if the backend is outside the preferred pool
  + affinity_tolerance_ms                if it is not the request's hash owner in its pool
                                          (or the owner carries more than load_factor x
                                          its pool's mean budget in flight)

so a request stays in its pool and on its prefix-cache owner unless that costs more than
the tolerance. Two rules about long prefills come before the score, because a short
request behind a long prefill waits for all of it (a 60k-token prefill holds an H100 for
3.5 s):

* a short request never lands behind a long pending prefill when some candidate has
  none;
* a long request leaves ``keep_clean`` backends of the fleet free of long prefill for the
  short ones while a backend that already has long work can start it within
  ``long_wait_limit_ms``; with ``hold_long`` (admission holds long work at the router
  instead) it goes first to backends free of long prefill, and admission decides whether
  it may go at all. Then, because a long document keeps decoding for seconds after its
  prefill and every step of its engine reads its KV (a short request's first token waits
  for two such steps), long work is kept off the ``keep_clean`` backends of the model
  that carry the least of it in the pool short requests prefer (``reserved_for_short``):
  they are its last resort, and stay light for short requests.

A backend whose KV cache (when its size is known) cannot hold the request's budget next
to what is in flight on it, up to ``kv_fill`` of it, comes after the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from router.core.classify import Eligibility
from router.core.hashring import PoolRing
from router.model import Backend, BackendView, RequestFacts, RoutePlan


@dataclass(frozen=True, slots=True)
class PoolView:
    name: str
    model: str
    max_context_tokens: int
    default_max_tokens: int
    ring: PoolRing
    backends: tuple[Backend, ...]
    by_url: dict[str, Backend]


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    long_prefill_tokens: int = 4096
    pool_tolerance_ms: float = 50.0
    affinity_tolerance_ms: float = 20.0
    load_factor: float = 1.25
    keep_clean: int = 1
    long_wait_limit_ms: float = 10_000.0
    # admission holds long requests at the router (router/core/admission.py): a long one
    # then goes only to a backend free of long prefill, never queues behind another
    hold_long: bool = False
    # how much each 1,000 tokens in flight on a backend lengthen its engine steps (a
    # decode step reads the KV of every sequence): 0.045 for an 8B Llama on an H100
    step_ms_per_ktok: float = 0.0
    # the share of a backend's KV cache that budgets in flight may fill (admission's too)
    kv_fill: float = 1.0


class _Scored(NamedTuple):
    cost: float
    wait_ms: float
    clean: bool  # no long prefill pending on it
    backend: Backend
    why: str
    reserved: bool = False  # kept light for short requests (long work's last resort)


def _long_order(s: _Scored) -> tuple[bool, bool, float]:
    return (not s.clean, s.reserved, s.cost)


def reserved_for_short(pools: Sequence[PoolView], view_of: Callable[[Backend], BackendView],
                       keep: int) -> frozenset[int]:  # fmt: skip
    """The indices of the ``keep`` usable backends of the pool short requests prefer (the
    model's smallest window, ``pools[0]``) carrying the least long work (then the least
    work, then the first): long requests go there last. Because they get none while
    others can take it, what long work they had drains, and they stay the ones: short
    requests find engines whose steps are not slowed by long decodes."""
    if keep <= 0:
        return frozenset()
    ranked = []
    for b in pools[0].backends:
        v = view_of(b)
        if v.up and v.usable:
            load = v.load
            ranked.append((load.long_in_flight, load.budget_in_flight, b.index))
    ranked.sort()
    return frozenset(index for _, _, index in ranked[:keep])


def _cost(s: _Scored) -> float:
    return s.cost


def _dirty_then_cost(s: _Scored) -> tuple[bool, float]:
    return (not s.clean, s.cost)


def _clean(s: _Scored) -> bool:
    return s.clean  # False first: backends that already have long work


def plan(
    facts: RequestFacts,
    pools: Sequence[PoolView],
    eligibility: Eligibility,
    view_of: Callable[[Backend], BackendView],
    settings: PlannerSettings,
) -> RoutePlan:
    """``pools``: every pool serving the request's model, smallest window first."""
    prompt = facts.prompt.estimate
    short = prompt < settings.long_prefill_tokens
    preferred = pools[eligibility.pools[0]]
    key = facts.hash_key
    # the first token waits for the step under way and its own: two steps' KV reads
    step_ms_per_token = 2.0 * settings.step_ms_per_ktok / 1000.0
    # held long work may fill KV up to kv_fill (admission's limit); a short request's
    # budget is small next to what the KV pool holds, and it is never held for KV room
    kv_fill = 1.0 if short else settings.kv_fill
    reserved = frozenset[int]()
    if not short and settings.hold_long:
        reserved = reserved_for_short(pools, view_of, settings.keep_clean)

    scored: list[_Scored] = []
    no_room: list[_Scored] = []
    down: list[Backend] = []
    owner = ""  # the preferred pool's hash owner: the affinity choice
    owner_left = ""  # why the owner is not among the scored candidates, when it is not
    for pool_index, need in zip(eligibility.pools, eligibility.budgets, strict=True):
        pool = pools[pool_index]
        backends = pool.backends
        usable_budget = 0
        owner_budget = -1  # the owner's budget in flight, when it is usable
        if len(backends) == 1:
            # a ring of one: it owns every key, and a lone backend is never over a cap of
            # c x (its own load + this request)
            owner_url = backends[0].url
            views = [view_of(backends[0])]
            usable = 1
        else:
            owner_url = pool.ring.owner(key)
            views = []
            usable = 0
            for b in backends:
                v = view_of(b)
                views.append(v)
                load = v.load
                if v.up and v.usable and load.in_flight < b.max_in_flight:
                    usable += 1
                    usable_budget += load.budget_in_flight
                    if b.url == owner_url:
                        owner_budget = load.budget_in_flight
        owner_ok = True
        if usable > 1 and owner_budget >= 0:
            # consistent hashing with bounded loads, on token work: the cap is c x the mean
            # with this request added, and never below the request plus one window (a ratio
            # of small loads says nothing: 650 tokens against 0 is not a hot spot)
            mean = (usable_budget + need) / usable
            cap = max(settings.load_factor * mean, float(need + pool.max_context_tokens))
            owner_ok = owner_budget + need <= cap
        away = 0.0 if pool is preferred else settings.pool_tolerance_ms
        if pool is preferred:
            owner = owner_url
        for v in views:
            b = v.backend
            if not v.usable:
                if b.url == owner:
                    owner_left = "unusable"
                continue  # a breaker, memory pressure or a drain: not even a last resort
            if not v.up:
                if b.url == owner:
                    owner_left = "down"
                down.append(b)
                continue
            load = v.load
            if load.in_flight >= b.max_in_flight:
                if b.url == owner:
                    owner_left = "max_in_flight"
                continue
            wait_ms = ((load.pending_prefill + prompt) * 1000.0 / v.prefill_tokens_per_s
                       + load.budget_in_flight * step_ms_per_token)  # fmt: skip
            cost = wait_ms + away
            if b.url == owner_url and owner_ok:
                why = "hash owner"
            else:
                cost += settings.affinity_tolerance_ms
                why = "owner over its bounded load" if b.url == owner_url else "not the hash owner"
            s = _Scored(cost, wait_ms, load.long_pending == 0, b, why, b.index in reserved)
            if v.kv_tokens is not None and load.budget_in_flight + need > v.kv_tokens * kv_fill:
                no_room.append(s._replace(why="no KV room for its budget"))
            else:
                scored.append(s)

    rule = ""
    if len(scored) > 1:
        if short:
            clean = sum(1 for s in scored if s.clean)
            if 0 < clean < len(scored):
                scored.sort(key=_dirty_then_cost)
                rule = "avoids long prefills"
            else:
                scored.sort(key=_cost)
        else:
            scored.sort(key=_cost)
    if scored and not short and settings.hold_long:
        scored.sort(key=_long_order)
        rule = ("a backend free of long prefill first (long work waits at the router), "
                "not one kept light for short work")  # fmt: skip
    elif scored and not short:
        clean_fleet = _clean_backends(pools, view_of)
        if clean_fleet <= settings.keep_clean and any(
            not s.clean and s.wait_ms <= settings.long_wait_limit_ms for s in scored
        ):
            scored.sort(key=_clean)  # stable: by cost within each group
            rule = "leaves the fleet's last backend free of long prefill to short requests"
    if no_room:
        no_room.sort(key=_cost)
        scored += no_room
    candidates = tuple([s.backend for s in scored] + down)
    waits = tuple([s.wait_ms for s in scored] + [float("inf")] * len(down))
    explained: tuple[str, ...]
    bypass = ""
    if scored:
        best = scored[0]
        if best.backend.url != owner:
            bypass = owner_left or _bypass(owner, scored, best, rule)
        where = best.backend.pool
        place = "preferred pool" if where == preferred.name else "spill to " + where
        explained = (eligibility.reason, place, best.why, rule) if rule else \
                    (eligibility.reason, place, best.why)  # fmt: skip
    elif down:
        explained = (eligibility.reason, "every usable backend is down: trying anyway")
    else:
        explained = (eligibility.reason, "no backend is usable: breakers, memory, drain or "
                     "max_in_flight")  # fmt: skip
    return RoutePlan(preferred.name, candidates, waits, eligibility.budgets[0], explained,
                     eligibility.pools, owner, bypass)  # fmt: skip


def _bypass(owner: str, scored: list[_Scored], best: _Scored, rule: str) -> str:
    """Why the hash owner, a scored candidate, is not the first one (computed only then):
    its KV room, its bounded load, a long-prefill rule, or its estimated wait."""
    for s in scored:
        if s.backend.url == owner:
            if s.why == "no KV room for its budget":
                return "no KV room"
            if s.why == "owner over its bounded load":
                return "bounded load"
            if rule and s.clean != best.clean:
                return "long prefill pending" if not s.clean else "kept free for short work"
            if rule and s.reserved and not best.reserved:
                return "kept light for short work"
            return f"wait {s.wait_ms:.0f}ms"
    return "not a candidate"


def _clean_backends(pools: Sequence[PoolView], view_of: Callable[[Backend], BackendView]) -> int:
    """Backends of the model that are usable and free of long pending prefill."""
    count = 0
    for pool in pools:
        for b in pool.backends:
            v = view_of(b)
            if (v.up and v.usable and v.load.long_pending == 0
                    and v.load.in_flight < b.max_in_flight):  # fmt: skip
                count += 1
    return count
