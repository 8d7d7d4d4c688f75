"""Tiers share a pool by weight while they wait together (stride scheduling): each tier
has a pass that grows by 1/weight for every request of it dispatched, and the waiting
tier with the lowest pass goes next. A higher tier (larger weight) goes more often; a
lower tier still goes, at its share: slowed, never starved. Pure.

A tier that starts waiting after a quiet spell resumes at the current virtual time, not
at the pass it had: it cannot bank turns it did not take.
"""

from __future__ import annotations

from collections.abc import Sequence


class TierShares:
    __slots__ = ("passes", "steps", "vtime")

    def __init__(self, weights: Sequence[float]) -> None:
        self.steps = tuple(1.0 / w for w in weights)
        self.passes = [0.0] * len(weights)
        self.vtime = 0.0

    def key(self, tier: int) -> tuple[float, int]:
        """The order of ``tier`` among the waiting ones: lowest first (ties: the higher
        tier)."""
        return (max(self.passes[tier], self.vtime), tier)

    def served(self, tier: int) -> None:
        start = max(self.passes[tier], self.vtime)
        self.vtime = start
        self.passes[tier] = start + self.steps[tier]

    def ahead(self, tier: int, waiting: Sequence[int]) -> float:
        """Dispatches before a newcomer of ``tier`` goes, with ``waiting[t]`` requests of
        each tier ``t`` waiting ahead of it in its own tier or beside it in others: its own
        tier's, and of every other tier what that tier's weight gives it meanwhile."""
        own = waiting[tier]
        turns = (own + 1) * self.steps[tier]
        total = float(own)
        for other, n in enumerate(waiting):
            if other != tier and n:
                total += min(n, turns / self.steps[other])
        return total
