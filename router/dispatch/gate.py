"""The asyncio edge of admission (``router/core/admission/``): per-pool wait queues of
futures and the wake-ups that move them.

``Gate.enter`` either returns a ``Ticket`` and the plan to dispatch with, or raises the
refusal (429 ``queue_full`` or ``deadline``, 503 ``overload``); a request whose plan has
nothing usable at all goes on to the proxy, which answers the 503 ``no_backend`` with the
breakers' Retry-After. The caller releases the ticket in ``finally``; a ticket released
twice counts once.

Waiters are moved by events, not by polling alone: the ledger calls ``Gate.changed`` when
an attempt ends or a long prefill produces its first byte (a backend has room, or is
clean again), and while anyone waits a timer every ``_TICK_S`` expires deadlines and
picks up what events cannot tell (other replicas' load, a memory breaker that closed).
One waiter per queue is woken at a time; it checks again when it runs, dispatches (the
ledger counts it in the same step) and wakes the next: a woken waiter never finds its
room taken by the one woken with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import monotonic
from typing import Final

from ctxroute.router.config import AdmissionConfig
from ctxroute.router.core.admission import (
    HOLDS,
    DrainMeter,
    OverloadGuard,
    Verdict,
    Waiter,
    verdict,
)
from ctxroute.router.core.admission.fairshare import VirtualCounters
from ctxroute.router.core.admission.queue import WaitQueue
from ctxroute.router.core.admission.shares import TierShares
from ctxroute.router.core.admission.verdict import FULL, HOLD_CLEAN, LATE
from ctxroute.router.core.breaker import BreakerState
from ctxroute.router.core.planner import PoolView, ViewOf
from ctxroute.router.dispatch import refusals
from ctxroute.router.errors import RouterError
from ctxroute.router.fleet.ledger import Ledger
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.model import Backend, RoutePlan
from ctxroute.router.observe.snapshot import AdmissionState, QueueState

_TICK_S: Final = 0.01
Replan = Callable[[], RoutePlan]


class Ticket:
    """An admitted request; ``release`` once it has ended, in ``finally``."""

    __slots__ = ("admitted", "drain", "released", "tier")

    def __init__(self, admitted: list[int], drain: DrainMeter, tier: int) -> None:
        self.admitted = admitted  # the pool's admitted count per tier
        self.drain = drain  # the pool's, of the request's class
        self.tier = tier
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.admitted[self.tier] -= 1
        self.drain.record(monotonic())


class Gate:
    def __init__(self, fleet: Fleet, ledger: Ledger, config: AdmissionConfig,
                 tenants: VirtualCounters | None = None) -> None:  # fmt: skip
        """``tenants``: the tenants' counters, when waiting requests of a tier are served by
        fair shares (None: by arrival)."""
        settings = fleet.admission
        self.fleet = fleet
        self.ledger = ledger
        self.settings = settings
        self.enabled = config.enabled
        self.tenants = tenants
        weights = [t.weight for t in settings.tiers]
        rank = None if tenants is None else tenants.of
        self.queues = {
            p.name: WaitQueue(
                settings.max_queue, settings.short, settings.long, TierShares(weights), rank
            )
            for p in fleet.pools
        }
        self.waking: dict[str, Waiter | None] = dict.fromkeys(self.queues)
        # each queue's list of waiters (the same lists, kept in place by the queues): what
        # changed(), called at every attempt's end, looks at to learn that nobody waits
        self._waiter_lists = tuple(q.waiters for q in self.queues.values())
        self.admitted = {p.name: [0] * len(settings.tiers) for p in fleet.pools}
        # a pool's name -> every pool of its model (what a verdict looks over)
        self.pools_of: dict[str, tuple[PoolView, ...]] = {
            p.name: fleet.by_model[p.model] for p in fleet.pools
        }
        self.refused: dict[str, int] = {}  # x-ctxroute-reject reason -> count
        self.seq = 0
        o = config.overload
        self.guard = OverloadGuard(
            len(settings.tiers),
            None if o.max_loop_lag_ms is None else o.max_loop_lag_ms / 1000.0,
            None if o.max_rss_mb is None else int(o.max_rss_mb * 1024 * 1024),
            o.sustain,
        )
        self.check_interval_s = o.check_interval_s
        self._timer: asyncio.TimerHandle | None = None
        ledger.on_change = self.changed

    # -- the request path ------------------------------------------------------------

    def admit_now(self, tier: int, long: bool, timeout_s: float | None, plan: RoutePlan,
                  view_of: ViewOf, tenant: str | None = None) -> Ticket | None:  # fmt: skip
        """The common case, without a coroutine: a ticket when the request may go now,
        None when it must wait (then ``wait``); raises when the overload guard sheds it.
        ``view_of``: the fleet as the plan saw it."""
        if self.guard.level and self.guard.sheds(tier):
            raise self._refuse(refusals.overloaded(self.guard, self.settings.tiers[tier].name))
        pool = plan.preferred
        if self.enabled:
            queue = self.queues[pool]
            if queue.waiters and queue.must_wait_behind(tier, long, tenant):
                return None
            now = monotonic()
            left_ms = queue.start_limit_ms(tier, long, self._allowed_s(long, timeout_s), now)
            v = verdict(tier, long, plan, self.pools_of[pool], view_of, self.settings,
                        self._transient, left_ms)  # fmt: skip
            if not v.dispatches:
                return None
        return self._admit(pool, tier, long)

    async def wait(
        self,
        tier: int,
        long: bool,
        timeout_s: float | None,
        plan: RoutePlan,
        replan: Replan,
        tenant: str | None = None,
    ) -> tuple[Ticket, RoutePlan]:
        """Queue a request ``admit_now`` did not let go: returns its ticket and a fresh plan
        once it may go, or raises its refusal. ``replan`` plans it again."""
        pool = plan.preferred
        queue = self.queues[pool]
        allowed_s = self._allowed_s(long, timeout_s)
        waiter = self._enqueue(pool, queue, tier, long, allowed_s, replan, tenant)
        loop = asyncio.get_running_loop()
        try:
            while True:
                future: asyncio.Future[None] = loop.create_future()
                waiter.handle = future
                await future  # raises the refusal, when it is refused
                if self.waking[pool] is waiter:
                    self.waking[pool] = None
                if waiter.refusal is not None:
                    raise waiter.refusal  # refused between its wake-up and now
                plan = replan()
                now = monotonic()
                v = self._verdict_on(waiter, plan, self.pools_of[pool], queue, now)
                if v.dispatches:
                    queue.dispatched(waiter, now)
                    loop.call_soon(self.changed)  # the next one, once this one is dispatched
                    return self._admit(pool, tier, long), plan
                waiter.note_verdict(v, now)
        except BaseException:
            queue.remove(waiter)  # the client left (cancelled) while it waited, or refused
            if self.waking[pool] is waiter:
                self.waking[pool] = None
                loop.call_soon(self.changed)
            raise

    def _enqueue(self, pool: str, queue: WaitQueue, tier: int, long: bool, allowed_s: float,
                 replan: Replan, tenant: str | None) -> Waiter:  # fmt: skip
        """Put a newcomer in its queue, or raise its refusal: at once rather than after
        waiting in vain when the queue ahead of it would not go within its deadline, or
        within what a standing queue allows; when the queue is full of its tier or higher."""
        now = monotonic()
        name = self.settings.tiers[tier].name
        if tenant is not None and self.tenants is not None:
            waiting = {w.tenant for w in queue.waiters if w.tenant is not None}
            if tenant not in waiting:
                self.tenants.lift(tenant, waiting)
        allowed = queue.refuse_on_arrival(tier, long, allowed_s, now, tenant)
        if allowed is not None:
            raise self._refuse(
                refusals.cannot_start_in_time(
                    queue, pool, name, tier, long, allowed, allowed_s, now
                )
            )
        self.seq += 1
        # behind others: a long one waits in the long lane (held, and holding no short one
        # back), a short one for room
        reason = HOLD_CLEAN if long else FULL
        waiter = Waiter(
            tier, long, now, now + allowed_s, self.seq, reason, None, replan, tenant=tenant
        )
        refused = queue.offer(waiter)
        if refused is waiter:
            raise self._refuse(refusals.queue_full(queue, pool, name, tier, long, now))
        if refused is not None:
            self._wake(
                refused,
                self._refuse(refusals.evicted(queue, pool, refused.tier, refused.long, now)),
            )
        self._tick_soon()
        return waiter

    def _verdict_on(
        self, w: Waiter, plan: RoutePlan, pools: tuple[PoolView, ...], queue: WaitQueue, now: float
    ) -> Verdict:
        left_ms = queue.start_limit_ms(w.tier, w.long, w.deadline - now, now)
        return verdict(
            w.tier,
            w.long,
            plan,
            pools,
            self.ledger.view_of,
            self.settings,
            self._transient,
            left_ms,
            w.yielded_ms(now),
        )

    def _allowed_s(self, long: bool, timeout_s: float | None) -> float:
        """How long the request may take to start: its X-Request-Timeout, else its class's."""
        if timeout_s is not None:
            return timeout_s
        settings = self.settings
        return (settings.long if long else settings.short).deadline_s

    def _admit(self, pool: str, tier: int, long: bool) -> Ticket:
        queue = self.queues[pool]
        if queue.waiters and queue.shares is not None:
            # turns are counted only while tiers wait: with nobody waiting there is no
            # share to keep (and a tier that starts waiting resumes at the current turn)
            queue.shares.served(tier)
        admitted = self.admitted[pool]
        admitted[tier] += 1
        return Ticket(admitted, self.queues[pool].drains[long], tier)

    def _refuse(self, exc: RouterError) -> RouterError:
        reason = exc.reject or "other"
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return exc

    def _transient(self, b: Backend) -> bool:
        """Kept from new requests by something that passes by itself (max_in_flight,
        memory pressure), not by a drain, a breaker that is not closed (an open one, or a
        half-open one whose probe is out: its verdict may be another open time) or being
        down."""
        store = self.ledger.store
        i = b.index
        return (
            self.ledger.up[i]
            and not store.drained(i)
            and store.breaker(i).state is BreakerState.CLOSED
        )

    # -- moving the queues -----------------------------------------------------------

    def changed(self) -> None:
        """Something that may let a waiter go happened; cheap when nobody waits."""
        for waiters in self._waiter_lists:
            if waiters:
                break
        else:
            return
        now = monotonic()
        for pool, queue in self.queues.items():
            if not queue.waiters:
                continue
            for w in queue.expired(now):
                self._wake(
                    w,
                    self._refuse(
                        refusals.waited_in_vain(queue, pool, w.tier, w.long, now - w.arrived, now)
                    ),
                )
            if self.waking[pool] is None:
                self._wake_next(pool, queue, now)

    def _wake_next(self, pool: str, queue: WaitQueue, now: float) -> None:
        """Wake the first waiter, in service order, whose verdict lets it go now."""
        long_held = False
        pools = self.pools_of[pool]
        for w in queue.service_order(now):
            if w.long and long_held:
                continue
            handle = w.handle
            if handle is None or handle.done() or w.replan is None:
                continue
            v = self._verdict_on(w, w.replan(), pools, queue, now)
            w.note_verdict(v, now)
            if v.dispatches:
                self.waking[pool] = w
                handle.set_result(None)
                return
            if v in HOLDS:
                long_held = True
                continue
            if v is LATE:
                continue  # one with more time left may still start in time
            return  # no room: the ones behind it are of its tier or lower

    def _wake(self, w: Waiter, exc: RouterError) -> None:
        """Refuse ``w``, already taken out of its queue. When it was woken to go and has
        not run yet, its future is done: the refusal waits on it, and it raises it when it
        runs (else it would wait again, in no queue, until its client left)."""
        handle = w.handle
        if handle is not None and not handle.done():
            handle.set_exception(exc)
        else:
            w.refusal = exc

    @property
    def waiting(self) -> int:
        """Requests waiting, in every queue (counted, not kept: nothing to keep in step)."""
        return sum(len(q.waiters) for q in self.queues.values())

    def _tick_soon(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_TICK_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.changed()
        if self.waiting:
            self._tick_soon()

    def shed_queued(self, now: float) -> None:
        """Refuse the waiters of the tiers the overload guard sheds."""
        for queue in self.queues.values():
            for w in queue:
                if self.guard.sheds(w.tier) and queue.remove(w):
                    name = self.settings.tiers[w.tier].name
                    self._wake(w, self._refuse(refusals.shed_while_waiting(name)))

    # -- the read model ----------------------------------------------------------------

    def snapshot(self, now: float) -> AdmissionState:
        tiers = tuple(t.name for t in self.settings.tiers)
        guard = self.guard
        queues = []
        for pool, q in self.queues.items():
            waiting = [0] * len(tiers)
            for w in q.waiters:
                waiting[w.tier] += 1
            queues.append(
                QueueState(
                    pool,
                    tuple(waiting),
                    sum(1 for w in q.waiters if w.reason in HOLDS),
                    tuple(self.admitted[pool]),
                    q.finished_per_s(now),
                    q.codel[0].standing_at(now),
                    q.codel[1].standing_at(now),
                )
            )
        return AdmissionState(
            self.enabled,
            tiers,
            tuple(tiers[i] for i in guard.shed_tiers()),
            guard.lag_s,
            guard.rss_bytes,
            dict(self.refused),
            tuple(queues),
        )
