"""The pure breaker against a plain reference model, driven by hypothesis: any sequence of
clock steps, calls asked for, and granted calls ending as failures, successes or neither
leaves both in the same state, and the invariants hold throughout."""

from __future__ import annotations

from ctxroute.router.core import breaker as br
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

SETTINGS = br.BreakerSettings(consecutive_failures=3, failure_rate=0.5, min_calls=4, window=6,
                              open_s=1.0, growth=2.0, max_open_s=5.0, jitter=0.5,
                              half_open_probes=2)  # fmt: skip


class Reference:
    """The rules written the obvious way, as the docstring of breaker.py states them."""

    def __init__(self) -> None:
        self.state = "closed"
        self.calls: list[bool] = []
        self.in_a_row = 0
        self.openings = 0
        self.until = 0.0
        self.probing = 0
        self.passed = 0

    def trip(self, now: float, jitter: float) -> None:
        self.openings += 1
        length = min(1.0 * 2.0 ** (self.openings - 1), 5.0) * (1 + 0.5 * jitter)
        self.state, self.until = "open", now + length
        self.calls, self.in_a_row, self.probing, self.passed = [], 0, 0, 0

    def ask(self, now: float) -> tuple[bool, bool]:
        if self.state == "closed":
            return True, False
        if self.state == "open":
            if now < self.until:
                return False, False
            self.state, self.probing, self.passed = "half_open", 0, 0
        if self.probing + self.passed < 2:
            self.probing += 1
            return True, True
        return False, False

    def end(self, failed: bool | None, probe: bool, now: float, jitter: float) -> None:
        if failed is None:  # neutral: a probe's slot comes back
            if probe and self.state == "half_open" and self.probing > 0:
                self.probing -= 1
            return
        if self.state == "closed":
            if probe:
                return
            self.calls = [*self.calls, failed][-6:]
            self.in_a_row = self.in_a_row + 1 if failed else 0
            if failed and (
                self.in_a_row >= 3
                or (len(self.calls) >= 4 and self.calls.count(True) >= 0.5 * len(self.calls))
            ):
                self.trip(now, jitter)
            return
        if self.state == "open" or not probe:
            return
        if failed:
            self.trip(now, jitter)
            return
        self.passed += 1
        self.probing = max(0, self.probing - 1)
        if self.passed >= 2:
            self.__init__()  # type: ignore[misc]


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0
        self.breaker = br.CLOSED
        self.model = Reference()
        self.granted: list[bool] = []  # calls in flight: whether each is a probe

    @rule(dt=st.floats(min_value=0.0, max_value=4.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    def a_call_asks(self) -> None:
        usable = br.usable(self.breaker, self.now, SETTINGS)
        allowed, probe, self.breaker = br.allow(self.breaker, self.now, SETTINGS)
        assert usable == allowed  # the planner's read-only view agrees with dispatch
        assert (allowed, probe) == self.model.ask(self.now)
        if allowed:
            self.granted.append(probe)

    @precondition(lambda self: self.granted)
    @rule(which=st.integers(min_value=0), outcome=st.sampled_from([True, False, None]),
          jitter=st.floats(min_value=0.0, max_value=0.999))  # fmt: skip
    def a_call_ends(self, which: int, outcome: bool | None, jitter: float) -> None:
        probe = self.granted.pop(which % len(self.granted))
        if outcome is None:
            self.breaker = br.release(self.breaker, probe)
        else:
            self.breaker = br.record(self.breaker, outcome, probe, self.now, SETTINGS, jitter)
        self.model.end(outcome, probe, self.now, jitter)

    @invariant()
    def same_state_as_the_model(self) -> None:
        b, m = self.breaker, self.model
        assert b.state.value == m.state
        assert b.closed == (m.state == "closed")  # the field read on the hot path agrees
        assert b.openings == m.openings
        if m.state != "closed":
            assert abs(b.open_until - m.until) < 1e-9
        if m.state == "half_open":
            assert (b.probes_out, b.probes_ok) == (m.probing, m.passed)

    @invariant()
    def never_more_probes_than_configured(self) -> None:
        assert self.breaker.probes_out + self.breaker.probes_ok <= SETTINGS.half_open_probes

    @invariant()
    def open_time_is_bounded(self) -> None:
        if self.breaker.state is br.BreakerState.OPEN:
            assert self.breaker.open_until - self.now <= 5.0 * 1.5 + 1e-9


TestBreaker = BreakerMachine.TestCase
TestBreaker.settings = hsettings(max_examples=300, stateful_step_count=60, deadline=None)


def test_backpressure_and_neutral_outcomes_never_open_it() -> None:
    # only record() moves a breaker towards open, and the ledger gives it failures and
    # successes only; release() (neutral, backpressure) leaves a closed breaker as it is
    b = br.CLOSED
    for _ in range(100):
        b = br.release(b, probe=False)
    assert b == br.CLOSED


def test_two_failures_in_three_calls_do_not_open_it_below_min_calls() -> None:
    b = br.CLOSED
    for failed in (True, False, True):
        b = br.record(b, failed, False, 0.0, SETTINGS, 0.0)
    assert b.state is br.BreakerState.CLOSED


def test_open_time_grows_with_openings_and_is_capped() -> None:
    times = [br.open_time(n, SETTINGS, 0.0) for n in range(1, 6)]
    assert times == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert br.open_time(1, SETTINGS, 0.999) > br.open_time(1, SETTINGS, 0.0)


def test_memory_breaker_opens_on_distress_not_on_usage_vllm_runs_at() -> None:
    m = br.MemorySettings()
    assert m.close_at == 0.9 * 0.97

    def step(was: bool, now: br.MemoryReading | None, before: br.MemoryReading | None = None):  # type: ignore[no-untyped-def]
        return br.memory_open(was, now, before, m)

    # 88-95% full with a steady queue is how vLLM is meant to run: closed
    assert step(False, br.MemoryReading(0.95, 3, 0), br.MemoryReading(0.93, 3, 0)) == (
        False, br.Distress.NONE)  # fmt: skip
    assert step(False, br.MemoryReading(0.97, 0, 0)) == (True, br.Distress.FULL)
    # preemptions rising: open, at any usage; a counter that went down (a restart) is not
    assert step(False, br.MemoryReading(0.5, 0, 3), br.MemoryReading(0.5, 0, 2)) == (
        True, br.Distress.PREEMPTING)  # fmt: skip
    assert not step(False, br.MemoryReading(0.5, 0, 0), br.MemoryReading(0.5, 0, 7))[0]
    # a queue growing over two readings while nearly full; not on a cache with room
    grow = (br.MemoryReading(0.92, 4, 0), br.MemoryReading(0.92, 2, 0))
    assert step(False, *grow) == (True, br.Distress.QUEUE_GROWING)
    assert not step(False, br.MemoryReading(0.92, 4, 0), br.MemoryReading(0.92, 0, 0))[0]
    assert not step(False, br.MemoryReading(0.6, 4, 0), br.MemoryReading(0.6, 2, 0))[0]
    # hysteresis: open until usage is under close_at and nothing fires
    assert step(True, br.MemoryReading(0.9, 0, 0)) == (True, br.Distress.RECOVERING)
    assert step(True, br.MemoryReading(0.8, 0, 0)) == (False, br.Distress.NONE)
    # unknown changes nothing
    assert step(True, None) == (True, br.Distress.NONE)
    assert step(False, None) == (False, br.Distress.NONE)
    queue = br.MemorySettings(max_waiting=10)
    assert br.memory_open(False, br.MemoryReading(0.1, 11), None, queue)[0]
    assert not br.memory_open(False, br.MemoryReading(0.1, 10), None, queue)[0]
    off = br.MemorySettings(on_preemptions=False, queue_growth_at=None)
    assert not br.memory_open(False, *grow, off)[0]


readings = st.one_of(
    st.none(),
    st.builds(
        br.MemoryReading,
        st.one_of(st.none(), st.floats(0.0, 1.0)),
        st.one_of(st.none(), st.integers(0, 6).map(float)),
        st.one_of(st.none(), st.integers(0, 4).map(float)),
    ),
)


@given(st.lists(readings, max_size=30))
def test_memory_breaker_matches_a_reference_model(sequence: list[br.MemoryReading | None]) -> None:
    """Step the breaker through a run of readings (None: stale) and compare it with a
    model written from the documented rules: open while a rule fires, then until usage is
    known and under close_at."""
    m = br.MemorySettings()
    is_open = False
    before: br.MemoryReading | None = None
    for now in sequence:
        got = br.memory_open(is_open, now, before, m)[0]
        if now is None:
            want = is_open
        else:
            u, w, p = now
            fires = (
                (before is not None and p is not None and before.preemptions is not None
                 and p > before.preemptions)
                or (u is not None and u >= 0.97)
                or (u is not None and u >= 0.9 and before is not None and w is not None
                    and bool(before.waiting) and w > (before.waiting or 0))
            )  # fmt: skip
            want = fires or (is_open and (u is None or u >= 0.9 * 0.97))
            before = now
        assert got == want
        is_open = got
