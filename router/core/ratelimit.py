"""Per-key rate limits: requests and tokens per minute, by GCRA (the generic cell rate
algorithm). Pure: the clock is passed in; the same arithmetic runs in this process
(``LocalLimits``) and, for replicas sharing Redis, in one Lua script
(``router/store/redis_scripts.py`` ``RATE``), which the tests check against this one.

Why GCRA and not a sliding window: a bucket is one number (its theoretical arrival time,
``tat``), so one atomic script reads and writes both of a request's buckets (requests and
tokens) in one round trip, and the pace is smooth: there is no window edge at which twice
the limit passes. A key may run ``tolerance_s`` ahead of its pace (its burst), so over any
60 s it is admitted at most ``limit x (60 + tolerance_s) / 60`` plus one request's cost
(3 s of tolerance: within 5% of the limit).

Tokens are reserved on admission (prompt + max_tokens) and settled with the answer's real
usage (``settle``): a refund moves the bucket back, never below "now" (no credit banked).
A request costlier than the tolerance still passes when the bucket is not behind: the
bucket then owes it, and the next requests wait (the pace holds over time; no request is
refused forever for its size alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Rate:
    per_minute: int
    tolerance_s: float
    interval_s: float = field(init=False, repr=False)  # the pace: 60 / per_minute

    def __post_init__(self) -> None:
        # a field, not a property: read several times per keyed request
        object.__setattr__(self, "interval_s", 60.0 / self.per_minute)


# Quota and LimitDecision: made on every keyed request, so plain slots classes (a frozen
# dataclass's __init__ costs 2.5x as much); nothing changes them after they are made
@dataclass(slots=True)
class Quota:
    """What OpenAI's ``x-ratelimit-*`` headers say of one bucket after a decision."""

    limit: int
    remaining: int
    reset_s: float  # until the bucket is full again


@dataclass(slots=True)
class LimitDecision:
    allowed: bool
    retry_after_s: float  # 0 when allowed
    requests: Quota | None
    tokens: Quota | None
    refused_by: str | None = None  # "requests" or "tokens"


def admits(rate: Rate, debt_s: float) -> bool:
    """A bucket ``debt_s`` ahead of its pace takes one more request."""
    return debt_s <= rate.tolerance_s


def quota(rate: Rate, debt_s: float) -> Quota:
    room = rate.tolerance_s - debt_s
    remaining = int(room // rate.interval_s) + 1 if room >= 0 else 0
    return Quota(rate.per_minute, min(remaining, rate.per_minute), max(0.0, debt_s))


def decide(requests: Rate | None, tokens: Rate | None, req_debt_s: float, tok_debt_s: float,
           cost: int, quotas: bool = True) -> tuple[LimitDecision, float, float]:  # fmt: skip
    """The decision on a request costing ``cost`` tokens, given each bucket's debt (how
    far ``tat`` is ahead of now, 0 at the least); with each bucket's debt after it.
    ``quotas``: also when it is allowed (a refusal always carries them)."""
    # (admits() inlined: this runs on every keyed request)
    req_over = 0.0 if requests is None else req_debt_s - requests.tolerance_s
    tok_over = 0.0 if tokens is None else tok_debt_s - tokens.tolerance_s
    if req_over > 0.0 or tok_over > 0.0:
        retry, by = max((req_over, "requests"), (tok_over, "tokens"))
        allowed = False
    else:
        retry, by = 0.0, None
        allowed = True
        if requests is not None:
            req_debt_s += requests.interval_s
        if tokens is not None:
            tok_debt_s += cost * tokens.interval_s
    if allowed and not quotas:
        return LimitDecision(True, 0.0, None, None), req_debt_s, tok_debt_s
    decision = LimitDecision(
        allowed,
        retry,
        None if requests is None else quota(requests, req_debt_s),
        None if tokens is None else quota(tokens, tok_debt_s),
        by,
    )
    return decision, req_debt_s, tok_debt_s


class LocalLimits:
    """The buckets of this process: tenant -> (requests tat, tokens tat). Bounded by the
    number of tenants in the configuration (only configured keys reach it)."""

    __slots__ = ("tats",)

    def __init__(self) -> None:
        self.tats: dict[str, list[float]] = {}

    def take(self, tenant: str, requests: Rate | None, tokens: Rate | None, cost: int,
             now: float, quotas: bool = True) -> LimitDecision:  # fmt: skip
        tat = self.tats.get(tenant)
        if tat is None:
            tat = self.tats[tenant] = [now, now]
        decision, req_debt, tok_debt = decide(
            requests, tokens, max(0.0, tat[0] - now), max(0.0, tat[1] - now), cost, quotas
        )
        if decision.allowed:
            tat[0] = now + req_debt
            tat[1] = now + tok_debt
        return decision

    def settle(self, tenant: str, tokens: Rate, delta: int, now: float) -> None:
        """The answer used ``delta`` tokens more (or, negative, fewer) than reserved."""
        tat = self.tats.get(tenant)
        if tat is not None:
            tat[1] = max(now, tat[1] + delta * tokens.interval_s)
