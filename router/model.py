"""Value types shared by the pure core and the edges."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TokenBounds:
    """A prompt's token count: ``lower <= true count <= upper`` (equal when exact), and the
    most likely count (``estimate``), used where an error costs balance, not correctness."""

    lower: int
    upper: int
    exact: bool
    estimate: int


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What routing needs to know of a request, read once from its body."""

    model: str
    prompt: TokenBounds
    max_tokens: int | None  # max_completion_tokens or max_tokens; None when absent
    stream: bool
    hash_key: str


@dataclass(slots=True)
class BackendState:
    """Live accounting of one backend, kept by the proxy, read by the planner.

    ``pending_prefill``: prompt tokens (estimated) sent that have not produced a first byte
    back yet.
    ``budget_in_flight``: prompt + max_tokens of every request in flight.
    """

    url: str
    pool: str
    model: str
    max_in_flight: int
    weight: int = 1
    in_flight: int = 0
    pending_prefill: int = 0
    budget_in_flight: int = 0
    up: bool = True  # last probe / passive check
    host: str = ""
    port: int = 0

    @property
    def load(self) -> int:
        """Token work in flight: what bounded-load hashing balances."""
        return self.pending_prefill + self.budget_in_flight


@dataclass(frozen=True, slots=True)
class PoolChoice:
    """Which pool a request goes to, and the budget that decided it."""

    pool: str
    budget: int
    reason: str


@dataclass(frozen=True, slots=True)
class RoutePlan:
    pool: str
    candidates: tuple[BackendState, ...]  # in the order they are tried
    budget: int
    reason: str
