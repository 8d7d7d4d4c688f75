"""The admission policy (router/core/admission.py), without I/O: queues, CoDel, drain rate,
Retry-After, holding, reserves and the overload guard, against plain reference rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.admission import (
    HOLDS,
    AdmissionSettings,
    ClassLimits,
    Codel,
    DrainMeter,
    OverloadGuard,
    Tier,
    Verdict,
    Waiter,
    WaitQueue,
    retry_after,
    verdict,
)
from router.core.hashring import PoolRing
from router.core.planner import PoolView
from router.model import Backend, BackendView, Load, RoutePlan

SHORT = ClassLimits(deadline_s=30.0, max_wait_s=10.0, codel_target_s=0.25, codel_interval_s=1.0)
LONG = ClassLimits(deadline_s=120.0, max_wait_s=60.0, codel_target_s=5.0, codel_interval_s=20.0)

# one step of a queue's life: (op, tier, long, dt, deadline after arrival)
ops = st.lists(
    st.tuples(st.sampled_from(["offer", "offer", "offer", "dispatch", "remove", "expire"]),
              st.integers(0, 2), st.booleans(), st.floats(0, 3), st.floats(0.1, 40)),
    max_size=80,
)  # fmt: skip


@given(st.integers(0, 6), ops)  # 0: max_queue 0, no queue at all
@settings(max_examples=300, deadline=None)
def test_a_queue_stays_bounded_ordered_and_sheds_only_the_lowest_tier(depth: int, steps) -> None:  # type: ignore[no-untyped-def]
    q = WaitQueue(depth, SHORT, LONG)
    now = 0.0
    seq = 0
    inside: set[int] = set()
    for op, tier, long, dt, life in steps:
        now += dt
        if op == "offer":
            seq += 1
            w = Waiter(tier, long, now, now + life, seq)
            before = list(q.waiters)
            refused = q.offer(w)
            if refused is None:
                assert len(before) < depth
                inside.add(w.seq)
            elif refused is w:
                # full, and nobody of a lower tier (a larger number) was there to make room
                assert len(before) == depth and all(b.tier <= tier for b in before)
            else:
                # a higher-tier newcomer took the place of the lowest tier's newest waiter
                assert len(before) == depth and refused.tier > tier
                assert refused.order() == max(b.order() for b in before)
                inside.discard(refused.seq)
                inside.add(w.seq)
        elif op == "dispatch" and q.waiters:
            w = q.waiters[0]
            q.dispatched(w, now)
            inside.discard(w.seq)
        elif op == "remove" and q.waiters:
            w = q.waiters[-1]
            assert q.remove(w)
            assert not q.remove(w)  # a second removal is a no-op
            inside.discard(w.seq)
        elif op == "expire":
            lowest = max((w.tier for w in q.waiters), default=0)
            dropping = [c.dropping for c in q.codel]  # (emptying the queue resets them)
            gone = q.expired(now)
            for w in gone:
                limits = LONG if w.long else SHORT
                allowed = limits.max_wait_s
                if w.tier == lowest and dropping[w.long]:
                    allowed = min(allowed, limits.codel_target_s)  # only the lowest tier
                assert now >= w.deadline or now - w.arrived >= allowed
                inside.discard(w.seq)
            for w in q.waiters:
                assert now < w.deadline
        assert len(q) <= depth
        assert [w.order() for w in q.waiters] == sorted(w.order() for w in q.waiters)
        assert {w.seq for w in q.waiters} == inside
        for t in range(3):
            # a short newcomer queues only behind short waiters of its tier or higher (never
            # behind long work held at the door); a long one behind anyone of those tiers
            assert q.blocks(t, False) == any(not w.long and w.tier <= t for w in q.waiters)
            assert q.blocks(t, True) == any(w.tier <= t for w in q.waiters)


@given(st.lists(st.tuples(st.floats(0, 2), st.floats(0, 1)), max_size=60))
def test_codel_drops_only_after_a_whole_interval_over_target(waits) -> None:  # type: ignore[no-untyped-def]
    c = Codel(target=0.25, interval=1.0)
    now = 0.0
    above_since: float | None = None
    dropping = False
    for waited, dt in waits:
        now += dt
        c.dispatched(waited, now)
        # a standing queue starts after a whole interval over the target and ends only
        # when a wait is at most half the target (hysteresis: waits cut to the target
        # would otherwise end it at once)
        if waited <= (0.125 if dropping else 0.25):
            above_since = None
            dropping = False
        elif waited <= 0.25:
            above_since = None
        elif above_since is None:
            above_since = now
        elif now - above_since >= 1.0:
            dropping = True
        assert c.dropping == dropping
        assert c.allowed_wait(10.0) == (0.25 if c.dropping else 10.0)
    c.emptied()
    assert not c.dropping


@given(st.lists(st.floats(0, 0.7), max_size=200))
def test_the_drain_meter_counts_the_last_window(gaps: list[float]) -> None:
    meter = DrainMeter(window_s=10)
    now = 1000.0
    stamps = []
    for gap in gaps:
        now += gap
        meter.record(now)
        stamps.append(now)
    second = int(now)
    span = min(10, second - int(stamps[0]) + 1) if stamps else 1
    expected = sum(1 for t in stamps if second - 10 < int(t) <= second) / span
    assert meter.rate(now) == expected


@given(st.integers(0, 10_000), st.floats(0, 1000))
def test_retry_after_is_bounded_and_grows_with_the_queue(ahead: int, rate: float) -> None:
    wait = retry_after(ahead, rate)
    assert 1.0 <= wait <= 60.0
    assert retry_after(ahead + 1, rate) >= wait
    if rate == 0:
        assert wait == 60.0


def test_tiers_are_named_aliased_or_defaulted() -> None:
    s = AdmissionSettings(aliases={"0": 0, "batch": 2})
    assert [s.tier_of(v) for v in ("high", " Normal ", "LOW", "0", "batch")] == [0, 1, 2, 0, 2]
    assert s.tier_of(None) == s.tier_of("urgent!") == s.tier_of("7") == 1


# -- verdicts over a small fleet ------------------------------------------------------


def _fleet(n: int, cap: int = 8, kv: int | None = None) -> tuple[PoolView, ...]:
    backends = tuple(Backend(i, f"http://b{i}:1", "p", "m", f"b{i}", 1, cap, kv_tokens=kv)
                     for i in range(n))  # fmt: skip
    ring = PoolRing(((b.url, 1) for b in backends), 16)
    return (PoolView("p", "m", 100_000, 64, ring, backends, {b.url: b for b in backends}),)


# (in flight, long prefills pending, budget in flight, long requests decoding)
loads = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2), st.integers(0, 90_000),
                           st.integers(0, 3)), min_size=1, max_size=5)  # fmt: skip


@given(loads, st.integers(0, 2), st.booleans(), st.integers(0, 2), st.integers(1, 60_000))
@settings(max_examples=300)
def test_verdicts_follow_the_rules(rows, tier: int, long: bool, keep: int, budget: int) -> None:  # type: ignore[no-untyped-def]
    pools = _fleet(len(rows), kv=100_000)
    backends = pools[0].backends
    views = {b.index: BackendView(b, Load(r[0], r[1] * 5000, r[1], r[2], r[1] + r[3]), True,
                                  20_000.0, True, b.kv_tokens)
             for b, r in zip(backends, rows, strict=True)}  # fmt: skip
    room = [b for b in backends if views[b.index].load.in_flight < b.max_in_flight]
    # the planner's order is not under test here: the least loaded first
    room.sort(key=lambda b: views[b.index].load.pending_prefill)
    plan = RoutePlan("p", tuple(room), tuple(0.0 for _ in room), budget, (), (0,))
    s = AdmissionSettings(tiers=(Tier("high"), Tier("normal", 0.25), Tier("low")), keep_clean=keep)
    v = verdict(tier, long, plan, pools, lambda b: views[b.index], s, lambda b: True)
    if not room:
        assert v is Verdict.FULL  # they pass by themselves: wait
        return
    capacity = sum(b.max_in_flight for b in backends)
    in_flight = sum(v_.load.in_flight for v_ in views.values())
    share = 0.75 if tier == 2 else 1.0  # normal keeps 0.25 for itself and high
    if in_flight + 1 > share * capacity:
        assert v is Verdict.RESERVED
        return
    if not long:
        # a short request is never held for long work; it waits only for a backend free of
        # long prefill that is full for now, when the best one has a long prefill pending
        clean_full = any(not v_.load.long_pending and v_.load.in_flight >= 8
                         for v_ in views.values())  # fmt: skip
        behind = views[room[0].index].load.long_pending
        assert v is (Verdict.FULL if behind and clean_full else Verdict.ADMIT)
        return
    pending = sum(1 for v_ in views.values() if v_.load.long_pending)
    if pending == 0:
        assert v is Verdict.ADMIT  # nothing that would end: holding would never end
        return
    first = views[room[0].index]
    clean = sum(1 for v_ in views.values()
                if not v_.load.long_pending and v_.load.in_flight < 8)  # fmt: skip
    if first.load.budget_in_flight + budget > 100_000 * s.kv_fill:
        assert v is Verdict.HOLD_KV
    elif first.load.long_pending or clean - 1 < keep:
        assert v is Verdict.HOLD_CLEAN
    elif room[0].index in _lightest(views, keep) and any(
        b is not room[0]
        and views[b.index].load.long_pending
        and b in room
        and views[b.index].load.budget_in_flight + budget <= 100_000 * s.kv_fill
        for b in backends
    ):
        # the best is kept light for short work while a busy one with room will be free
        assert v is Verdict.HOLD_CLEAN
    else:
        assert v is Verdict.ADMIT
    assert (v in HOLDS) <= long


def _lightest(views: dict[int, BackendView], keep: int) -> set[int]:
    """The ``keep`` backends carrying the least long work, then the least work."""
    order = sorted(views, key=lambda i: (views[i].load.long_in_flight,
                                         views[i].load.budget_in_flight, i))  # fmt: skip
    return set(order[:keep])


def test_nothing_usable_and_nothing_passing_is_no_backend() -> None:
    pools = _fleet(2)
    plan = RoutePlan("p", (), (), 100, (), (0,))
    s = AdmissionSettings()

    def view(b: Backend) -> BackendView:
        return BackendView(b, Load(), True, 1.0, False)

    assert verdict(1, False, plan, pools, view, s, lambda b: False) is Verdict.NO_BACKEND
    assert verdict(1, False, plan, pools, view, s, lambda b: b.index == 1) is Verdict.FULL


@given(st.integers(1, 5), st.integers(1, 3), st.lists(st.booleans(), max_size=40))
def test_the_overload_guard_sheds_lowest_first_and_never_the_highest(  # type: ignore[no-untyped-def]
    tiers: int, sustain: int, overs
) -> None:
    g = OverloadGuard(tiers, max_lag_s=0.1, max_rss_bytes=None, sustain=sustain)
    level = 0
    run = 0
    for over in overs:
        g.observe(0.5 if over else 0.01, 0)
        run = run + 1 if over else 0
        if over and run == sustain:
            run = 0
            level = min(level + 1, tiers - 1)
        elif not over:
            level = max(level - 1, 0)
        assert g.level == level
        shed = [g.sheds(t) for t in range(tiers)]
        assert not shed[0]
        assert shed == sorted(shed)  # a tier is shed only if every lower one is
        assert sum(shed) == level


def test_a_request_the_best_backend_would_start_after_its_deadline_waits() -> None:
    pools = _fleet(2)
    a, b = pools[0].backends
    plan = RoutePlan("p", (a, b), (900.0, 1200.0), 100, (), (0,))
    s = AdmissionSettings()

    def view(x: Backend) -> BackendView:
        return BackendView(x, Load(1, 18_000, 1, 20_000), True, 20_000.0)

    assert verdict(1, False, plan, pools, view, s, lambda x: True, 500.0) is Verdict.LATE
    assert verdict(1, False, plan, pools, view, s, lambda x: True, 1000.0) is Verdict.ADMIT
    assert verdict(1, False, plan, pools, view, s, lambda x: True) is Verdict.ADMIT


def test_a_standing_queue_refuses_early_and_sends_only_where_it_starts_soon() -> None:
    short = ClassLimits(30.0, 10.0, 0.05, 0.5)
    long = ClassLimits(120.0, 60.0, 5.0, 5.0)
    q = WaitQueue(16, short, long)
    # no standing queue: a request may start as late as its deadline, wait its max_wait
    assert q.start_limit_ms(False, 0.5) == 500.0
    assert q.allowed_wait(1, True) == 60.0
    # every long request dispatched for 5 s waited over 5 s: a standing long queue
    for t in range(7):
        q.codel[True].dispatched(6.0, float(t))
    assert q.codel[True].dropping and not q.codel[False].dropping
    assert q.start_limit_ms(True, 15.0) == 5000.0
    assert q.start_limit_ms(True, 2.0) == 2000.0  # its deadline, when that is sooner
    assert q.start_limit_ms(False, 0.5) == 500.0  # the short class is not affected
    assert q.allowed_wait(1, True) == 5.0
    # the pace of the class sets the expected wait: 4 long waiters, 2 finished per second
    for i in range(4):
        q.offer(Waiter(1, True, 10.0, 100.0, i))
    q.offer(Waiter(1, False, 10.0, 100.0, 9))
    for t in (10.1, 10.2, 10.6, 10.7):
        q.drains[True].record(t)
    assert q.ahead_of(1, True) == 4 and q.ahead_of(1, False) == 1
    assert q.expected_wait(1, True, 10.9) == pytest.approx(4 / 4.0)  # 4 in its first second
    assert q.expected_wait(1, False, 10.9) is None  # no short one finished: no estimate
    # a higher tier is not cut back while a lower one waits
    q.offer(Waiter(2, True, 10.0, 100.0, 10))
    assert q.allowed_wait(1, True) == 60.0
