"""The overload guard (router/core/admission/overload.py): lowest tiers first, never the
highest, one slow check sheds nothing."""

from __future__ import annotations

from ctxroute.router.core.admission.overload import OverloadGuard
from hypothesis import given
from hypothesis import strategies as st


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
