"""One pool's wait queue (router/core/admission/queue.py): bounded, ordered by tier then
arrival, shedding only the lowest tier; CoDel's cut, the start limit and adaptive LIFO."""

from __future__ import annotations

import pytest
from ctxroute.router.core.admission.queue import Waiter, WaitQueue
from ctxroute.router.core.admission.settings import ClassLimits
from hypothesis import given, settings
from hypothesis import strategies as st

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
                if w.tier == lowest and codel.standing and not codel.cut_below(w.tier, now):
                    assert now - w.arrived < limits.codel_target_s
        assert len(q) <= depth
        assert [w.order() for w in q.waiters] == sorted(w.order() for w in q.waiters)
        assert {w.seq for w in q.waiters} == inside
        for t in range(3):
            # a short newcomer queues only behind short waiters of its tier or higher (never
            # behind long work held at the door); a long one behind anyone of those tiers
            assert q.must_wait_behind(t, False) == any(
                not w.long and w.tier <= t for w in q.waiters
            )
            assert q.must_wait_behind(t, True) == any(w.tier <= t for w in q.waiters)


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
    assert q.codel[True].standing and not q.codel[False].standing
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
    assert q.codel[True].standing_at(9.0)  # (4 s after it started, nothing cut since)
    assert q.allowed_wait(1, True, 9.0) == 60.0
    assert q.allowed_wait(2, True, 9.0) == 5.0  # the lowest tier is
    # nothing cut for a whole interval: the standing queue is over
    assert not q.codel[True].standing_at(10.0) and q.allowed_wait(2, True, 10.0) == 60.0


def test_a_higher_tier_is_not_cut_back_for_a_lower_tier_just_cut() -> None:
    short = ClassLimits(30.0, 10.0, 0.05, 0.1)
    q = WaitQueue(16, short, LONG)
    q.codel[False].head_waited(0.2, 1.0)  # a standing short queue
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
