"""Drain metering and Retry-After (router/core/admission/drain.py)."""

from __future__ import annotations

from ctxroute.router.core.admission.drain import DrainMeter, retry_after
from hypothesis import given
from hypothesis import strategies as st


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
