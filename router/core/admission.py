"""Admission: who is dispatched now, who waits at the router, who is refused. Pure: values
and the clock come in, decisions go out; the asyncio side is ``router/dispatch/gate.py``.

A request that cannot start now waits in its preferred pool's bounded queue, ordered by
priority tier (0 is the highest) then arrival (short ones newest first once a queue of
them forms: see ``WaitQueue.service_order``). It leaves the queue in exactly one way:

* dispatched, when a candidate backend has room (``verdict`` says ADMIT);
* refused 429 ``queue_full`` when the queue is full and no lower tier waits to make room
  for it, or when a higher tier arrives and it is the lowest, newest waiter (evicted);
* refused 429 ``deadline`` when its deadline passed, it waited longer than its class
  allows, or on arrival the queue ahead of it cannot drain before its deadline;
* gone, when its client left (the gate removes it).

Long requests (prompt at or over ``long_prefill_tokens``) are also *held*: they wait, within
their deadline, while the best backend for them already has a long prefill pending (it
would queue inside the engine, committed to it, instead of here, free to take the first
backend that clears), while dispatching one would leave fewer than ``keep_clean`` backends
of the model free of a long pending prefill (a short request behind a long prefill waits
for all of it), while it would put the chosen backend's KV budget in flight past its KV
capacity (the engine would preempt), or while the only backend free for it is one kept
light for short requests (the planner's ``reserved_for_short``) and a busy one with KV room
will soon be free (a long document decodes for seconds after its prefill, slowing every
step of its engine: long work stays on the others while they can carry it). A long
prefill in flight always ends, so a held request never waits on nothing: with no long
prefill pending anywhere, it is admitted. A long request also yields, for a bounded time,
to a short prefill pending on its best backend (the engine would run the short prompt in
the same step as the long one's first chunk).

The allowed wait shrinks when a standing queue forms (CoDel, Nichols and Jacobson 2012):
once, for ``interval``, every request dispatched had waited more than ``target`` or the
head of the queue has, waiters of that class and of the lowest tier waiting may wait only
``target``, until the cut has refused nobody for an interval. So a queue that absorbs a
burst is fine, and a queue that only adds delay is cut back.
"""

from __future__ import annotations

import enum
from bisect import insort
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from router.core.planner import PoolView, reserved_for_short
from router.model import Backend, BackendView, RoutePlan


class Verdict(enum.Enum):
    ADMIT = "admit"
    FULL = "full"  # no candidate has room (max_in_flight, memory pressure)
    RESERVED = "reserved"  # room is left only for higher tiers
    HOLD_CLEAN = "hold_clean"  # a long prefill now would leave no backend free of one
    HOLD_KV = "hold_kv"  # no candidate has KV room for its budget
    HOLD_SHORT = "hold_short"  # a short prefill is pending where it would go: let it start
    LATE = "late"  # the best backend would not start it before its deadline: wait for a better
    NO_BACKEND = "no_backend"  # nothing usable, and waiting would not change that soon

    __hash__ = object.__hash__


_DOWN: Final = float("inf")
HOLDS: Final = frozenset({Verdict.HOLD_CLEAN, Verdict.HOLD_KV, Verdict.HOLD_SHORT})
# How long a long request yields to short prefills pending on its best backend: a few
# engine steps (a short prefill starts in the next one), bounded so that a stream of short
# requests never starves it
YIELD_TO_SHORT_MS: Final = 250.0
# Enum members read on every request, as module globals: on Python 3.11 ``Enum.MEMBER``
# goes through EnumType.__getattr__, about 8x the cost of a global read
_ADMIT: Final = Verdict.ADMIT
_HOLD_SHORT: Final = Verdict.HOLD_SHORT


