"""Admission's settings: priority tiers and their reserves, per-class waiting limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ctxroute.router.core.longwork import LongWork


@dataclass(frozen=True, slots=True)
class ClassLimits:
    """Per request class (short, long): how long a request may wait at the router."""

    deadline_s: float  # default when the client sends no X-Request-Timeout
    max_wait_s: float  # the longest wait in the queue, whatever the deadline
    codel_target_s: float
    codel_interval_s: float


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    reserve: float = 0.0  # share of a pool's capacity kept for this tier and higher ones
    weight: float = 1.0  # its share of dispatches while tiers wait together


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    tiers: tuple[Tier, ...] = (Tier("high"), Tier("normal"), Tier("low"))  # highest first
    default_tier: int = 1
    aliases: Mapping[str, int] = field(default_factory=dict)  # header/body value -> tier
    max_queue: int = 512  # per pool
    short: ClassLimits = ClassLimits(30.0, 10.0, 0.025, 0.05)
    long: ClassLimits = ClassLimits(120.0, 60.0, 5.0, 5.0)
    # what is long work and how it is held: the router passes the planner's own rules
    work: LongWork = field(default_factory=lambda: LongWork(hold=True))
    shares: tuple[float, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        shares = tuple(1.0 - sum(t.reserve for t in self.tiers[:i]) for i in range(len(self.tiers)))
        object.__setattr__(self, "shares", shares)

    def tier_of(self, value: str | None) -> int:
        """The tier a header or body value names (by name, alias or index); unknown values
        and no value at all get the default tier."""
        if value is None:
            return self.default_tier
        key = value.strip().lower()
        for i, tier in enumerate(self.tiers):
            if tier.name == key:
                return i
        return self.aliases.get(key, self.default_tier)

    def allowed_share(self, tier: int) -> float:
        """The share of capacity a tier may fill: what the tiers above it reserve is theirs."""
        return self.shares[tier]
