"""The retry budget against a reference model: a plain list of every event with its time,
counted over the window at each step (what the ring of per-second slots must agree with)."""

from __future__ import annotations

import math

import pytest
from ctxroute.router.core.retrybudget import RetryBudget
from hypothesis import given, settings
from hypothesis import strategies as st

events = st.lists(
    st.tuples(st.sampled_from(["request", "retry"]), st.floats(0.0, 3.0)), max_size=300
)


class Reference:
    def __init__(self, ratio: float, min_per_s: float, window_s: int) -> None:
        self.ratio, self.min_per_s, self.window_s = ratio, min_per_s, window_s
        self.log: list[tuple[str, float]] = []

    def _in_window(self, kind: str, now: float) -> int:
        oldest = math.floor(now) - self.window_s + 1
        return sum(1 for k, t in self.log if k == kind and math.floor(t) >= oldest)

    def request(self, now: float) -> None:
        self.log.append(("request", now))

    def try_retry(self, now: float) -> bool:
        allowed = self.ratio * self._in_window("request", now) + self.min_per_s * self.window_s
        if self._in_window("retry", now) + 1 > allowed:
            return False
        self.log.append(("retry", now))
        return True


@settings(max_examples=300, deadline=None)
@given(events=events, ratio=st.sampled_from([0.0, 0.1, 0.2, 1.0]),
       floor=st.sampled_from([0.0, 0.5, 3.0]), window=st.sampled_from([1, 2, 10]))  # fmt: skip
def test_the_budget_agrees_with_the_reference(
    events: list[tuple[str, float]], ratio: float, floor: float, window: int
) -> None:
    budget, model = RetryBudget(ratio, floor, window), Reference(ratio, floor, window)
    now = 0.0
    for kind, step in events:
        now += step  # time only moves forward
        if kind == "request":
            budget.request(now)
            model.request(now)
        else:
            assert budget.try_retry(now) == model.try_retry(now), (kind, now)
        assert len(budget._slots) <= window  # bounded by the window, whatever the rate


def test_a_retry_storm_is_held_at_the_ratio_plus_the_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10)
    granted = 0
    for i in range(1000):  # 100 requests a second for 10 s, each failing and asking again
        now = i / 100
        budget.request(now)
        granted += budget.try_retry(now)
    # 20% of the window's requests plus 10 s x 1 a second, not 1,000
    assert granted <= 0.2 * 1000 + 10
    assert granted >= 0.2 * 900  # and isolated failures were retried all along


def test_a_quiet_router_still_retries_thanks_to_the_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.5, window_s=10)
    budget.request(0.0)
    assert [budget.try_retry(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert budget.try_retry(11.0)  # the window moved on: the floor is back


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio=-1)
    with pytest.raises(ValueError):
        RetryBudget(window_s=0.5)
