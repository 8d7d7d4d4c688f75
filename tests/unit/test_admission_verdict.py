"""The dispatch verdict (router/core/admission/verdict.py) over a small fleet, against a
reference written from the rules."""

from __future__ import annotations

from ctxroute.router.core.admission.settings import AdmissionSettings, Tier
from ctxroute.router.core.admission.verdict import (
    HOLDS,
    LAST_RESORT_MARGIN_MS,
    YIELD_TO_SHORT_MS,
    Verdict,
    verdict,
)
from ctxroute.router.core.hashring import PoolRing
from ctxroute.router.core.kvroom import KvMarks, has_room
from ctxroute.router.core.longwork import LongWork
from ctxroute.router.core.planner import PoolView
from ctxroute.router.model import Backend, BackendView, Load, RoutePlan
from hypothesis import given, settings
from hypothesis import strategies as st


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
    st.sampled_from([float("inf"), 5000.0, 500.0]),
    st.integers(0, 20_000),
)
@settings(max_examples=600)
def test_verdicts_follow_the_rules(rows, tier: int, long: bool, keep: int, budget: int,  # type: ignore[no-untyped-def]
                                   yielded: float, time_left: float,
                                   unaccounted: int) -> None:  # fmt: skip
    pools = _fleet(len(rows), kv=100_000)
    backends = pools[0].backends
    views = {b.index: BackendView(b, Load(r[0], r[1] * 5000 + r[4] * 600, r[1], r[2],
                                          r[1] + r[3]),
                                  True, 20_000.0, True, b.kv_tokens, unaccounted)
             for b, r in zip(backends, rows, strict=True)}  # fmt: skip
    work = LongWork(keep_clean=keep, hold=True, kv=KvMarks(long=0.8, short=0.95))
    # the planner leaves out what is full and what has no KV room under the class's mark
    free = [b for b in backends if views[b.index].load.in_flight < b.max_in_flight]
    room = [b for b in free if has_room(views[b.index], budget, work.kv.of(long))]
    # the planner's order is not under test here: the least loaded first
    room.sort(key=lambda b: views[b.index].load.pending_prefill)
    plan = RoutePlan("p", tuple(room), tuple(0.0 for _ in room), budget, (0,), len(room),
                     kv_full=len(free) - len(room))  # fmt: skip
    s = AdmissionSettings(tiers=(Tier("high"), Tier("normal", 0.25), Tier("low")), work=work)
    v = verdict(tier, long, plan, pools, lambda b: views[b.index], s, lambda b: True,
                time_left, yielded)  # fmt: skip
    if not room:
        # no KV room: requests end and make some; full: they pass by themselves. Both wait
        assert v is (Verdict.HOLD_KV if len(free) else Verdict.FULL)
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

    def open_to_short(v_: BackendView) -> bool:
        return (not v_.load.long_pending and v_.load.in_flight < 8
                and has_room(v_, 4096, 0.95))  # fmt: skip

    for_short = sum(1 for v_ in views.values() if open_to_short(v_))
    if (
        len(backends) > keep
        and for_short - 1 < keep
        and open_to_short(first)
        and time_left > LAST_RESORT_MARGIN_MS
    ):
        # it would take the last backend open to short requests: only when it could not
        # wait any longer and still start in time
        assert v is Verdict.HOLD_CLEAN
        return
    pending = sum(1 for v_ in views.values() if v_.load.long_pending)
    if pending == 0:
        assert v is Verdict.ADMIT  # nothing that would end: holding would never end
        return
    clean = sum(1 for v_ in views.values()
                if not v_.load.long_pending and v_.load.in_flight < 8)  # fmt: skip
    if first.load.long_pending or clean - 1 < keep:
        assert v is Verdict.HOLD_CLEAN
    else:
        assert v is Verdict.ADMIT
    assert (v in HOLDS) <= long


def test_nothing_usable_and_nothing_passing_is_no_backend() -> None:
    pools = _fleet(2)
    plan = RoutePlan("p", (), (), 100, (0,), 0)
    s = AdmissionSettings()

    def view(b: Backend) -> BackendView:
        return BackendView(b, Load(), True, 1.0, False)

    assert verdict(1, False, plan, pools, view, s, lambda b: False) is Verdict.NO_BACKEND
    assert verdict(1, False, plan, pools, view, s, lambda b: b.index == 1) is Verdict.FULL


def test_a_request_the_best_backend_would_start_after_its_deadline_waits() -> None:
    pools = _fleet(2)
    a, b = pools[0].backends
    plan = RoutePlan("p", (a, b), (900.0, 1200.0), 100, (0,), 2)
    s = AdmissionSettings()

    def view(x: Backend) -> BackendView:
        return BackendView(x, Load(1, 18_000, 1, 20_000), True, 20_000.0)

    assert verdict(1, False, plan, pools, view, s, lambda x: True, 500.0) is Verdict.LATE
    assert verdict(1, False, plan, pools, view, s, lambda x: True, 1000.0) is Verdict.ADMIT
    assert verdict(1, False, plan, pools, view, s, lambda x: True) is Verdict.ADMIT
