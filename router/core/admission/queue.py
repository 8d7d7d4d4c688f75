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


class WaitQueue:
    """One pool's bounded queue, in service order: tier, then arrival."""

    __slots__ = ("codel", "drains", "limits", "max_depth", "waiters")

    def __init__(self, max_depth: int, short: ClassLimits, long: ClassLimits) -> None:
        self.max_depth = max_depth
        self.waiters: list[Waiter] = []
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
        if now - oldest <= codel.target:
            codel.update(now)
            if not codel.standing:
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

    def expected_wait(self, tier: int, long: bool, now: float) -> float | None:
        """Seconds until the waiters ahead of a newcomer have gone, at the pace its class
        finishes; None when none are ahead or none finished lately (no estimate)."""
        ahead = self.ahead_of(tier, long)
        rate = self.drains[long].rate(now)
        if not ahead or rate <= 0:
            return None
        return ahead / rate

    def refuse_on_arrival(
        self, tier: int, long: bool, deadline_s: float, now: float
    ) -> float | None:
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

    def must_wait_behind(self, tier: int, long: bool) -> bool:
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