@dataclass(frozen=True, slots=True)
class ClassLimits:
    """Per request class (short, long): how long a request may wait at the router."""

    deadline_s: float  # default when the client sends no X-Request-Timeout
    max_wait_s: float  # the longest wait in the queue, whatever the deadline
    codel_target_s: float
    codel_interval_s: float


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    reserve: float = 0.0  # share of a pool's capacity kept for this tier and higher ones


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    tiers: tuple[Tier, ...] = (Tier("high"), Tier("normal"), Tier("low"))  # highest first
    default_tier: int = 1
    aliases: Mapping[str, int] = field(default_factory=dict)  # header/body value -> tier
    max_queue: int = 512  # per pool
    short: ClassLimits = ClassLimits(30.0, 10.0, 0.025, 0.05)
    long: ClassLimits = ClassLimits(120.0, 60.0, 5.0, 5.0)
    hold_long: bool = True
    keep_clean: int = 1
    long_prefill_tokens: int = 4096
    # the share of a backend's KV cache that budgets in flight may fill: below the memory
    # breaker's close threshold, so that admitted work alone never trips it
    kv_fill: float = 0.79
    shares: tuple[float, ...] = field(init=False, repr=False, default=())

    def tier_of(self, value: str | None) -> int:
        """The tier a header or body value names (by name, alias or index); unknown values
        and no value at all get the default tier."""
        if value is None:
            return self.default_tier
        key = value.strip().lower()
        for i, tier in enumerate(self.tiers):
            if tier.name == key:
                return i
        return self.aliases.get(key, self.default_tier)

    def __post_init__(self) -> None:
        shares = tuple(1.0 - sum(t.reserve for t in self.tiers[:i]) for i in range(len(self.tiers)))
        object.__setattr__(self, "shares", shares)

    def allowed_share(self, tier: int) -> float:
        """The share of capacity a tier may fill: what the tiers above it reserve is theirs."""
        return self.shares[tier]


@dataclass(slots=True)
class Waiter:
    """A request waiting at the router. ``handle`` and ``replan`` belong to the gate (its
    future, and how to plan it again)."""

    tier: int
    long: bool
    arrived: float
    deadline: float
    seq: int
    reason: Verdict = Verdict.FULL
    handle: Any = None
    replan: Any = None
    yielded_since: float | None = None  # held for short prefills (HOLD_SHORT) since

    def saw(self, v: Verdict, now: float) -> None:
        """What the last verdict on it was (the bound on yielding is on yielding in a row)."""
        self.reason = v
        if v is not _HOLD_SHORT:
            self.yielded_since = None
        elif self.yielded_since is None:
            self.yielded_since = now

    def yielded_ms(self, now: float) -> float:
        """How long it has yielded to short prefills in a row; 0 if it is not yielding."""
        return 0.0 if self.yielded_since is None else (now - self.yielded_since) * 1000.0

    def order(self) -> tuple[int, int]:
        return (self.tier, self.seq)


class Codel:
    """The standing-queue detector of one queue class.

    A standing queue starts once, for ``interval``, every waiter dispatched had waited over
    ``target``, or the head of the queue has been waiting over it. While it lasts, waits
    are cut to the target and newcomers are refused on arrival when the queue ahead would
    not go within it: so the queue is short, the waits of those dispatched say nothing of
    the load (they are short by construction), and the queue empties often. It ends only
    when the cut has refused nobody for a whole ``interval``: the load fell below what the
    fleet serves. Ending it on a short wait or an empty queue instead made it flap under
    sustained overload: the queue grew back to the deadline in the next interval, and
    those served had waited nearly all of it.
    """

    __slots__ = ("above_since", "cut_at", "cut_tiers", "dropping", "interval", "target")

    def __init__(self, target: float, interval: float) -> None:
        self.target = target
        self.interval = interval
        self.above_since: float | None = None  # first dispatch over target in a row
        self.dropping = False
        self.cut_at = 0.0  # when the cut last refused a waiter
        self.cut_tiers: dict[int, float] = {}  # tier -> when the cut last refused one of it

    def dispatched(self, waited: float, now: float) -> None:
        """A waiter left the queue for a backend after ``waited`` seconds."""
        if self.settled(now):
            return
        if waited <= self.target:
            self.above_since = None
        elif self.above_since is None:
            self.above_since = now
        elif now - self.above_since >= self.interval:
            self.dropping = True
            self.cut_at = now

    def head(self, waited: float, now: float) -> None:
        """The head of the class (the next it would serve) has waited ``waited`` so far. A
        queue that nothing leaves (every backend full) dispatches nobody, so dispatches
        alone would never show it standing: the head's wait counts too, from when it
        passed the target."""
        if self.dropping or waited <= self.target:
            return
        if self.above_since is None:
            self.above_since = now - (waited - self.target)
        if now - self.above_since >= self.interval:
            self.dropping = True
            self.cut_at = now

    def cut(self, now: float, tier: int) -> None:
        """The cut refused a waiter (or a newcomer) of ``tier`` that its deadline alone
        would have let wait, while others of its class waited: the load is still over what
        is served."""
        if self.dropping:
            self.cut_at = now
            self.cut_tiers[tier] = now

    def spares(self, tier: int, now: float) -> bool:
        """Whether the cut spares ``tier``: it refused a lower tier within the interval.
        (A lower tier cut back leaves the queue to the higher ones for a moment; the higher
        ones are not cut for that.)"""
        return any(t > tier and now - at < self.interval for t, at in self.cut_tiers.items())

    def settled(self, now: float) -> bool:
        """Whether a standing queue lasts at ``now`` (it ends an interval after the last cut)."""
        if self.dropping and now - self.cut_at >= self.interval:
            self.dropping = False
            self.above_since = None
            self.cut_tiers.clear()
        return self.dropping

    def emptied(self) -> None:
        if not self.dropping:
            self.above_since = None

    def allowed_wait(self, limit: float, now: float) -> float:
        return min(limit, self.target) if self.settled(now) else limit


