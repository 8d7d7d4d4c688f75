"""The dispatch verdict: may a request planned as it is go now, and if not, why it waits."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from typing import Final

from ctxroute.router.core.admission.settings import AdmissionSettings
from ctxroute.router.core.kvroom import has_room
from ctxroute.router.core.longwork import LongWork
from ctxroute.router.core.planner import PoolView
from ctxroute.router.model import Backend, BackendView, RoutePlan

ViewOf = Callable[[Backend], BackendView]


class Verdict(enum.Enum):
    ADMIT = "admit"
    FULL = "full"  # no candidate has room (max_in_flight, memory pressure)
    RESERVED = "reserved"  # room is left only for higher tiers
    HOLD_CLEAN = "hold_clean"  # a long prefill now would leave no backend free of one
    HOLD_KV = "hold_kv"  # no backend has KV room for its budget under its class's mark
    HOLD_SHORT = "hold_short"  # a short prefill is pending where it would go: let it start
    LATE = "late"  # the best backend would not start it before its deadline: wait for a better
    NO_BACKEND = "no_backend"  # nothing usable, and waiting would not change that soon

    @property
    def dispatches(self) -> bool:
        """The request goes on now (NO_BACKEND: to the proxy, which answers the 503)."""
        return self is ADMIT or self is NO_BACKEND


# hot-path aliases, read per request (why: docs/architecture.md, "Performance budget")
ADMIT: Final = Verdict.ADMIT
FULL: Final = Verdict.FULL
RESERVED: Final = Verdict.RESERVED
HOLD_CLEAN: Final = Verdict.HOLD_CLEAN
HOLD_KV: Final = Verdict.HOLD_KV
HOLD_SHORT: Final = Verdict.HOLD_SHORT
LATE: Final = Verdict.LATE
NO_BACKEND: Final = Verdict.NO_BACKEND

HOLDS: Final = frozenset({HOLD_CLEAN, HOLD_KV, HOLD_SHORT})
# How long a long request yields to short prefills pending on its best backend: a few
# engine steps (a short prefill starts in the next one), bounded so that a stream of short
# requests never starves it
YIELD_TO_SHORT_MS: Final = 250.0
# A long request takes the last backend open to short requests only when it could not
# wait this much longer for another one and still start before its deadline
LAST_RESORT_MARGIN_MS: Final = 1000.0


def verdict(
    tier: int,
    long: bool,
    plan: RoutePlan,
    pools: Sequence[PoolView],
    view_of: ViewOf,
    settings: AdmissionSettings,
    transient: Callable[[Backend], bool],
    time_left_ms: float = float("inf"),
    yielded_ms: float = 0.0,
) -> Verdict:
    """Whether a request of ``tier`` planned as ``plan`` over the model's ``pools`` may be
    dispatched now. ``transient(b)``: ``b`` is kept from new requests for a reason that
    passes by itself (memory pressure, max_in_flight), so waiting is worth it.
    ``time_left_ms``: until the request's deadline; a request whose best backend is
    estimated to start it later than that (behind a long prefill, say) waits for a better
    one, and is refused at its deadline if none comes: what is admitted can start in time.
    ``yielded_ms``: how long a long request has yielded to short prefills in a row."""
    if not plan.usable:
        if plan.kv_full:
            return HOLD_KV  # requests end and free their KV: room comes by itself
        # nothing usable, or only backends known down (a last resort, tried anyway: the
        # planner lists them last)
        if plan.candidates:
            return ADMIT
        return FULL if _any_transient(plan, pools, transient) else NO_BACKEND
    if plan.waits_ms[0] > time_left_ms:
        return LATE
    if settings.shares[tier] < 1.0 and _over_share(tier, plan, pools, view_of, settings):
        return RESERVED
    if not long:
        if view_of(plan.candidates[0]).load.long_pending and _clean_one_full(pools, view_of):
            # behind a long prefill it would wait for all of it: a backend free of one is
            # only full for now, so it waits here for that one instead
            return FULL
        return ADMIT
    if not settings.work.hold:
        return ADMIT
    return _long_verdict(plan, pools, view_of, settings, yielded_ms, time_left_ms)


def _long_verdict(
    plan: RoutePlan,
    pools: Sequence[PoolView],
    view_of: ViewOf,
    settings: AdmissionSettings,
    yielded_ms: float,
    time_left_ms: float,
) -> Verdict:
    """Whether long work held at the router may go now (``LongWork.hold``). The planner
    has left out every backend without KV room for it."""
    best = plan.candidates[0]
    best_view = view_of(best)
    pending = best_view.load
    if pending.pending_prefill and not pending.long_pending and yielded_ms < YIELD_TO_SHORT_MS:
        # a short request sent there has not started: the engine's next step would take it
        # with this one's first chunk (thousands of tokens), and its first token would wait
        # for the whole chunk. It starts in a step or two; this one waits that long here
        return HOLD_SHORT
    work = settings.work
    clean, long_pending, usable, for_short = _count_clean(pools, view_of, work)
    if (
        usable > work.keep_clean
        and for_short - 1 < work.keep_clean
        and _open_to_short(best_view, work)
        and time_left_ms - plan.waits_ms[0] > LAST_RESORT_MARGIN_MS
    ):
        # it would take the last backend where a short request starts at once (no long
        # prefill, room under the short mark): every other one is busy, full, or has no KV
        # room even for short work. Holding a long document a few seconds more costs less
        # than its prefill in front of every short request; it goes there only when it
        # could not wait any longer and still start in time
        return HOLD_CLEAN
    if long_pending == 0:
        return ADMIT  # nothing to wait for: holding would never end
    # the planner puts backends free of long prefill first for long requests: a long one
    # never queues in an engine behind another long prefill, it waits here instead
    if best_view.load.long_pending or clean - 1 < work.keep_clean:
        return HOLD_CLEAN
    return ADMIT


def _any_transient(
    plan: RoutePlan, pools: Sequence[PoolView], transient: Callable[[Backend], bool]
) -> bool:
    return any(transient(b) for i in plan.pools for b in pools[i].backends)


def _over_share(
    tier: int,
    plan: RoutePlan,
    pools: Sequence[PoolView],
    view_of: ViewOf,
    settings: AdmissionSettings,
) -> bool:
    """Whether one more request of ``tier`` would fill the pools that can hold it past the
    tier's share (what higher tiers reserve is theirs). Reserves are whole slots, rounded
    down: 10% of one usable slot reserves none, so a small pool (or one that a breaker left
    a slot of) still serves every tier instead of refusing all but the highest."""
    capacity = 0
    in_flight = 0
    for i in plan.pools:
        for b in pools[i].backends:
            v = view_of(b)
            if v.usable and v.up:
                capacity += b.max_in_flight
                in_flight += v.load.in_flight
    reserved = math.floor(capacity * (1.0 - settings.shares[tier]) + 1e-9)
    return in_flight + 1 > capacity - reserved


def _count_clean(
    pools: Sequence[PoolView], view_of: ViewOf, work: LongWork
) -> tuple[int, int, int, int]:
    """(usable backends free of long prefill with room, usable backends with one pending,
    usable backends, usable backends open to short requests)."""
    clean = 0
    long_pending = 0
    usable = 0
    for_short = 0
    for pool in pools:
        for b in pool.backends:
            v = view_of(b)
            if not (v.up and v.usable):
                continue
            usable += 1
            if v.load.long_pending:
                long_pending += 1
            elif v.load.in_flight < b.max_in_flight:
                clean += 1
                for_short += _open_to_short(v, work)
    return clean, long_pending, usable, for_short


def _open_to_short(v: BackendView, work: LongWork) -> bool:
    """Whether a short request (up to the longest short prompt) would start at once on the
    backend of ``v``: no long prefill pending, below max_in_flight, room under the short
    mark."""
    load = v.load
    return (
        not load.long_pending
        and load.in_flight < v.backend.max_in_flight
        and has_room(v, work.prefill_tokens, work.kv.short)
    )


def _clean_one_full(pools: Sequence[PoolView], view_of: ViewOf) -> bool:
    """Whether a usable backend free of long prefill is kept only by max_in_flight."""
    for pool in pools:
        for b in pool.backends:
            v = view_of(b)
            load = v.load
            if v.up and v.usable and not load.long_pending and load.in_flight >= b.max_in_flight:
                return True
    return False
