"""GCRA rate limits (router/core/ratelimit.py) against what a limit promises: over any
window a key gets at most its pace plus its tolerance and one request; a key that keeps
to its pace is never refused; the headers count down and reset."""

from __future__ import annotations

from ctxroute.router.core.ratelimit import LocalLimits, Rate, decide, quota
from hypothesis import given, settings
from hypothesis import strategies as st


def admitted_over(
    rate: Rate, gaps: list[float], cost: int = 1, tokens: bool = False
) -> list[float]:
    limits = LocalLimits()
    now = 0.0
    times = []
    for gap in gaps:
        now += gap
        req, tok = (None, rate) if tokens else (rate, None)
        if limits.take("t", req, tok, cost, now).allowed:
            times.append(now)
    return times


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.integers(1, 600),
    tolerance=st.floats(0.5, 10.0),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=400),
    window=st.floats(1.0, 60.0),
)
def test_no_window_admits_more_than_pace_plus_tolerance(
    rpm: int, tolerance: float, gaps: list[float], window: float
) -> None:
    rate = Rate(rpm, tolerance)
    times = admitted_over(rate, gaps)
    bound = (window + tolerance) / rate.interval_s + 1
    for i, start in enumerate(times):
        inside = sum(1 for t in times[i:] if t < start + window)
        assert inside <= bound + 1e-9


@settings(max_examples=100, deadline=None)
@given(rpm=st.integers(1, 600), n=st.integers(1, 200))
def test_a_key_at_its_pace_is_never_refused(rpm: int, n: int) -> None:
    rate = Rate(rpm, 3.0)
    assert len(admitted_over(rate, [rate.interval_s] * n)) == n


def test_a_flood_gets_the_limit_per_minute_within_five_percent() -> None:
    rate = Rate(600, 3.0)
    times = admitted_over(rate, [0.001] * 60_000)  # 1,000 requests a second for 60 s
    assert 600 <= len(times) <= 600 * 1.05 + 1


def test_tokens_per_minute_a_big_request_passes_then_the_bucket_owes() -> None:
    rate = Rate(1000, 3.0)  # 1,000 tokens a minute: 180 ms per token, 3 s tolerance
    limits = LocalLimits()
    assert limits.take("t", None, rate, 5000, 0.0).allowed  # bigger than any burst: passes
    refused = limits.take("t", None, rate, 10, 1.0)
    assert not refused.allowed and refused.refused_by == "tokens"
    assert 290 < refused.retry_after_s < 300  # 5000 x 60 ms - 3 s of tolerance - 1 s


def test_settling_refunds_unused_tokens_but_banks_no_credit() -> None:
    rate = Rate(600, 1.0)  # 100 ms per token
    limits = LocalLimits()
    assert limits.take("t", None, rate, 100, 0.0).allowed  # 10 s of debt
    assert not limits.take("t", None, rate, 1, 0.0).allowed
    limits.settle("t", rate, -95, 0.0)  # it used 5 of the 100
    assert limits.take("t", None, rate, 1, 0.0).allowed
    limits.settle("t", rate, -10_000, 0.0)  # a refund larger than the debt: back to now
    assert limits.tats["t"][1] == 0.0


def test_a_refusal_takes_nothing_from_either_bucket() -> None:
    requests, tokens = Rate(60, 1.0), Rate(60, 1.0)
    decision, req_debt, tok_debt = decide(requests, tokens, 0.0, 5.0, 10)
    assert not decision.allowed and decision.refused_by == "tokens"
    assert (req_debt, tok_debt) == (0.0, 5.0)


def test_quota_headers_count_down() -> None:
    rate = Rate(60, 3.0)  # one a second, three seconds ahead at most
    assert quota(rate, 0.0).remaining == 4
    assert quota(rate, 1.0).remaining == 3
    assert quota(rate, 3.5).remaining == 0
    assert quota(rate, 2.0).reset_s == 2.0
    assert quota(rate, 0.0).limit == 60