class DrainMeter:
    """Requests finished per second over the last ``window_s`` seconds (or since the first,
    when that is more recent), in whole-second buckets: how fast room is made, so how fast
    a queue empties, for an honest Retry-After."""

    __slots__ = ("counts", "first", "seconds", "window")

    def __init__(self, window_s: int = 10) -> None:
        self.window = window_s
        self.counts = [0] * window_s
        self.seconds = [-1] * window_s
        self.first: int | None = None

    def record(self, now: float) -> None:
        second = int(now)
        slot = second % self.window
        if self.seconds[slot] != second:  # a new second (the first of all among them)
            if self.first is None:
                self.first = second
            self.seconds[slot] = second
            self.counts[slot] = 0
        self.counts[slot] += 1

    def rate(self, now: float) -> float:
        second = int(now)
        total = sum(c for c, s in zip(self.counts, self.seconds, strict=True)
                    if second - self.window < s <= second)  # fmt: skip
        if self.first is None:
            return 0.0
        return total / min(self.window, max(1, second - self.first + 1))


def retry_after(ahead: int, drain_per_s: float, floor: float = 1.0, ceiling: float = 60.0) -> float:
    """Seconds until ``ahead`` requests have drained at the measured rate, bounded; the
    ceiling when nothing drained lately (a client should not come back at once)."""
    if drain_per_s <= 0:
        return ceiling
    return min(max((ahead + 1) / drain_per_s, floor), ceiling)


