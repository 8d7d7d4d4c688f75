"""One pool's bounded wait queue, in service order, with its CoDel detectors and drain
meters (per class: short, long)."""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ctxroute.router.core.admission.codel import Codel
from ctxroute.router.core.admission.drain import DrainMeter, retry_after
from ctxroute.router.core.admission.settings import ClassLimits
from ctxroute.router.core.admission.shares import TierShares
from ctxroute.router.core.admission.verdict import FULL, HOLD_SHORT, Verdict
from ctxroute.router.model import RoutePlan


@dataclass(slots=True)
class Waiter:
    """A request waiting at the router. ``handle`` and ``replan`` belong to the gate (its
    future, and how to plan it again)."""

    tier: int
    long: bool
    arrived: float
    deadline: float
    seq: int
    reason: Verdict = FULL
    handle: Any = None  # the gate's asyncio future
    replan: Callable[[], RoutePlan] | None = None
    yielded_since: float | None = None  # held for short prefills (HOLD_SHORT) since
    tenant: str | None = None  # its key's tenant (fair shares), None without keys
    refusal: Any = None  # the gate's refusal of it, when it came after its wake-up

    def note_verdict(self, v: Verdict, now: float) -> None:
        """Keep the last verdict on it (the bound on yielding is on yielding in a row)."""
        self.reason = v
        if v is not HOLD_SHORT:
            self.yielded_since = None
        elif self.yielded_since is None:
            self.yielded_since = now

    def yielded_ms(self, now: float) -> float:
        """How long it has yielded to short prefills in a row; 0 if it is not yielding."""
        return 0.0 if self.yielded_since is None else (now - self.yielded_since) * 1000.0

    def order(self) -> tuple[int, int]:
        return (self.tier, self.seq)


Rank = Callable[[str | None], float]  # a tenant's virtual token counter (fair shares)


