"""Context budget -> pool, with a reason. Pure.

Budget = prompt tokens + max_tokens (the pool's ``default_max_tokens`` when the request
sets none). Routing uses the prompt's upper bound: the smallest window that certainly
holds the budget wins. Rejection uses the lower bound: a request is refused (400, vLLM's
wording) only when even its smallest possible size exceeds the largest window, so nothing
that would have fit is ever refused. Between the two, the request goes to the largest
window and the backend's own check decides. Never truncate, never rewrite max_tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from router.errors import context_too_long
from router.model import PoolChoice, TokenBounds


class PoolWindow(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def max_context_tokens(self) -> int: ...
    @property
    def default_max_tokens(self) -> int: ...


def budget(prompt_tokens: int, max_tokens: int | None, pool: PoolWindow) -> int:
    return prompt_tokens + (max_tokens if max_tokens is not None else pool.default_max_tokens)


def choose_pool(
    prompt: TokenBounds, max_tokens: int | None, pools_by_window: Sequence[PoolWindow]
) -> PoolChoice:
    """Smallest pool whose window holds the upper-bound budget; ContextTooLong if none can."""
    for pool in pools_by_window:
        need = budget(prompt.upper, max_tokens, pool)
        if need <= pool.max_context_tokens:
            return PoolChoice(pool.name, need, "fits")
    largest = pools_by_window[-1]
    window = largest.max_context_tokens
    # with no max_tokens the pool default is a routing hint, not a demand: one token must fit
    least = prompt.lower + (max_tokens if max_tokens is not None else 1)
    if least > window:
        raise context_too_long(window, prompt.lower, max_tokens)
    return PoolChoice(largest.name, min(budget(prompt.upper, max_tokens, largest), window),
                      "may not fit: the largest window decides")  # fmt: skip
