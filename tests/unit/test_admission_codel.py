"""The standing-queue detector (router/core/admission/codel.py) against plain reference
rules."""

from __future__ import annotations

from ctxroute.router.core.admission.codel import Codel
from hypothesis import given
from hypothesis import strategies as st


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
        assert c.standing == (over_since is not None and now - over_since >= 1.0)
        if c.standing:
            break
    assert c.allowed_wait(10.0, now) == (0.25 if c.standing else 10.0)


@given(st.lists(st.floats(0.001, 0.3), min_size=1, max_size=60), st.floats(0, 2))
def test_a_standing_queue_lasts_until_an_interval_passes_without_a_cut(gaps, after) -> None:  # type: ignore[no-untyped-def]
    c = Codel(target=0.05, interval=0.1)
    c.head_waited(0.2, 10.0)  # the head waited past target + interval: a standing queue
    assert c.standing and c.standing_at(10.0)
    now = last_cut = 10.0
    for gap in gaps:
        now += gap
        standing = now - last_cut < 0.1
        assert c.standing_at(now) == standing  # a read: it changes nothing
        c.update(now)
        assert c.standing == standing
        if not standing:
            break
        c.dispatched(0.001, now)  # short waits while it stands say nothing: it lasts
        c.cut(now, 1)
        last_cut = now
    else:
        c.update(now + after)
        assert c.standing == ((now + after) - last_cut < 0.1)
    # once over, a cut does not bring it back (only waits over the target do)
    c.update(now + max(after, 0.1))
    if not c.standing:
        c.cut(now + 1.0, 1)
        assert not c.standing


def test_a_standing_queue_is_seen_at_its_head_when_nothing_leaves() -> None:
    c = Codel(target=0.05, interval=0.1)
    c.head_waited(0.05, 1.0)  # at the target: fine
    c.head_waited(0.14, 1.09)  # over the target for 90 ms: not yet a whole interval
    assert not c.standing
    c.head_waited(0.16, 1.11)  # over it for 110 ms, and nobody left the queue: it stands
    assert c.standing and c.allowed_wait(0.5, 1.11) == 0.05
    # a dispatch with a short wait ends the run over the target before it stands
    d = Codel(target=0.05, interval=0.1)
    d.head_waited(0.1, 1.0)
    d.dispatched(0.01, 1.02)
    d.head_waited(0.08, 1.1)  # a new head, over the target for 30 ms only
    assert not d.standing
