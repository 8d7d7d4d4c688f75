"""Per-backend live accounting. Every attempt on a backend begins here and ends here in
exactly one typed ``Outcome``, recorded once: load (through the load board), backend
health (the one writer of "up"), the prefill rate learned from first-token times, and the
hooks that breakers and metrics attach to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

from router.loadboard import LoadView
from router.model import Backend, BackendView, Outcome, OutcomeKind

OutcomeHook = Callable[[Backend, Outcome], None]

# a first-token time says something about the prefill rate only when the prefill ahead of
# it was sizeable (short ones are dominated by the engine's step overhead)
_LEARN_MIN_TOKENS: Final = 1024
_LEARN_WEIGHT: Final = 0.2
_RATE_FLOOR: Final = 50.0
_RATE_CEILING: Final = 1e7


class Attempt:
    """One try of one request on one backend. Made by ``Ledger.begin``, ended once."""

    __slots__ = ("ahead", "backend", "budget", "dispatched_at", "ended", "long", "pending",
                 "prefill")  # fmt: skip

    def __init__(self, backend: Backend, prefill: int, budget: int, long: bool,
                 ahead: int, now: float) -> None:  # fmt: skip
        self.backend = backend
        self.prefill = prefill
        self.budget = budget
        self.long = long
        self.ahead = ahead  # prompt tokens pending on the backend at dispatch, its own included
        self.dispatched_at = now
        self.pending = True
        self.ended = False


class Ledger:
    def __init__(self, backends: Sequence[Backend], board: LoadView, *,
                 long_prefill_tokens: int, default_prefill_rate: float) -> None:  # fmt: skip
        self.backends = tuple(backends)
        self.board = board
        self.long_prefill_tokens = long_prefill_tokens
        self.up = [True] * len(self.backends)
        self.learned = [b.prefill_tokens_per_s is None for b in self.backends]
        self.rates = [b.prefill_tokens_per_s or default_prefill_rate for b in self.backends]
        self.hooks: list[OutcomeHook] = []
        self.outcomes: Counter[OutcomeKind] = Counter()

    def view_of(self, backend: Backend) -> BackendView:
        i = backend.index
        return BackendView(backend, self.board.fleet(i), self.up[i], self.rates[i])

    def begin(self, backend: Backend, prefill: int, budget: int, now: float) -> Attempt | None:
        """Count a request as dispatched to ``backend``; None when it is at max_in_flight
        (the one place the hard cap is enforced, at the moment of dispatch)."""
        i = backend.index
        load = self.board.fleet(i)  # one read of the rows, for the cap and the work ahead
        if load.in_flight >= backend.max_in_flight:
            return None
        long = prefill >= self.long_prefill_tokens
        ahead = load.pending_prefill + prefill
        self.board.add(i, 1, prefill, 1 if long else 0, budget)
        return Attempt(backend, prefill, budget, long, ahead, now)

    def first_byte(self, attempt: Attempt, now: float) -> float:
        """The backend's first byte came: its prefill is no longer pending. Returns TTFT."""
        ttft = now - attempt.dispatched_at
        if attempt.pending:
            attempt.pending = False
            i = attempt.backend.index
            self.board.add(i, 0, -attempt.prefill, -1 if attempt.long else 0, 0)
            if self.learned[i] and attempt.ahead >= _LEARN_MIN_TOKENS and ttft > 0:
                sample = min(max(attempt.ahead / ttft, _RATE_FLOOR), _RATE_CEILING)
                self.rates[i] += _LEARN_WEIGHT * (sample - self.rates[i])
        return ttft

    def end(self, attempt: Attempt, outcome: Outcome) -> None:
        """Record how the attempt ended: exactly once (a second call is a bug, ignored)."""
        if attempt.ended:
            return
        attempt.ended = True
        backend = attempt.backend
        if attempt.pending:  # no first byte came: its prefill is no longer pending either
            attempt.pending = False
            self.board.add(backend.index, -1, -attempt.prefill, -1 if attempt.long else 0,
                           -attempt.budget)  # fmt: skip
        else:
            self.board.add(backend.index, -1, 0, 0, -attempt.budget)
        self.outcomes[outcome.kind] += 1
        if outcome.kind is OutcomeKind.CONNECT_ERROR:
            self.up[backend.index] = False
        elif outcome.status is not None:
            self.up[backend.index] = True  # it answered
        for hook in self.hooks:
            hook(backend, outcome)

    def set_up(self, backend: Backend, up: bool) -> bool:
        """Probe result; True when it changed."""
        changed = self.up[backend.index] != up
        self.up[backend.index] = up
        return changed