class WaitQueue:
    """One pool's bounded queue, kept sorted by tier, then arrival. Served by tier shares
    (``shares``: by weight; None: strict precedence, a higher tier always first) and,
    within a tier, by the tenants' counters (``rank``; None: by arrival alone)."""

    __slots__ = ("codel", "drains", "limits", "max_depth", "rank", "shares", "waiters")

    def __init__(self, max_depth: int, short: ClassLimits, long: ClassLimits,
                 shares: TierShares | None = None, rank: Rank | None = None) -> None:  # fmt: skip
        self.max_depth = max_depth
        self.waiters: list[Waiter] = []
        self.shares = shares
        self.rank = rank
        self.limits = (short, long)
        self.codel = (
            Codel(short.codel_target_s, short.codel_interval_s),
            Codel(long.codel_target_s, long.codel_interval_s),
        )
        # finished per second, per class: a long request's place in the queue moves at the
        # pace long ones finish, not at the pace of the many short ones
        self.drains = (DrainMeter(), DrainMeter())

    def __len__(self) -> int:
        return len(self.waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(tuple(self.waiters))

    def offer(self, waiter: Waiter) -> Waiter | None:
        """Queue ``waiter``. Returns the one refused for lack of room: None when there was
        room, else the newest waiter of the tier most over its share of the queue (by
        weight; strict precedence: the lowest tier), and within it of the tenant with the
        most waiting: an evicted waiter, or ``waiter`` itself."""
        if len(self.waiters) < self.max_depth:
            insort(self.waiters, waiter, key=Waiter.order)
            return None
        if not self.waiters:
            return waiter  # max_queue 0: no queue at all, nobody to evict
        victim = self._victim(waiter)
        if victim is not waiter:
            self.waiters.remove(victim)
            insort(self.waiters, waiter, key=Waiter.order)
        return victim

    def _victim(self, newcomer: Waiter) -> Waiter:
        everyone = [*self.waiters, newcomer]  # newcomer last: the newest of any group
        shares = self.shares
        if shares is None:
            tier = max(w.tier for w in everyone)
        else:
            counts: dict[int, int] = {}
            for w in everyone:
                counts[w.tier] = counts.get(w.tier, 0) + 1
            tier = max(counts, key=lambda t: (counts[t] * shares.steps[t], t))
        group = [w for w in everyone if w.tier == tier]
        by_tenant: dict[str | None, int] = {}
        for w in group:
            by_tenant[w.tenant] = by_tenant.get(w.tenant, 0) + 1
        heaviest = max(by_tenant, key=lambda t: (by_tenant[t], t == newcomer.tenant))
        return max((w for w in group if w.tenant == heaviest), key=lambda w: w.seq)

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
                self.codel[w.long].head_waited(now - w.arrived, now)
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
        lifo = True
        if now - oldest <= codel.target:
            codel.update(now)
            lifo = codel.standing
        if not lifo and self.shares is None and self.rank is None:
            return tuple(waiters)
        order: list[Waiter] = []
        for group in self._tier_groups():
            if self.rank is not None and len({w.tenant for w in group}) > 1:
                rank = self.rank
                counters = {t: rank(t) for t in {w.tenant for w in group}}
                if lifo:  # lowest counter first; within a tenant, short ones newest first
                    order.extend(sorted((w for w in group if not w.long),
                                        key=lambda w: (counters[w.tenant], -w.seq)))  # fmt: skip
                    order.extend(sorted((w for w in group if w.long),
                                        key=lambda w: (counters[w.tenant], w.seq)))  # fmt: skip
                else:
                    order.extend(sorted(group, key=lambda w: (counters[w.tenant], w.seq)))
                continue
            if lifo:
                order.extend(w for w in reversed(group) if not w.long)
                order.extend(w for w in group if w.long)
            else:
                order.extend(group)
        return order

    def _tier_groups(self) -> list[list[Waiter]]:
        """The waiters by tier, the tiers in the order they are served now."""
        groups: list[list[Waiter]] = []
        for w in self.waiters:
            if groups and groups[-1][0].tier == w.tier:
                groups[-1].append(w)
            else:
                groups.append([w])
        shares = self.shares
        if shares is not None and len(groups) > 1:
            groups.sort(key=lambda g: shares.key(g[0].tier))
        return groups

    def ahead_of(self, tier: int, long: bool, tenant: str | None = None) -> int:
        """Waiters of the class of a newcomer of ``tier`` (and ``tenant``) served before it:
        by tier shares, those of its tier and what the other tiers' weights give them
        meanwhile; by strict precedence, every one of its tier or higher. Of its tier, with
        fair shares: its own tenant's, and one of each tenant whose counter is lower (after
        one request that tenant's counter has, as a rule, passed it: requests alternate)."""
        rank = self.rank
        mine = rank(tenant) if rank is not None and tenant is not None else None
        counted: set[str | None] = set()
        waiting = [0] * (len(self.shares.steps) if self.shares is not None else tier + 1)
        for w in self.waiters:
            if w.long != long or (self.shares is None and w.tier > tier):
                continue
            if w.tier == tier and w.tenant != tenant and mine is not None:
                if w.tenant in counted or not self._before(w, mine, tenant):
                    continue
                counted.add(w.tenant)
            waiting[w.tier] += 1
        if self.shares is None:
            return sum(waiting)
        return round(self.shares.ahead(tier, waiting))

    def _before(self, w: Waiter, mine: float | None, tenant: str | None = None) -> bool:
        """Whether ``w`` of a newcomer's tier goes before the newcomer (of ``tenant`` and
        counter ``mine``; None: by arrival, so every one of them does): its own tenant's
        waiters do, another tenant's when that tenant's counter is lower (a tie is decided
        at its wake-up, and goes to whoever has been served less by then)."""
        if mine is None or self.rank is None or w.tenant == tenant:
            return True
        return self.rank(w.tenant) < mine

    def _spared(self, tier: int, long: bool, now: float) -> bool:
        """Whether a standing queue of the class leaves ``tier`` alone: a lower tier waits
        or was cut within the interval (it is cut first, and a higher tier is never shed
        while a lower one waits)."""
        lower_waits = bool(self.waiters) and self.waiters[-1].tier > tier
        return lower_waits or self.codel[long].cut_below(tier, now)

    def _allowed(self, tier: int, long: bool, limit: float, now: float) -> float:
        """``limit``, cut to the CoDel target while a standing queue cuts ``tier``."""
        return limit if self._spared(tier, long, now) else self.codel[long].allowed_wait(limit, now)

    def cuts_back(self, tier: int, long: bool, now: float) -> bool:
        """Whether a standing queue of the class cuts a request of ``tier`` back to the
        target."""
        codel = self.codel[long]
        if not codel.standing:
            return False
        codel.update(now)
        return codel.standing and not self._spared(tier, long, now)

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
        if target < time_left_s and self.cuts_back(tier, long, now):
            return target * 1000.0
        return time_left_s * 1000.0

    def expected_wait(self, tier: int, long: bool, now: float,
                      tenant: str | None = None) -> float | None:  # fmt: skip
        """Seconds until the waiters ahead of a newcomer have gone, at the pace its class
        finishes; None when none are ahead or none finished lately (no estimate)."""
        ahead = self.ahead_of(tier, long, tenant)
        rate = self.drains[long].rate(now)
        if not ahead or rate <= 0:
            return None
        return ahead / rate

    def refuse_on_arrival(
        self, tier: int, long: bool, deadline_s: float, now: float, tenant: str | None = None
    ) -> float | None:
        """The wait allowed to a newcomer with ``deadline_s`` left, when it should be
        refused at once rather than after waiting in vain: the queue ahead of it would not
        go within its deadline, or within what a standing queue allows. None to queue it."""
        expected = self.expected_wait(tier, long, now, tenant)
        if expected is None:
            return None
        allowed = min(deadline_s, self.allowed_wait(tier, long, now))
        if expected <= allowed:
            return None
        if expected <= deadline_s:
            self.codel[long].cut(now, tier)  # only the cut refuses it (others of its class wait)
        return allowed

    def must_wait_behind(self, tier: int, long: bool, tenant: str | None = None) -> bool:
        """Whether a newcomer must queue behind someone rather than try at once: a short
        one behind short waiters served before it (a short request is never held behind
        long ones), a long one behind any waiter served before it. Served before it: by
        tier shares, the tiers served before its own now; strict, every higher tier; in
        its own tier, those of tenants served before its own (fair shares), else all."""
        shares = self.shares
        rank = self.rank
        mine = rank(tenant) if rank is not None and tenant is not None else None
        if shares is None:
            for w in self.waiters:
                if w.tier > tier:
                    return False
                if (long or not w.long) and (w.tier < tier or self._before(w, mine, tenant)):
                    return True
            return False
        key = shares.key(tier)
        for w in self.waiters:
            if not (long or not w.long):
                continue
            if w.tier == tier:
                if self._before(w, mine, tenant):
                    return True
            elif shares.key(w.tier) < key:
                return True
        return False

    def retry_after(self, tier: int, long: bool, now: float, tenant: str | None = None) -> float:
        return retry_after(self.ahead_of(tier, long, tenant), self.drains[long].rate(now))

    def finished_per_s(self, now: float) -> float:
        return self.drains[0].rate(now) + self.drains[1].rate(now)