class WaitQueue:
    """One pool's bounded queue, in service order: tier, then arrival."""

    __slots__ = ("codel", "drains", "limits", "max_depth", "waiters")

    def __init__(self, max_depth: int, short: ClassLimits, long: ClassLimits) -> None:
        self.max_depth = max_depth
        self.waiters: list[Waiter] = []
        self.limits = (short, long)
        self.codel = (Codel(short.codel_target_s, short.codel_interval_s),
                      Codel(long.codel_target_s, long.codel_interval_s))  # fmt: skip
        # finished per second, per class: a long request's place in the queue moves at the
        # pace long ones finish, not at the pace of the many short ones
        self.drains = (DrainMeter(), DrainMeter())

    def __len__(self) -> int:
        return len(self.waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(tuple(self.waiters))

    def offer(self, waiter: Waiter) -> Waiter | None:
        """Queue ``waiter``. Returns the one refused for lack of room: None when there was
        room, the lowest-tier newest waiter when ``waiter`` is of a higher tier (evicted),
        else ``waiter`` itself."""
        if len(self.waiters) < self.max_depth:
            insort(self.waiters, waiter, key=Waiter.order)
            return None
        if not self.waiters:
            return waiter  # max_queue 0: no queue at all, nobody to evict
        last = self.waiters[-1]  # the lowest tier, newest of it
        if last.tier <= waiter.tier:
            return waiter
        self.waiters.pop()
        insort(self.waiters, waiter, key=Waiter.order)
        return last

    def remove(self, waiter: Waiter) -> bool:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return False
        if not self.waiters:
            for c in self.codel:
                c.emptied()
        return True

    def dispatched(self, waiter: Waiter, now: float) -> bool:
        """``waiter`` leaves for a backend; False when it had left the queue already."""
        self.codel[waiter.long].dispatched(now - waiter.arrived, now)
        return self.remove(waiter)

    def expired(self, now: float) -> list[Waiter]:
        """The waiters whose deadline passed or who waited longer than their class may;
        they are taken out of the queue. While a standing queue lasts, the allowed wait
        shrinks to the CoDel target for the lowest tier waiting only: a higher tier is
        never cut back while a lower one waits."""
        if not self.waiters:
            return []
        lowest = self.waiters[-1].tier
        seen = [False, False]
        for w in self.waiters:  # the head of each class: the next one it would serve
            if not seen[w.long]:
                seen[w.long] = True
                self.codel[w.long].head(now - w.arrived, now)
        out = []
        cut = [False, False]
        for w in self.waiters:
            limit = min(self.limits[w.long].max_wait_s, w.deadline - w.arrived)
            allowed = self._allowed(w.tier, w.long, limit, now)
            waited = now - w.arrived
            if waited >= allowed:
                out.append(w)
                cut[w.long] |= waited < limit
        for w in out:
            self.remove(w)
        for long, codel in enumerate(self.codel):
            # a cut counts while others of the class still wait (a lone request refused by
            # the cut says the fleet was slow for it, not that the load is over capacity)
            if cut[long] and any(w.long == long for w in self.waiters):
                codel.cut(now, lowest)
        return out

    def service_order(self, now: float) -> Sequence[Waiter]:
        """The waiters in the order they are offered room: by tier, then by arrival; once
        a short one has waited over the CoDel target (a queue is forming), or while a
        standing short queue lasts, the newest short ones of each tier first (adaptive
        LIFO, as in Facebook's "Fail at Scale"): under overload the ones just arrived
        still start within the target, and the oldest, who would start late anyway, are
        the ones the cut refuses, instead of every one waiting nearly the target."""
        waiters = self.waiters
        codel = self.codel[0]
        oldest = min((w.arrived for w in waiters if not w.long), default=now)
        if now - oldest <= codel.target and not codel.settled(now):
            return tuple(waiters)
        order: list[Waiter] = []
        i = 0
        while i < len(waiters):
            tier = waiters[i].tier
            j = i
            while j < len(waiters) and waiters[j].tier == tier:
                j += 1
            group = waiters[i:j]
            order.extend(w for w in reversed(group) if not w.long)
            order.extend(w for w in group if w.long)
            i = j
        return order

    def ahead_of(self, tier: int, long: bool) -> int:
        """Waiters of the class of a newcomer of ``tier`` served before it."""
        return sum(1 for w in self.waiters if w.tier <= tier and w.long == long)

    def _spared(self, tier: int, long: bool, now: float) -> bool:
        """Whether a standing queue of the class leaves ``tier`` alone: a lower tier waits
        or was cut within the interval (it is cut first, and a higher tier is never shed
        while a lower one waits)."""
        lower_waits = bool(self.waiters) and self.waiters[-1].tier > tier
        return lower_waits or self.codel[long].spares(tier, now)

    def _allowed(self, tier: int, long: bool, limit: float, now: float) -> float:
        """``limit``, cut to the CoDel target while a standing queue cuts ``tier``."""
        return limit if self._spared(tier, long, now) else self.codel[long].allowed_wait(limit, now)

    def cuts(self, tier: int, long: bool, now: float) -> bool:
        """Whether a standing queue of the class cuts a request of ``tier`` back to the
        target."""
        return self.codel[long].settled(now) and not self._spared(tier, long, now)

    def allowed_wait(self, tier: int, long: bool, now: float) -> float:
        """How long a newcomer may wait here: its class's limit, cut to the CoDel target
        while a standing queue cuts its tier."""
        return self._allowed(tier, long, self.limits[long].max_wait_s, now)

    def start_limit_ms(self, tier: int, long: bool, time_left_s: float, now: float) -> float:
        """How soon a request must be able to start where it is sent: before its deadline;
        while a standing queue cuts its tier, within the CoDel target too (it keeps waiting
        for a backend that can, and its wait is cut to the target): overloaded, the router
        admits only what the fleet can start promptly."""
        target = self.codel[long].target
        if target < time_left_s and self.cuts(tier, long, now):
            return target * 1000.0
        return time_left_s * 1000.0

    def expected_wait(self, tier: int, long: bool, now: float) -> float | None:
        """Seconds until the waiters ahead of a newcomer have gone, at the pace its class
        finishes; None when none are ahead or none finished lately (no estimate)."""
        ahead = self.ahead_of(tier, long)
        rate = self.drains[long].rate(now)
        if not ahead or rate <= 0:
            return None
        return ahead / rate

    def refuse_on_arrival(self, tier: int, long: bool, deadline_s: float,
                          now: float) -> float | None:  # fmt: skip
        """The wait allowed to a newcomer with ``deadline_s`` left, when it should be
        refused at once rather than after waiting in vain: the queue ahead of it would not
        go within its deadline, or within what a standing queue allows. None to queue it."""
        expected = self.expected_wait(tier, long, now)
        if expected is None:
            return None
        allowed = min(deadline_s, self.allowed_wait(tier, long, now))
        if expected <= allowed:
            return None
        if expected <= deadline_s:
            self.codel[long].cut(now, tier)  # only the cut refuses it (others of its class wait)
        return allowed

    def blocks(self, tier: int, long: bool) -> bool:
        """Whether a newcomer must queue behind someone rather than try at once: a short
        one behind short waiters of its tier or higher (a short request is never held
        behind long ones), a long one behind any waiter of its tier or higher."""
        for w in self.waiters:
            if w.tier > tier:
                return False
            if long or not w.long:
                return True
        return False

    def retry_after(self, tier: int, long: bool, now: float) -> float:
        return retry_after(self.ahead_of(tier, long), self.drains[long].rate(now))

    def finished_per_s(self, now: float) -> float:
        return self.drains[0].rate(now) + self.drains[1].rate(now)


def verdict(
    tier: int,
    long: bool,
    plan: RoutePlan,
    pools: Sequence[PoolView],
    view_of: Callable[[Backend], BackendView],
    settings: AdmissionSettings,
    transient: Callable[[Backend], bool],
    time_left_ms: float = _DOWN,
    yielded_ms: float = 0.0,
) -> Verdict:
    """Whether a request of ``tier`` planned as ``plan`` over the model's ``pools`` may be
    dispatched now. ``transient(b)``: ``b`` is kept from new requests for a reason that
    passes by itself (memory pressure, max_in_flight), so waiting is worth it.
    ``time_left_ms``: until the request's deadline; a request whose best backend is
    estimated to start it later than that (behind a long prefill, say) waits for a better
    one, and is refused at its deadline if none comes: what is admitted can start in time.
    ``yielded_ms``: how long a long request has yielded to short prefills in a row."""
    candidates = plan.candidates
    best = candidates[0] if candidates else None
    if best is None or plan.waits_ms[0] == _DOWN:
        # nothing usable, or only backends known down (a last resort, tried anyway: the
        # planner lists them last, with an infinite wait)
        if best is not None:
            return _ADMIT
        for i in plan.pools:
            if any(transient(b) for b in pools[i].backends):
                return Verdict.FULL
        return Verdict.NO_BACKEND
    if plan.waits_ms[0] > time_left_ms:
        return Verdict.LATE
    share = settings.shares[tier]
    if share < 1.0:
        capacity = 0
        in_flight = 0
        for i in plan.pools:
            for b in pools[i].backends:
                v = view_of(b)
                if v.usable and v.up:
                    capacity += b.max_in_flight
                    in_flight += v.load.in_flight
        if in_flight + 1 > share * capacity:
            return Verdict.RESERVED
    if not long:
        if view_of(best).load.long_pending and _clean_one_full(pools, view_of):
            # behind a long prefill it would wait for all of it: a backend free of one is
            # only full for now, so it waits here for that one instead
            return Verdict.FULL
        return _ADMIT
    if not settings.hold_long:
        return _ADMIT
    first = view_of(best)
    pending = first.load
    if pending.pending_prefill and not pending.long_pending and yielded_ms < YIELD_TO_SHORT_MS:
        # a short request sent there has not started: the engine's next step would take it
        # with this one's first chunk (thousands of tokens), and its first token would wait
        # for the whole chunk. It starts in a step or two; this one waits that long here
        return _HOLD_SHORT
    clean = 0
    long_pending = 0
    for pool in pools:
        for b in pool.backends:
            v = view_of(b)
            if not (v.up and v.usable):
                continue
            if v.load.long_pending:
                long_pending += 1
            elif v.load.in_flight < b.max_in_flight:
                clean += 1
    if long_pending == 0:
        return _ADMIT  # nothing to wait for: holding would never end
    if not _kv_room(first, plan.budget, settings.kv_fill):
        return Verdict.HOLD_KV
    # the planner puts backends free of long prefill first for long requests: a long one
    # never queues in an engine behind another long prefill, it waits here instead
    if first.load.long_pending or clean - 1 < settings.keep_clean:
        return Verdict.HOLD_CLEAN
    if best.index in reserved_for_short(pools, view_of, settings.keep_clean):
        # the planner puts backends kept light for short requests last: this one is first,
        # so every other one is busy with a long prefill or lacks KV room. Wait for a busy
        # one with room rather than bring long work to a light one; none: the fleet needs it
        for pool in pools:
            for b in pool.backends:
                v = view_of(b)
                load = v.load
                if (v.up and v.usable and load.long_pending and b is not best
                        and load.in_flight < b.max_in_flight
                        and _kv_room(v, plan.budget, settings.kv_fill)):  # fmt: skip
                    return Verdict.HOLD_CLEAN
    return _ADMIT


def _clean_one_full(pools: Sequence[PoolView], view_of: Callable[[Backend], BackendView]) -> bool:
    """Whether a usable backend free of long prefill is kept only by max_in_flight."""
    for pool in pools:
        for b in pool.backends:
            v = view_of(b)
            load = v.load
            if v.up and v.usable and not load.long_pending and load.in_flight >= b.max_in_flight:
                return True
    return False


def _kv_room(v: BackendView, budget: int, fill: float) -> bool:
    return v.kv_tokens is None or v.load.budget_in_flight + budget <= v.kv_tokens * fill


@dataclass(slots=True)
class OverloadGuard:
    """The router's own health: event-loop lag and resident memory against their limits.
    ``sustain`` checks in a row over a limit shed one more tier, lowest first (never the
    highest); each check under both limits sheds one fewer. One slow check (the host busy
    for a moment) sheds nothing."""

    tiers: int
    max_lag_s: float | None
    max_rss_bytes: int | None
    sustain: int = 3
    level: int = 0  # how many of the lowest tiers are shed
    lag_s: float = 0.0
    rss_bytes: int = 0
    over_in_a_row: int = 0

    def observe(self, lag_s: float, rss_bytes: int) -> None:
        self.lag_s = lag_s
        self.rss_bytes = rss_bytes
        over = (self.max_lag_s is not None and lag_s > self.max_lag_s) or (
            self.max_rss_bytes is not None and rss_bytes > self.max_rss_bytes
        )
        if over:
            self.over_in_a_row += 1
            if self.over_in_a_row >= self.sustain:
                self.over_in_a_row = 0
                self.level = min(self.level + 1, self.tiers - 1)
        else:
            self.over_in_a_row = 0
            if self.level:
                self.level -= 1

    def sheds(self, tier: int) -> bool:
        return tier >= self.tiers - self.level
