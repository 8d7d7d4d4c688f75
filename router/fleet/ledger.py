"""Per-backend live accounting. Every attempt on a backend begins here and ends here in
exactly one typed ``Outcome``, recorded once: load (through the load view), backend
health (the one writer of "up"), the breakers (through the store: an attempt is let
through by ``store.allow`` and its outcome given back as a failure, a success or
neither), and the prefill rate learned from first-token times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Final

from ctxroute.router.core.breaker import Distress
from ctxroute.router.core.longwork import LongWork
from ctxroute.router.model import FAILURES, Backend, BackendView, Outcome, OutcomeKind

if TYPE_CHECKING:
    from ctxroute.router.store import Store

# a first-token time says something about the prefill rate only when the prefill ahead of
# it was sizeable (short ones are dominated by the engine's step overhead)
_LEARN_MIN_TOKENS: Final = 1024
_LEARN_WEIGHT: Final = 0.2
_RATE_FLOOR: Final = 50.0
_RATE_CEILING: Final = 1e7


class Attempt:
    """One try of one request on one backend. Made by ``Ledger.begin``, ended once."""

    __slots__ = (
        "ahead",
        "backend",
        "budget",
        "dispatched_at",
        "ended",
        "long",
        "pending",
        "prefill",
        "probe",
    )

    def __init__(
        self,
        backend: Backend,
        prefill: int,
        budget: int,
        long: bool,
        ahead: int,
        now: float,
        probe: bool,
    ) -> None:
        self.backend = backend
        self.prefill = prefill
        self.budget = budget
        self.long = long
        self.ahead = ahead  # prompt tokens pending on the backend at dispatch, its own included
        self.dispatched_at = now
        self.pending = True
        self.ended = False
        self.probe = probe  # let through as a half-open breaker's probe


class Ledger:
    def __init__(
        self,
        backends: Sequence[Backend],
        store: Store,
        *,
        work: LongWork,
        default_prefill_rate: float,
    ) -> None:
        self.backends = tuple(backends)
        self.store = store
        self.board = store.load
        self.work = work
        self.up = [True] * len(self.backends)
        self.learned = [b.prefill_tokens_per_s is None for b in self.backends]
        self.rates = [b.prefill_tokens_per_s or default_prefill_rate for b in self.backends]
        # KV capacity in tokens: configured, else what the probe reads off vLLM
        self.kv_tokens: list[int | None] = [b.kv_tokens for b in self.backends]
        # what each engine held at its last scrape beyond the budgets in flight then
        # (``core/kvroom.py``): the probe's to write
        self.kv_unaccounted = [0] * len(self.backends)
        # the rule that holds each memory breaker open (the probe's to write)
        self.memory_why = [Distress.NONE] * len(self.backends)
        # memory breaker openings this process decided, per backend and rule (a counter)
        self.memory_openings: list[dict[Distress, int]] = [{} for _ in self.backends]
        # how each backend's engine differs from its pool's others (``core/skew.py``; the
        # probe's to write, every few rounds)
        self.skew: list[tuple[str, ...]] = [() for _ in self.backends]
        # called when a backend may take more (an attempt ended, a long prefill ended): the
        # admission gate moves its queues on it
        self.on_change: Callable[[], None] | None = None
        # a plain dict with every kind: a Counter's += goes through its Python-level code
        self.outcomes: dict[OutcomeKind, int] = dict.fromkeys(OutcomeKind, 0)

    def view_of(self, backend: Backend) -> BackendView:
        """The backend as it is now."""
        return self._view(backend, monotonic())

    def views(self) -> Callable[[Backend], BackendView]:
        """A view of the fleet for one decision (a plan and the admission verdict on it):
        each backend read once, all at one moment."""
        now = monotonic()
        seen: dict[int, BackendView] = {}

        def view_of(backend: Backend) -> BackendView:
            view = seen.get(backend.index)
            if view is None:
                view = seen[backend.index] = self._view(backend, now)
            return view

        return view_of

    def _view(self, backend: Backend, now: float) -> BackendView:
        i = backend.index
        return BackendView(backend, self.board.fleet(i), self.up[i], self.rates[i],
                           self.store.usable(i, now), self.kv_tokens[i],
                           self.kv_unaccounted[i])  # fmt: skip

    def begin(self, backend: Backend, prefill: int, budget: int, now: float) -> Attempt | None:
        """Count a request as dispatched to ``backend``; None when it is at max_in_flight
        (the one place the hard cap is enforced, at the moment of dispatch) or its
        breakers, memory pressure or a drain keep it from new requests."""
        i = backend.index
        load = self.board.fleet(i)  # one read of the rows, for the cap and the work ahead
        if load.in_flight >= backend.max_in_flight:
            return None
        allowed, probe = self.store.allow(i, monotonic())
        if not allowed:
            return None
        long = self.work.is_long(prefill)
        ahead = load.pending_prefill + prefill
        self.board.add(i, 1, prefill, 1 if long else 0, budget, 1 if long else 0)
        return Attempt(backend, prefill, budget, long, ahead, now, probe)

    def first_byte(self, attempt: Attempt, now: float) -> float:
        """The backend's first byte came: its prefill is no longer pending. Returns TTFT."""
        ttft = now - attempt.dispatched_at
        if attempt.pending:
            attempt.pending = False
            i = attempt.backend.index
            self.board.add(i, 0, -attempt.prefill, -1 if attempt.long else 0, 0)
            if attempt.long and self.on_change is not None:
                self.on_change()
            self._learn(attempt, ttft)
        return ttft

    def answered(self, attempt: Attempt, now: float) -> float:
        """A whole answer came at once (not a stream): its TTFT, learned from like a first
        byte; the load it leaves is settled by ``end``, which follows at once, in one
        update rather than two."""
        ttft = now - attempt.dispatched_at
        if attempt.pending:
            self._learn(attempt, ttft)
        return ttft

    def _learn(self, attempt: Attempt, ttft: float) -> None:
        i = attempt.backend.index
        if self.learned[i] and attempt.ahead >= _LEARN_MIN_TOKENS and ttft > 0:
            sample = min(max(attempt.ahead / ttft, _RATE_FLOOR), _RATE_CEILING)
            self.rates[i] += _LEARN_WEIGHT * (sample - self.rates[i])

    def end(self, attempt: Attempt, outcome: Outcome) -> None:
        """Record how the attempt ended: exactly once (a second call is a bug, ignored)."""
        if attempt.ended:
            return
        attempt.ended = True
        backend = attempt.backend
        i = backend.index
        if attempt.pending:  # no first byte came: its prefill is no longer pending either
            attempt.pending = False
            self.board.add(
                i,
                -1,
                -attempt.prefill,
                -1 if attempt.long else 0,
                -attempt.budget,
                -1 if attempt.long else 0,
            )
        else:
            self.board.add(i, -1, 0, 0, -attempt.budget, -1 if attempt.long else 0)
        kind = outcome.kind
        self.outcomes[kind] += 1
        # the breakers hear failures and successes only: backpressure and neutral outcomes
        # (a 4xx, a client that left) give back a probe's slot and count for nothing
        if kind is OutcomeKind.SUCCESS:
            self.store.record(i, False, attempt.probe, monotonic())
            self.up[i] = True  # it answered
        else:
            failed = True if kind in FAILURES else None
            self.store.record(i, failed, attempt.probe, monotonic())
            if kind is OutcomeKind.CONNECT_ERROR:
                self.up[i] = False
            elif outcome.status is not None:
                self.up[i] = True  # it answered
        if self.on_change is not None:
            self.on_change()

    def set_up(self, backend: Backend, up: bool) -> bool:
        """Probe result; True when it changed."""
        changed = self.up[backend.index] != up
        self.up[backend.index] = up
        return changed
