"""The admission policy (router/core/admission.py), without I/O: queues, CoDel, drain rate,
Retry-After, holding, reserves and the overload guard, against plain reference rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.admission import (
    HOLDS,
    YIELD_TO_SHORT_MS,
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
            gone = q.expired(now)
            for w in gone:
                limits = LONG if w.long else SHORT
                allowed = limits.max_wait_s
                if w.tier == lowest:  # only the lowest tier is cut (when a queue stands)
                    allowed = min(allowed, limits.codel_target_s)
                assert now >= w.deadline or now - w.arrived >= allowed
                inside.discard(w.seq)
            for w in q.waiters:
                limits = LONG if w.long else SHORT
                assert now < w.deadline and now - w.arrived < limits.max_wait_s
                codel = q.codel[w.long]
                if w.tier == lowest and codel.dropping and not codel.spares(w.tier, now):
                    assert now - w.arrived < limits.codel_target_s
        assert len(q) <= depth
        assert [w.order() for w in q.waiters] == sorted(w.order() for w in q.waiters)
        assert {w.seq for w in q.waiters} == inside
        for t in range(3):
            # a short newcomer queues only behind short waiters of its tier or higher (never
            # behind long work held at the door); a long one behind anyone of those tiers
            assert q.blocks(t, False) == any(not w.long and w.tier <= t for w in q.waiters)
            assert q.blocks(t, True) == any(w.tier <= t for w in q.waiters)


@given(st.lists(st.tuples(st.floats(0, 2), st.floats(0, 1)), max_size=60))
def test_codel_starts_a_standing_queue_only_after_a_whole_interval_over_target(waits) -> None:  # type: ignore[no-untyped-def]
    c = Codel(target=0.25, interval=1.0)
    now = 0.0
    over_since: float | None = None  # first of the dispatches over target in a row
    for waited, dt in waits:
        now += dt
        c.dispatched(waited, now)
        if waited <= 0.25:
            over_since = None
        elif over_since is None:
            over_since = now
        # it starts once every dispatch for a whole interval waited over the target
        assert c.dropping == (over_since is not None and now - over_since >= 1.0)
        if c.dropping:
            break
    assert c.allowed_wait(10.0, now) == (0.25 if c.dropping else 10.0)


@given(st.lists(st.floats(0.001, 0.3), min_size=1, max_size=60), st.floats(0, 2))
def test_a_standing_queue_lasts_until_an_interval_passes_without_a_cut(gaps, after) -> None:  # type: ignore[no-untyped-def]
    c = Codel(target=0.05, interval=0.1)
    c.head(0.2, 10.0)  # the head waited past target + interval: a standing queue
    assert c.dropping and c.settled(10.0)
    now = last_cut = 10.0
    for gap in gaps:
        now += gap
        standing = now - last_cut < 0.1
        assert c.settled(now) == standing
        if not standing:
            break
        c.dispatched(0.001, now)  # short waits while it stands say nothing: it lasts
        c.cut(now, 1)
        last_cut = now
    else:
        assert c.settled(now + after) == ((now + after) - last_cut < 0.1)
    # once over, a cut does not bring it back (only waits over the target do)
    if not c.settled(now + max(after, 0.1)):
        c.cut(now + 1.0, 1)
        assert not c.dropping


def test_a_standing_queue_is_seen_at_its_head_when_nothing_leaves() -> None:
    c = Codel(target=0.05, interval=0.1)
    c.head(0.05, 1.0)  # at the target: fine
    c.head(0.14, 1.09)  # over the target for 90 ms: not yet a whole interval
    assert not c.dropping
    c.head(0.16, 1.11)  # over it for 110 ms, and nobody left the queue: it stands
    assert c.dropping and c.allowed_wait(0.5, 1.11) == 0.05
    # a dispatch with a short wait ends the run over the target before it stands
    d = Codel(target=0.05, interval=0.1)
    d.head(0.1, 1.0)
    d.dispatched(0.01, 1.02)
    d.head(0.08, 1.1)  # a new head, over the target for 30 ms only
    assert not d.dropping


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


# (in flight, long prefills pending, budget in flight, long requests decoding, short
# prefills pending)
loads = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2), st.integers(0, 90_000),
                           st.integers(0, 3), st.integers(0, 2)),
                 min_size=1, max_size=5)  # fmt: skip


@given(
    loads,
    st.integers(0, 2),
    st.booleans(),
    st.integers(0, 2),
    st.integers(1, 60_000),
    st.sampled_from([0.0, 100.0, YIELD_TO_SHORT_MS]),
)
@settings(max_examples=400)
def test_verdicts_follow_the_rules(rows, tier: int, long: bool, keep: int, budget: int,  # type: ignore[no-untyped-def]
                                   yielded: float) -> None:  # fmt: skip
    pools = _fleet(len(rows), kv=100_000)
    backends = pools[0].backends
    views = {b.index: BackendView(b, Load(r[0], r[1] * 5000 + r[4] * 600, r[1], r[2],
                                          r[1] + r[3]),
                                  True, 20_000.0, True, b.kv_tokens)
             for b, r in zip(backends, rows, strict=True)}  # fmt: skip
    room = [b for b in backends if views[b.index].load.in_flight < b.max_in_flight]
    # the planner's order is not under test here: the least loaded first
    room.sort(key=lambda b: views[b.index].load.pending_prefill)
    plan = RoutePlan("p", tuple(room), tuple(0.0 for _ in room), budget, (), (0,))
    s = AdmissionSettings(tiers=(Tier("high"), Tier("normal", 0.25), Tier("low")), keep_clean=keep)
    v = verdict(tier, long, plan, pools, lambda b: views[b.index], s, lambda b: True,
                yielded_ms=yielded)  # fmt: skip
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
    first = views[room[0].index]
    if first.load.pending_prefill and not first.load.long_pending and yielded < 250.0:
        # a short prefill is pending there: its first step would carry this one's first
        # chunk. It yields for a bounded time only
        assert v is Verdict.HOLD_SHORT
        return
    pending = sum(1 for v_ in views.values() if v_.load.long_pending)
    if pending == 0:
        assert v is Verdict.ADMIT  # nothing that would end: holding would never end
        return
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
    assert q.start_limit_ms(1, False, 0.5, 0.0) == 500.0
    assert q.allowed_wait(1, True, 0.0) == 60.0
    # every long request dispatched for 5 s waited over 5 s: a standing long queue
    for t in range(7):
        q.codel[True].dispatched(6.0, float(t))
    assert q.codel[True].dropping and not q.codel[False].dropping
    assert q.start_limit_ms(1, True, 15.0, 6.0) == 5000.0
    assert q.start_limit_ms(1, True, 2.0, 6.0) == 2000.0  # its deadline, when that is sooner
    assert q.start_limit_ms(1, False, 0.5, 6.0) == 500.0  # the short class is not affected
    assert q.allowed_wait(1, True, 6.0) == 5.0
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
    assert q.codel[True].settled(9.0)  # (4 s after it started, nothing cut since)
    assert q.allowed_wait(1, True, 9.0) == 60.0
    assert q.allowed_wait(2, True, 9.0) == 5.0  # the lowest tier is
    # nothing cut for a whole interval: the standing queue is over
    assert not q.codel[True].settled(10.0) and q.allowed_wait(2, True, 10.0) == 60.0


def test_a_higher_tier_is_not_cut_back_for_a_lower_tier_just_cut() -> None:
    short = ClassLimits(30.0, 10.0, 0.05, 0.1)
    q = WaitQueue(16, short, LONG)
    q.codel[False].head(0.2, 1.0)  # a standing short queue
    assert q.allowed_wait(0, False, 1.0) == 0.05  # nobody lower waits or was cut: cut back
    q.codel[False].cut(1.01, 2)  # the low tier was cut back; none of it waits now
    # the high tier is spared while the low one was cut within the interval
    assert q.allowed_wait(0, False, 1.05) == 10.0
    assert q.start_limit_ms(0, False, 0.5, 1.05) == 500.0
    assert q.allowed_wait(2, False, 1.05) == 0.05
    assert q.start_limit_ms(2, False, 0.5, 1.05) == 50.0
    q.codel[False].cut(1.08, 0)  # the high tier's own cut keeps it standing ...
    assert q.allowed_wait(0, False, 1.15) == 0.05  # ... and the low one's is over


def test_once_a_short_queue_forms_the_newest_short_requests_go_first() -> None:
    q = WaitQueue(16, ClassLimits(30.0, 10.0, 0.025, 0.05), LONG)
    for seq, (tier, long) in enumerate([(1, False), (1, True), (1, False), (0, False),
                                        (2, False), (1, False)]):  # fmt: skip
        q.offer(Waiter(tier, long, 10.0 + seq * 0.001, 100.0, seq))
    fifo = [w.seq for w in q.waiters]
    assert fifo == [3, 0, 1, 2, 5, 4]  # tier, then arrival
    # nobody waited over the target: arrival order
    assert [w.seq for w in q.service_order(10.02)] == fifo
    # the oldest short one waited over it: within a tier the newest short one first, then
    # the long ones in arrival order; a higher tier still before a lower one
    assert [w.seq for w in q.service_order(10.03)] == [3, 5, 2, 0, 1, 4]
