"""Tier shares (stride by weight) and tenants' fair shares (the Virtual Token Counter):
a lower tier and a light tenant are slowed, never starved."""

from __future__ import annotations

from collections import Counter

from ctxroute.router.core.admission.fairshare import OUTPUT_WEIGHT, VirtualCounters
from ctxroute.router.core.admission.queue import Waiter, WaitQueue
from ctxroute.router.core.admission.settings import ClassLimits
from ctxroute.router.core.admission.shares import TierShares

LIMITS = ClassLimits(30.0, 10.0, 0.025, 0.05)
LONG = ClassLimits(120.0, 60.0, 5.0, 5.0)


def serve(queue: WaitQueue, shares: TierShares, n: int, refill: bool = True) -> Counter[int]:
    """Dispatch ``n`` times the head of the service order, putting back one of the same
    tier each time (every tier always has work)."""
    served: Counter[int] = Counter()
    seq = 1000
    for _ in range(n):
        head = queue.service_order(0.0)[0]
        queue.remove(head)
        shares.served(head.tier)
        served[head.tier] += 1
        if refill:
            seq += 1
            queue.offer(Waiter(head.tier, False, 0.0, 100.0, seq, tenant=head.tenant))
    return served


def test_tiers_always_waiting_are_served_by_their_weights() -> None:
    shares = TierShares([8.0, 4.0, 1.0])
    queue = WaitQueue(64, LIMITS, LONG, shares)
    for seq, tier in enumerate([0, 1, 2] * 5):
        queue.offer(Waiter(tier, False, 0.0, 100.0, seq))
    served = serve(queue, shares, 1300)
    assert served[0] == 800 and served[1] == 400 and served[2] == 100


def test_strict_precedence_starves_the_lowest_tier_shares_do_not() -> None:
    for shares, low_gets_some in ((None, False), (TierShares([8.0, 4.0, 1.0]), True)):
        queue = WaitQueue(64, LIMITS, LONG, shares)
        for seq, tier in enumerate([0, 2]):
            queue.offer(Waiter(tier, False, 0.0, 100.0, seq))
        served: Counter[int] = Counter()
        for i in range(200):
            head = queue.service_order(0.0)[0]
            queue.remove(head)
            if shares is not None:
                shares.served(head.tier)
            served[head.tier] += 1
            queue.offer(Waiter(head.tier, False, 0.0, 100.0, 100 + i))
        assert (served[2] > 0) is low_gets_some


def test_a_tier_back_from_idling_banks_no_turns() -> None:
    shares = TierShares([1.0, 1.0])
    for _ in range(100):
        shares.served(0)  # tier 1 was idle all along
    assert shares.key(1)[0] == shares.key(0)[0] - 1.0  # resumes at the current time
    shares.served(1)
    assert shares.key(1) > shares.key(0)


def test_a_full_queue_evicts_from_the_tier_most_over_its_share() -> None:
    shares = TierShares([8.0, 4.0, 1.0])
    queue = WaitQueue(16, LIMITS, LONG, shares)
    for seq in range(16):
        queue.offer(Waiter(0, False, 0.0, 100.0, seq))
    low = Waiter(2, False, 0.0, 100.0, 16)
    evicted = queue.offer(low)  # 16 high (2 by weight) against 1 low (1): high's newest goes
    assert evicted is not None and evicted.tier == 0 and evicted.seq == 15
    assert low in queue.waiters
    another_low = Waiter(2, False, 0.0, 100.0, 17)
    assert queue.offer(another_low) is another_low  # 15 high (1.9) against 2 low: low is over


def test_the_ahead_count_follows_the_weights() -> None:
    shares = TierShares([8.0, 1.0])
    queue = WaitQueue(64, LIMITS, LONG, shares)
    for seq in range(40):
        queue.offer(Waiter(0, False, 0.0, 100.0, seq))
    # a low newcomer goes after 8 high ones, not after all 40
    assert queue.ahead_of(1, False) == 8
    assert queue.ahead_of(0, False) == 40


def test_vtc_serves_the_light_tenant_first_within_a_tier() -> None:
    counters = VirtualCounters()
    counters.served("heavy", 10_000, 1_000, 1.0)
    queue = WaitQueue(64, LIMITS, LONG, TierShares([1.0]), counters.of)
    for seq in range(5):
        queue.offer(Waiter(0, False, 0.0, 100.0, seq, tenant="heavy"))
    # a light newcomer does not queue behind the heavy tenant's waiters; a heavy one does
    assert queue.must_wait_behind(0, False, "light") is False
    assert queue.must_wait_behind(0, False, "heavy") is True
    queue.offer(Waiter(0, False, 0.0, 100.0, 5, tenant="light"))
    assert queue.service_order(0.0)[0].tenant == "light"
    assert queue.ahead_of(0, False, "light") == 1  # only the light one before it


def test_vtc_a_heavy_tenant_sending_ten_times_more_gets_half() -> None:
    counters = VirtualCounters()
    shares = TierShares([1.0])
    queue = WaitQueue(1000, LIMITS, LONG, shares, counters.of)
    seq = 0
    served: Counter[str] = Counter()
    for _ in range(500):
        for tenant, n in (("heavy", 10), ("light", 1)):
            for _ in range(n):
                seq += 1
                queue.offer(Waiter(0, False, 0.0, 100.0, seq, tenant=tenant))
        for _ in range(2):  # capacity: 2 a round, against 11 offered
            head = queue.service_order(0.0)[0]
            queue.remove(head)
            counters.served(str(head.tenant), 100, 50, 1.0)
            served[str(head.tenant)] += 1
    assert served["light"] == 500  # every one of its requests
    assert served["heavy"] == 500


def test_vtc_lift_and_weights() -> None:
    counters = VirtualCounters()
    counters.served("a", 1000, 0, 1.0)
    counters.lift("b", ["a"])  # b returns from idling: no lower than the lowest waiting
    assert counters.of("b") == counters.of("a")
    counters.served("c", 0, 100, 2.0)  # weight 2: half the charge
    assert counters.of("c") == 100 * OUTPUT_WEIGHT / 2
    pending = counters.take_pending()
    assert pending["b"] == 1000 and counters.take_pending() == {}
    counters.charge("a", 5)
    counters.adopt({"a": 7000.0, "z": 1.0})  # the store's sum of every replica's charges
    assert counters.of("a") == 7005.0 and counters.of("z") == 1.0
