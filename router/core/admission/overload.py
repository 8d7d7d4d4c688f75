"""The router's own health as a decision: which priority tiers to shed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class OverloadGuard:
    """Event-loop lag and resident memory against their limits. ``sustain`` checks in a row
    over a limit shed one more tier, lowest first (never the highest); each check under
    both limits sheds one fewer. One slow check (the host busy for a moment) sheds
    nothing."""

    tiers: int
    max_lag_s: float | None
    max_rss_bytes: int | None
    sustain: int = 3
    level: int = 0  # how many of the lowest tiers are shed
    lag_s: float = 0.0
    rss_bytes: int = 0
    over_in_a_row: int = 0

    def observe(self, lag_s: float, rss_bytes: int) -> None:
        self.lag_s = lag_s
        self.rss_bytes = rss_bytes
        over = (self.max_lag_s is not None and lag_s > self.max_lag_s) or (
            self.max_rss_bytes is not None and rss_bytes > self.max_rss_bytes
        )
        if over:
            self.over_in_a_row += 1
            if self.over_in_a_row >= self.sustain:
                self.over_in_a_row = 0
                self.level = min(self.level + 1, self.tiers - 1)
        else:
            self.over_in_a_row = 0
            if self.level:
                self.level -= 1

    def sheds(self, tier: int) -> bool:
        return tier >= self.tiers - self.level

    def shed_tiers(self) -> range:
        """The tier indices shed now (empty when none)."""
        return range(self.tiers - self.level, self.tiers)
