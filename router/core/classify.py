"""Context budget -> the pools that can hold a request, smallest window first. Pure.

Budget = prompt tokens + max_tokens (the pool's ``default_max_tokens`` when the request
sets none). Three counts of the prompt decide three different things:

* the likely count (``estimate``) decides which pools are eligible: routing by the upper
  bound sent a 5,011-token prompt to the high-memory pool though it fits an 8k window;
* when a backend then answers vLLM's context-length 400 before any byte of an answer
  (the likely count was short of the truth), the proxy retries on a larger window: it
  costs the backend milliseconds to refuse, and nothing is truncated;
* the lower bound alone decides a rejection at the router (400 in vLLM's wording): a
  request is refused only when even its smallest possible size exceeds the largest
  window, so nothing that would have fit is ever refused.

Between the two (the likely budget fits no window, the smallest possible one does), the
request goes to the largest window and the backend's own check decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from ctxroute.router.errors import context_too_long
from ctxroute.router.model import TokenBounds, fit_phrase


class PoolWindow(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def max_context_tokens(self) -> int: ...
    @property
    def default_max_tokens(self) -> int: ...


def budget(prompt_tokens: int, max_tokens: int | None, pool: PoolWindow) -> int:
    return prompt_tokens + (max_tokens if max_tokens is not None else pool.default_max_tokens)


class Eligibility(NamedTuple):
    """The pools a request may go to (smallest window first, the first is preferred), the
    likely budget in each, and why."""

    pools: tuple[int, ...]  # indices into the pools passed in
    budgets: tuple[int, ...]
    fits: bool  # the first pool surely holds the likely budget (else the backend decides)
    first: str  # the first pool's name

    @property
    def reason(self) -> str:
        return fit_phrase(self.fits, self.first)


def eligible_pools(
    prompt: TokenBounds, max_tokens: int | None, pools_by_window: Sequence[PoolWindow]
) -> Eligibility:
    """Pools whose window holds the likely budget; ContextTooLong if none surely can."""
    indices: list[int] = []
    budgets: list[int] = []
    for i, pool in enumerate(pools_by_window):
        need = budget(prompt.estimate, max_tokens, pool)
        if need <= pool.max_context_tokens:
            indices.append(i)
            budgets.append(need)
    if indices:
        first = pools_by_window[indices[0]]
        return Eligibility(tuple(indices), tuple(budgets), True, first.name)
    last = len(pools_by_window) - 1
    largest = pools_by_window[last]
    window = largest.max_context_tokens
    # with no max_tokens the pool default is a routing hint, not a demand: one token must fit
    least = prompt.lower + (max_tokens if max_tokens is not None else 1)
    if least > window:
        raise context_too_long(window, prompt.lower, max_tokens)
    need = min(budget(prompt.estimate, max_tokens, largest), window)
    return Eligibility((last,), (need,), False, largest.name)
