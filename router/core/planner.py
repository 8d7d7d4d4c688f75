"""Route planning over the fleet: which backends to try, in which order, and why. Pure.

Every backend of every pool whose window holds the request is a candidate (pools are
preferences, not walls). Filters come first: one whose breaker is open (the error
breaker, or the memory breaker, which opens on distress: preemptions, a growing queue
on a full cache), or that an operator drained, is left out; so is one whose KV cache
(when its size is known) has no room for the request's budget under its class's mark
(``core/kvroom.py``: long work up to ``kv.long``, short work up to ``kv.short``, near
full), and one at ``max_in_flight``; a backend known down goes to the end of the list (a
last resort for retries). The others are ordered by an explicit score, in milliseconds:

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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ctxroute.router.core.classify import Eligibility
from ctxroute.router.core.hashring import PoolRing
from ctxroute.router.core.kvroom import has_room
from ctxroute.router.core.longwork import LongWork
from ctxroute.router.model import (
    Backend,
    BackendView,
    Bypass,
    Placement,
    RequestFacts,
    RoutePlan,
    Rule,
)

ViewOf = Callable[[Backend], BackendView]


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
    pool_tolerance_ms: float = 50.0
    affinity_tolerance_ms: float = 20.0
    load_factor: float = 1.25
    long_wait_limit_ms: float = 10_000.0
    # how much each 1,000 tokens in flight on a backend lengthen its engine steps (a
    # decode step reads the KV of every sequence): 0.045 for an 8B Llama on an H100
    step_ms_per_ktok: float = 0.0
    # what is long work, and how it is kept from short requests (admission's rules too):
    # with ``work.hold`` a long request goes only to a backend free of long prefill, never
    # queues behind another; ``work.kv``: the share of a backend's KV cache each class
    # may fill
    work: LongWork = field(default_factory=LongWork)


class _Scored(NamedTuple):
    cost: float
    wait_ms: float
    clean: bool  # no long prefill pending on it
    backend: Backend
    placement: Placement
    reserved: bool = False  # kept light for short requests (long work's last resort)


def _long_order(s: _Scored) -> tuple[bool, bool, float]:
    return (not s.clean, s.reserved, s.cost)


def _cost(s: _Scored) -> float:
    return s.cost


def _dirty_then_cost(s: _Scored) -> tuple[bool, float]:
    return (not s.clean, s.cost)


def _clean(s: _Scored) -> bool:
    return s.clean  # False first: backends that already have long work


def reserved_for_short(pools: Sequence[PoolView], view_of: ViewOf, keep: int) -> frozenset[int]:
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


def plan(
    facts: RequestFacts,
    pools: Sequence[PoolView],
    eligibility: Eligibility,
    view_of: ViewOf,
    settings: PlannerSettings,
) -> RoutePlan:
    """``pools``: every pool serving the request's model, smallest window first."""
    work = settings.work
    short = not work.is_long(facts.prompt.estimate)
    preferred = pools[eligibility.pools[0]]
    reserved = frozenset[int]()
    if not short and work.hold:
        reserved = reserved_for_short(pools, view_of, work.keep_clean)
    scored: list[_Scored] = []
    down: list[Backend] = []  # known down: a last resort for retries
    owner = ""  # the preferred pool's hash owner: the affinity choice
    owner_left: Bypass | None = None  # why the owner is not among the scored ones
    kv_full = 0  # backends left out only for want of KV room under the class's mark
    for pool_index, need in zip(eligibility.pools, eligibility.budgets, strict=True):
        pool = pools[pool_index]
        lists = (scored, down)
        if pool is preferred:
            owner, owner_left, full = _score_pool(lists, facts, pool, need, 0.0, short,
                                                  reserved, view_of, settings)  # fmt: skip
        else:
            _, _, full = _score_pool(lists, facts, pool, need, settings.pool_tolerance_ms,
                                     short, reserved, view_of, settings)  # fmt: skip
        kv_full += full
    rule = _order(scored, short, pools, view_of, settings)
    candidates = tuple([s.backend for s in scored] + down)
    waits = tuple([s.wait_ms for s in scored] + [float("inf")] * len(down))
    bypass = Bypass.NONE
    owner_wait_ms = 0.0
    placement = None
    if scored:
        best = scored[0]
        placement = best.placement
        if best.backend.url != owner:
            if owner_left is not None:
                bypass = owner_left
            else:
                bypass, owner_wait_ms = _bypass(owner, scored, best, rule)
    return RoutePlan(
        preferred.name,
        candidates,
        waits,
        eligibility.budgets[0],
        eligibility.pools,
        len(scored),
        eligibility.fits,
        placement,
        rule,
        owner,
        bypass,
        owner_wait_ms,
        kv_full,
    )


