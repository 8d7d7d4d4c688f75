"""KV room, per request: may one more request of its class go to an engine? Pure.

An engine's KV cache is *committed* to what it holds and what it was given since::

    committed = budgets in flight                (prompt + max_tokens of every request the
                                                  router has on it: what they will hold at
                                                  most, every process's, shared)
              + unaccounted                      (what the engine held at the last scrape
                                                  beyond the budgets in flight then)

which is the last scraped usage, plus the budgets dispatched since that scrape, minus the
budgets finished since, floored at the router's own reservations: the scrape sees traffic
that did not come through this router and prompts the router counted short; the
reservations see what a scrape cannot, the requests sent since and the tokens a running
request has yet to decode. A request fits when ``committed + its budget`` stays under its
class's mark of the cache: long work up to ``long`` (it holds its KV for seconds of
decoding, and a full cache makes vLLM preempt and recompute), short work up to ``short``,
near full (its need is small and it leaves within a second or two).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctxroute.router.model import BackendView


@dataclass(frozen=True, slots=True)
class KvMarks:
    long: float = 0.88
    short: float = 0.97

    def __post_init__(self) -> None:
        if not 0.0 < self.long <= self.short <= 1.0:
            raise ValueError(f"KV marks need 0 < long <= short <= 1, got {self.long}, {self.short}")

    def of(self, long: bool) -> float:
        return self.long if long else self.short


def committed(view: BackendView) -> int:
    """Tokens of the engine's KV cache taken, or promised to requests already sent."""
    return view.load.budget_in_flight + view.kv_unaccounted


def has_room(view: BackendView, need: int, mark: float) -> bool:
    """Whether ``need`` more tokens fit under ``mark`` of the cache (an engine whose size is
    not known yet always has room: the breakers watch it)."""
    size = view.kv_tokens
    return size is None or committed(view) + need <= size * mark


def unaccounted(usage: float, kv_tokens: int, reserved: int) -> int:
    """What a scrape found held (``usage`` x ``kv_tokens``) beyond the ``reserved`` budgets
    in flight at that moment; never negative (prefix sharing and requests that stopped
    early make an engine hold less than its budgets: the reservation stands). The gauge is
    the backend's to write: out of range it is clamped, NaN counts as nothing held."""
    if usage != usage:  # NaN
        return 0
    used = int(min(max(usage, 0.0), 1.0) * kv_tokens)
    return max(0, used - reserved)
