"""The standing-queue detector of one queue class (CoDel, Nichols and Jacobson 2012)."""

from __future__ import annotations


class Codel:
    """A standing queue starts once, for ``interval``, every waiter dispatched had waited over
    ``target``, or the head of the queue has been waiting over it. While it lasts, waits
    are cut to the target and newcomers are refused on arrival when the queue ahead would
    not go within it: so the queue is short, the waits of those dispatched say nothing of
    the load (they are short by construction), and the queue empties often. It ends only
    when the cut has refused nobody for a whole ``interval``: the load fell below what the
    fleet serves. Ending it on a short wait or an empty queue instead made it flap under
    sustained overload: the queue grew back to the deadline in the next interval, and
    those served had waited nearly all of it.

    ``standing`` is the state as last updated; ``update(now)`` ends a standing queue whose
    interval without a cut has passed; ``standing_at(now)`` asks without changing anything.
    """

    __slots__ = ("above_since", "cut_at", "cut_tiers", "interval", "standing", "target")

    def __init__(self, target: float, interval: float) -> None:
        self.target = target
        self.interval = interval
        self.above_since: float | None = None  # first dispatch over target in a row
        self.standing = False
        self.cut_at = 0.0  # when the cut last refused a waiter
        self.cut_tiers: dict[int, float] = {}  # tier -> when the cut last refused one of it

    def update(self, now: float) -> None:
        """End the standing queue once the cut has refused nobody for an interval."""
        if self.standing and now - self.cut_at >= self.interval:
            self.standing = False
            self.above_since = None
            self.cut_tiers.clear()

    def standing_at(self, now: float) -> bool:
        """Whether a standing queue lasts at ``now`` (a read: nothing changes)."""
        return self.standing and now - self.cut_at < self.interval

    def dispatched(self, waited: float, now: float) -> None:
        """A waiter left the queue for a backend after ``waited`` seconds."""
        self.update(now)
        if self.standing:
            return
        if waited <= self.target:
            self.above_since = None
        elif self.above_since is None:
            self.above_since = now
        elif now - self.above_since >= self.interval:
            self.standing = True
            self.cut_at = now

    def head_waited(self, waited: float, now: float) -> None:
        """The head of the class (the next it would serve) has waited ``waited`` so far. A
        queue that nothing leaves (every backend full) dispatches nobody, so dispatches
        alone would never show it standing: the head's wait counts too, from when it
        passed the target."""
        if self.standing or waited <= self.target:
            return
        if self.above_since is None:
            self.above_since = now - (waited - self.target)
        if now - self.above_since >= self.interval:
            self.standing = True
            self.cut_at = now

    def cut(self, now: float, tier: int) -> None:
        """The cut refused a waiter (or a newcomer) of ``tier`` that its deadline alone
        would have let wait, while others of its class waited: the load is still over what
        is served."""
        if self.standing:
            self.cut_at = now
            self.cut_tiers[tier] = now

    def cut_below(self, tier: int, now: float) -> bool:
        """Whether the cut refused a tier lower than ``tier`` within the interval. (A lower
        tier cut back leaves the queue to the higher ones for a moment; the higher ones are
        not cut for that.)"""
        return any(t > tier and now - at < self.interval for t, at in self.cut_tiers.items())

    def emptied(self) -> None:
        if not self.standing:
            self.above_since = None

    def allowed_wait(self, limit: float, now: float) -> float:
        self.update(now)
        return min(limit, self.target) if self.standing else limit
