"""KV room per request (router/core/kvroom.py): committed tokens and the class marks."""

from __future__ import annotations

import pytest
from ctxroute.router.core.kvroom import KvMarks, committed, has_room, unaccounted
from ctxroute.router.model import Backend, BackendView, Load
from hypothesis import given
from hypothesis import strategies as st

_B = Backend(0, "http://b:1", "p", "m", "b", 1, 64, kv_tokens=100_000)


def _view(budget: int, extra: int = 0, kv: int | None = 100_000) -> BackendView:
    return BackendView(_B, Load(1, 0, 0, budget), True, 1.0, True, kv, extra)


def test_committed_is_the_budgets_in_flight_plus_what_the_router_did_not_account_for() -> None:
    assert committed(_view(30_000, 5_000)) == 35_000
    # 50k budgets of which the engine held 60k at the scrape: 10k came from elsewhere
    assert unaccounted(0.6, 100_000, 50_000) == 10_000
    # prefix sharing and early stops make an engine hold less: the reservation stands
    assert unaccounted(0.2, 100_000, 50_000) == 0
    # out-of-range gauges are clamped; a backend's NaN (its /metrics is not ours) is no
    # reading at all, never an exception in the probe
    assert unaccounted(1.7, 100_000, 0) == 100_000 and unaccounted(-1.0, 100_000, 0) == 0
    assert unaccounted(float("inf"), 100_000, 0) == 100_000
    assert unaccounted(float("nan"), 100_000, 0) == 0


def test_a_request_fits_only_under_its_class_mark() -> None:
    marks = KvMarks(long=0.88, short=0.97)
    v = _view(80_000, 5_000)  # 85k committed of 100k
    assert has_room(v, 3_000, marks.of(long=False))  # 88k under 97k
    assert has_room(v, 2_000, marks.of(long=True))  # 87k under 88k
    assert not has_room(v, 4_000, marks.of(long=True))  # 89k over 88k
    assert not has_room(v, 13_000, marks.of(long=False))
    assert has_room(_view(10**9, 0, kv=None), 10**9, 0.1)  # size unknown: the breakers watch


@pytest.mark.parametrize(("long", "short"), [(0.0, 0.5), (0.9, 0.8), (0.5, 1.1)])
def test_marks_are_ordered_shares(long: float, short: float) -> None:
    with pytest.raises(ValueError, match="KV marks"):
        KvMarks(long=long, short=short)


@given(st.integers(0, 200_000), st.integers(0, 50_000), st.integers(0, 100_000),
       st.floats(0.05, 1.0))  # fmt: skip
def test_room_is_exactly_committed_plus_need_under_the_mark(budget: int, extra: int, need: int,
                                                             mark: float) -> None:  # fmt: skip
    v = _view(budget, extra)
    assert has_room(v, need, mark) == (committed(v) + need <= 100_000 * mark)
    if has_room(v, need, mark):  # less asked, or less committed, fits too
        assert has_room(v, need // 2, mark) and has_room(_view(budget // 2, extra), need, mark)
