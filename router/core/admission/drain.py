"""How fast a queue drains, and the Retry-After that follows from it."""

from __future__ import annotations


class DrainMeter:
    """Requests finished per second over the last ``window_s`` seconds (or since the first,
    when that is more recent), in whole-second buckets: how fast room is made, so how fast
    a queue empties, for an honest Retry-After."""

    __slots__ = ("counts", "first_second", "seconds", "window")

    def __init__(self, window_s: int = 10) -> None:
        self.window = window_s
        self.counts = [0] * window_s
        self.seconds = [-1] * window_s
        self.first_second: int | None = None

    def record(self, now: float) -> None:
        second = int(now)
        slot = second % self.window
        if self.seconds[slot] != second:  # a new second (the first of all among them)
            if self.first_second is None:
                self.first_second = second
            self.seconds[slot] = second
            self.counts[slot] = 0
        self.counts[slot] += 1

    def rate(self, now: float) -> float:
        second = int(now)
        total = sum(
            c
            for c, s in zip(self.counts, self.seconds, strict=True)
            if second - self.window < s <= second
        )
        if self.first_second is None:
            return 0.0
        return total / min(self.window, max(1, second - self.first_second + 1))


def retry_after(ahead: int, drain_per_s: float, floor: float = 1.0, ceiling: float = 60.0) -> float:
    """Seconds until ``ahead`` requests have drained at the measured rate, bounded; the
    ceiling when nothing drained lately (a client should not come back at once)."""
    if drain_per_s <= 0:
        return ceiling
    return min(max((ahead + 1) / drain_per_s, floor), ceiling)
