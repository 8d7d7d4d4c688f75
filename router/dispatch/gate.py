"""The asyncio edge of admission (``router/core/admission.py``): per-pool wait queues of
futures, the wake-ups that move them, and the router's own overload guard.

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
import logging
import os
from collections.abc import Callable
from time import monotonic
from typing import Final

from router.config import AdmissionConfig, ClassAdmissionConfig
from router.core.admission import (
    HOLDS,
    AdmissionSettings,
    ClassLimits,
    DrainMeter,
    OverloadGuard,
    Tier,
    Verdict,
    Waiter,
    WaitQueue,
    verdict,
)
from router.core.breaker import BreakerState
from router.core.planner import PoolView
from router.errors import DeadlineExceeded, Overloaded, QueueFull, RouterError
from router.fleet.ledger import Ledger
from router.fleet.topology import Fleet
from router.model import Backend, RoutePlan

log = logging.getLogger("ctxroute.gate")
# Enum members read on every request, as module globals: on Python 3.11 ``Enum.MEMBER``
# goes through EnumType.__getattr__, about 8x the cost of a global read
_ADMIT: Final = Verdict.ADMIT
_NO_BACKEND: Final = Verdict.NO_BACKEND

_TICK_S: Final = 0.01
_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
Replan = Callable[[], RoutePlan]


def admission_settings(config: AdmissionConfig, long_prefill_tokens: int, keep_clean: int,
                       kv_fill: float) -> AdmissionSettings:  # fmt: skip
    names = [t.name for t in config.tiers]

    def limits(c: ClassAdmissionConfig) -> ClassLimits:
        return ClassLimits(c.deadline_s, c.max_wait_s, c.codel_target_s, c.codel_interval_s)

    return AdmissionSettings(
        tiers=tuple(Tier(t.name, t.reserve) for t in config.tiers),
        default_tier=names.index(config.default_tier),
        aliases={k.strip().lower(): names.index(v) for k, v in config.aliases.items()},
        max_queue=config.max_queue,
        short=limits(config.short),
        long=limits(config.long),
        hold_long=config.hold_long,
        keep_clean=keep_clean,
        long_prefill_tokens=long_prefill_tokens,
        kv_fill=kv_fill,
    )


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


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
    def __init__(self, fleet: Fleet, ledger: Ledger, settings: AdmissionSettings,
                 config: AdmissionConfig) -> None:  # fmt: skip
        self.fleet = fleet
        self.ledger = ledger
        self.settings = settings
        self.enabled = config.enabled
        self.queues = {p.name: WaitQueue(settings.max_queue, settings.short, settings.long)
                       for p in fleet.pools}  # fmt: skip
        self.waking: dict[str, Waiter | None] = dict.fromkeys(self.queues)
        self.admitted = {p.name: [0] * len(settings.tiers) for p in fleet.pools}
        # a pool's name -> every pool of its model (what a verdict looks over)
        self.pools_of: dict[str, tuple[PoolView, ...]] = {
            p.name: fleet.by_model[p.model] for p in fleet.pools
        }
        self.refused: dict[str, int] = {}  # x-ctxroute-reject reason -> count
        self.waiting = 0
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
        # bound once: admit_now runs for every request
        self._view_of = ledger.view_of
        self._is_transient = self._transient
        self._short_deadline_s = settings.short.deadline_s
        self._long_deadline_s = settings.long.deadline_s

    # -- the request path ------------------------------------------------------------

    def admit_now(self, tier: int, long: bool, timeout_s: float | None,
                  plan: RoutePlan) -> Ticket | None:  # fmt: skip
        """The common case, without a coroutine: a ticket when the request may go now,
        None when it must wait (then ``wait``); raises when the overload guard sheds it."""
        if self.guard.level and self.guard.sheds(tier):
            raise self._refuse(Overloaded(
                f"the router is overloaded (event-loop lag {self.guard.lag_s * 1000:.0f} ms, "
                f"RSS {self.guard.rss_bytes >> 20} MiB): requests of priority "
                f"'{self.settings.tiers[tier].name}' are shed first", retry_after=2.0))  # fmt: skip
        pool = plan.preferred
        if self.enabled:
            queue = self.queues[pool]
            if queue.waiters and queue.blocks(tier, long):
                return None
            v = verdict(tier, long, plan, self.pools_of[pool], self._view_of, self.settings,
                        self._is_transient,
                        queue.start_limit_ms(tier, long, self._allowed_s(long, timeout_s),
                                             monotonic()))  # fmt: skip
            if v is not _ADMIT and v is not _NO_BACKEND:
                return None
        admitted = self.admitted[pool]
        admitted[tier] += 1
        return Ticket(admitted, self.queues[pool].drains[long], tier)

    async def wait(self, tier: int, long: bool, timeout_s: float | None, plan: RoutePlan,
                   replan: Replan) -> tuple[Ticket, RoutePlan]:  # fmt: skip
        """Queue a request ``admit_now`` did not let go: returns its ticket and a fresh plan
        once it may go, or raises its refusal. ``replan`` plans it again."""
        pool = plan.preferred
        queue = self.queues[pool]
        view_of = self.ledger.view_of
        pools = self.pools_of[pool]
        allowed_s = self._allowed_s(long, timeout_s)
        # behind others: a long one waits in the long lane (held, and holding no short one
        # back), a short one for room
        v = Verdict.HOLD_CLEAN if long else Verdict.FULL
        loop = asyncio.get_running_loop()
        now = monotonic()
        deadline = now + allowed_s
        name = self.settings.tiers[tier].name
        # refused at once rather than after waiting in vain: the queue ahead of it would
        # not go within its deadline, or within what a standing queue allows
        allowed = queue.refuse_on_arrival(tier, long, allowed_s, now)
        if allowed is not None:
            kind = "long" if long else "short"
            raise self._refuse(DeadlineExceeded(
                f"{queue.ahead_of(tier, long)} {kind} requests of priority '{name}' or higher "
                f"wait for pool '{pool}', which finishes {kind} ones at "
                f"{queue.drains[long].rate(now):.1f} per second: this one could not start "
                f"within {allowed:.1f}s" + (" (its deadline)" if allowed == allowed_s else
                                            " (the queue's allowed wait)"),
                retry_after=queue.retry_after(tier, long, now)))  # fmt: skip
        self.seq += 1
        waiter = Waiter(tier, long, now, deadline, self.seq, v, None, replan)
        refused = queue.offer(waiter)
        if refused is waiter:
            raise self._refuse(QueueFull(
                f"the queue of pool '{pool}' is full ({queue.max_depth} requests of priority "
                f"'{name}' or higher wait)",
                retry_after=queue.retry_after(tier, long, now)))  # fmt: skip
        if refused is not None:
            wait = queue.retry_after(refused.tier, refused.long, now)
            self._wake(refused, self._refuse(QueueFull(
                f"the queue of pool '{pool}' is full and a request of higher priority took "
                f"this one's place", retry_after=wait)))  # fmt: skip
            self.waiting -= 1
        self.waiting += 1
        self._tick_soon()
        try:
            while True:
                future: asyncio.Future[None] = loop.create_future()
                waiter.handle = future
                await future  # raises the refusal, when it is refused
                if self.waking[pool] is waiter:
                    self.waking[pool] = None
                plan = replan()
                now = monotonic()
                left_ms = queue.start_limit_ms(tier, long, deadline - now, now)
                v = verdict(tier, long, plan, pools, view_of, self.settings, self._transient,
                            left_ms, waiter.yielded_ms(now))  # fmt: skip
                if v is _ADMIT or v is _NO_BACKEND:
                    if queue.dispatched(waiter, now):
                        self.waiting -= 1  # (an expiry in the same step took it out already)
                    loop.call_soon(self.changed)  # the next one, once this one is dispatched
                    return self._admit(pool, tier, long), plan
                waiter.saw(v, now)
        except BaseException:
            if queue.remove(waiter):
                self.waiting -= 1  # the client left (cancelled) while it waited
            if self.waking[pool] is waiter:
                self.waking[pool] = None
                loop.call_soon(self.changed)
            raise

    def _allowed_s(self, long: bool, timeout_s: float | None) -> float:
        """How long the request may take to start: its X-Request-Timeout, else its class's."""
        if timeout_s is not None:
            return timeout_s
        return self._long_deadline_s if long else self._short_deadline_s

    def _admit(self, pool: str, tier: int, long: bool) -> Ticket:
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
        return (self.ledger.up[i] and not store.drained(i)
                and store.breaker(i).state is BreakerState.CLOSED)  # fmt: skip

    # -- moving the queues -----------------------------------------------------------

    def changed(self) -> None:
        """Something that may let a waiter go happened; cheap when nobody waits."""
        if not self.waiting:
            return
        now = monotonic()
        for pool, queue in self.queues.items():
            if not queue.waiters:
                continue
            for w in queue.expired(now):
                self.waiting -= 1
                waited = now - w.arrived
                self._wake(w, self._refuse(DeadlineExceeded(
                    f"waited {waited:.1f}s at the router for pool '{pool}' without a backend "
                    f"able to start it within its deadline",
                    retry_after=queue.retry_after(w.tier, w.long, now))))  # fmt: skip
            if self.waking[pool] is not None:
                continue
            long_held = False
            pools = self.pools_of[pool]
            for w in queue.service_order(now):
                if w.long and long_held:
                    continue
                handle = w.handle
                if handle is None or handle.done():
                    continue
                left_ms = queue.start_limit_ms(w.tier, w.long, w.deadline - now, now)
                v = verdict(w.tier, w.long, w.replan(), pools, self.ledger.view_of,
                            self.settings, self._transient, left_ms,
                            w.yielded_ms(now))  # fmt: skip
                w.saw(v, now)
                if v is _ADMIT or v is _NO_BACKEND:
                    self.waking[pool] = w
                    handle.set_result(None)
                    break
                if v in HOLDS:
                    long_held = True
                    continue
                if v is Verdict.LATE:
                    continue  # one with more time left may still start in time
                break  # no room: the ones behind it are of its tier or lower

    def _wake(self, w: Waiter, exc: RouterError) -> None:
        handle = w.handle
        if handle is not None and not handle.done():
            handle.set_exception(exc)

    def _tick_soon(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_TICK_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.changed()
        if self.waiting:
            self._tick_soon()

    # -- the router's own health -----------------------------------------------------

    async def watch_overload(self) -> None:
        """Measure event-loop lag and RSS every ``check_interval_s``; shed waiters of the
        tiers the guard sheds."""
        loop = asyncio.get_running_loop()
        interval = self.check_interval_s
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - start - interval)
            before = self.guard.level
            self.guard.observe(lag, rss_bytes())
            level = self.guard.level
            if level != before:
                log.warning("overload guard: shedding the %d lowest priority tier(s) "
                            "(event-loop lag %.0f ms, RSS %d MiB)", level, lag * 1000,
                            self.guard.rss_bytes >> 20)  # fmt: skip
            if level:
                self._shed_queued(monotonic())

    def _shed_queued(self, now: float) -> None:
        for queue in self.queues.values():
            for w in queue:
                if self.guard.sheds(w.tier) and queue.remove(w):
                    self.waiting -= 1
                    self._wake(w, self._refuse(Overloaded(
                        "the router is overloaded: requests of priority "
                        f"'{self.settings.tiers[w.tier].name}' are shed first",
                        retry_after=2.0)))  # fmt: skip

    def status(self) -> dict[str, object]:
        names = [t.name for t in self.settings.tiers]
        now = monotonic()
        return {
            "enabled": self.enabled,
            "overload": {
                "shed_tiers": names[len(names) - self.guard.level :] if self.guard.level else [],
                "loop_lag_ms": round(self.guard.lag_s * 1000, 1),
                "rss_mib": self.guard.rss_bytes >> 20,
            },
            "refused": dict(self.refused),
            "pools": {
                pool: {
                    "waiting": {
                        n: sum(1 for w in q.waiters if w.tier == i) for i, n in enumerate(names)
                    },
                    "held_long": sum(1 for w in q.waiters if w.reason in HOLDS),
                    "admitted_in_flight": dict(zip(names, self.admitted[pool], strict=True)),
                    "finished_per_s": round(q.finished_per_s(now), 2),  # the drain rate
                    "standing_queue": {
                        "short": q.codel[0].settled(now),
                        "long": q.codel[1].settled(now),
                    },
                }
                for pool, q in self.queues.items()
            },
        }