def _score_pool(lists: tuple[list[_Scored], list[Backend]], facts: RequestFacts,
                pool: PoolView, need: int, away: float, short: bool,
                reserved: frozenset[int], view_of: ViewOf,
                settings: PlannerSettings) -> tuple[str, Bypass | None, int]:  # fmt: skip
    """Score every backend of ``pool`` that can take the request (``need``: its budget
    there; ``away``: the cost of leaving the preferred pool) into ``lists`` (scored, down),
    as the module's docstring says. Returns the pool's hash owner, why it was left out
    when it was, and how many backends were left out only for want of KV room."""
    scored, down = lists
    prompt = facts.prompt.estimate
    # the first token waits for the step under way and its own: two steps' KV reads
    step_ms_per_token = 2.0 * settings.step_ms_per_ktok / 1000.0
    mark = settings.work.kv.of(long=not short)
    owner_url, views, owner_ok = _owner_and_views(pool, facts.hash_key, need, view_of, settings)
    owner_left = None
    kv_full = 0
    for v in views:
        b = v.backend
        load = v.load
        if not v.usable or not v.up or load.in_flight >= b.max_in_flight:
            # unusable (a breaker, memory distress or a drain): not even a last resort;
            # down: a last resort for retries; at max_in_flight: not now
            left = _left_out(v)
        elif not has_room(v, need, mark):
            left = Bypass.NO_KV_ROOM  # not now: it would overcommit the engine's KV
            kv_full += 1
        else:
            left = None
        if left is not None:
            if b.url == owner_url:
                owner_left = left
            if left is Bypass.DOWN:
                down.append(b)
            continue
        wait_ms = ((load.pending_prefill + prompt) * 1000.0 / v.prefill_tokens_per_s
                   + load.budget_in_flight * step_ms_per_token)  # fmt: skip
        cost = wait_ms + away
        if b.url == owner_url and owner_ok:
            placement = Placement.HASH_OWNER
        else:
            cost += settings.affinity_tolerance_ms
            placement = Placement.OWNER_OVER_LOAD if b.url == owner_url else Placement.NOT_OWNER
        scored.append(
            _Scored(cost, wait_ms, load.long_pending == 0, b, placement, b.index in reserved)
        )
    return owner_url, owner_left, kv_full


def _left_out(v: BackendView) -> Bypass:
    """Why a backend that is not scored was left out."""
    if not v.usable:
        return Bypass.UNUSABLE
    return Bypass.DOWN if not v.up else Bypass.MAX_IN_FLIGHT


def _owner_and_views(
    pool: PoolView, key: str, need: int, view_of: ViewOf, settings: PlannerSettings
) -> tuple[str, list[BackendView], bool]:
    """The pool's hash owner for ``key``, every backend's view, and whether the owner is
    within its bounded load: consistent hashing with bounded loads, on token work. The cap
    is c x the mean with this request added, and never below the request plus one window
    (a ratio of small loads says nothing: 650 tokens against 0 is not a hot spot)."""
    backends = pool.backends
    if len(backends) == 1:
        # a ring of one: it owns every key, and a lone backend is never over a cap of
        # c x (its own load + this request)
        return backends[0].url, [view_of(backends[0])], True
    owner_url = pool.ring.owner(key)
    views = []
    usable = 0
    usable_budget = 0
    owner_budget = -1  # the owner's budget in flight, when it is usable
    for b in backends:
        v = view_of(b)
        views.append(v)
        load = v.load
        if v.up and v.usable and load.in_flight < b.max_in_flight:
            usable += 1
            usable_budget += load.budget_in_flight
            if b.url == owner_url:
                owner_budget = load.budget_in_flight
    if usable <= 1 or owner_budget < 0:
        return owner_url, views, True
    mean = (usable_budget + need) / usable
    cap = max(settings.load_factor * mean, float(need + pool.max_context_tokens))
    return owner_url, views, owner_budget + need <= cap


def _order(
    scored: list[_Scored],
    short: bool,
    pools: Sequence[PoolView],
    view_of: ViewOf,
    settings: PlannerSettings,
) -> Rule:
    """Sort the scored candidates: by cost, after the rules about long prefills; returns
    the rule that ordered them."""
    rule = Rule.NONE
    if len(scored) > 1:
        clean = sum(1 for s in scored if s.clean) if short else 0
        if short and 0 < clean < len(scored):
            scored.sort(key=_dirty_then_cost)
            rule = Rule.AVOIDS_LONG_PREFILLS
        else:
            scored.sort(key=_cost)
    if not scored or short:
        return rule
    work = settings.work
    if work.hold:
        scored.sort(key=_long_order)
        return Rule.LONG_WORK_TO_CLEAN
    if _clean_backends(pools, view_of) <= work.keep_clean and any(
        not s.clean and s.wait_ms <= settings.long_wait_limit_ms for s in scored
    ):
        scored.sort(key=_clean)  # stable: by cost within each group
        return Rule.LEAVES_ONE_CLEAN
    return rule


def _bypass(owner: str, scored: list[_Scored], best: _Scored, rule: Rule) -> tuple[Bypass, float]:
    """Why the hash owner, a scored candidate, is not the first one (computed only then):
    its bounded load, a long-prefill rule, or its estimated wait (returned with it)."""
    for s in scored:
        if s.backend.url == owner:
            if s.placement is Placement.OWNER_OVER_LOAD:
                return Bypass.BOUNDED_LOAD, 0.0
            if rule is not Rule.NONE and s.clean != best.clean:
                return (Bypass.LONG_PREFILL_PENDING if not s.clean else Bypass.KEPT_FREE), 0.0
            if rule is not Rule.NONE and s.reserved and not best.reserved:
                return Bypass.KEPT_LIGHT, 0.0
            return Bypass.WAIT, s.wait_ms
    return Bypass.NOT_A_CANDIDATE, 0.0


def _clean_backends(pools: Sequence[PoolView], view_of: ViewOf) -> int:
    """Backends of the model that are usable and free of long pending prefill."""
    count = 0
    for pool in pools:
        for b in pool.backends:
            v = view_of(b)
            if (
                v.up
                and v.usable
                and v.load.long_pending == 0
                and v.load.in_flight < b.max_in_flight
            ):
                count += 1
    return count
