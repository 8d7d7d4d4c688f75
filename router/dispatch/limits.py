"""A keyed request's rate limits on its way: the decision (``store/limits.py``) worded as
OpenAI's ``x-ratelimit-*`` headers, or the 429; and the settlement with the answer's real
usage once it has ended."""

from __future__ import annotations

from ctxroute.router.core.keys import Tenant
from ctxroute.router.core.ratelimit import LimitDecision, Quota
from ctxroute.router.errors import RateLimited
from ctxroute.router.observe.record import RequestRecord

Headers = tuple[tuple[str, str], ...]


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{round(seconds * 1000) if seconds > 0.0 else 0}ms"
    if seconds < 60.0:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:.0f}s"


def limit_headers(decision: LimitDecision) -> Headers:
    """OpenAI's six headers (three without a token limit); none when the decision was
    made without its quotas (an allowed request, with ``auth.limit_headers: refused``)."""
    # written out, not looped: these go on every answer to a limited key
    out: Headers = ()
    q: Quota | None = decision.requests
    if q is not None:
        out = (
            ("x-ratelimit-limit-requests", str(q.limit)),
            ("x-ratelimit-remaining-requests", str(q.remaining)),
            ("x-ratelimit-reset-requests", duration(q.reset_s)),
        )
    q = decision.tokens
    if q is not None:
        out += (
            ("x-ratelimit-limit-tokens", str(q.limit)),
            ("x-ratelimit-remaining-tokens", str(q.remaining)),
            ("x-ratelimit-reset-tokens", duration(q.reset_s)),
        )
    return out


def worded(decision: LimitDecision, tenant: Tenant) -> Headers:
    """The headers of an admitted request, or raises the 429 (with them)."""
    headers = limit_headers(decision)
    if not decision.allowed:
        per = "requests" if decision.refused_by == "requests" else "tokens"
        raise RateLimited(
            f"rate limit of tenant {tenant.name} reached: {per} per minute "
            f"(retry in {duration(decision.retry_after_s)})",
            retry_after=decision.retry_after_s,
            headers=headers,
        )
    return headers


def tokens_used(record: RequestRecord) -> int | None:
    """What an ended request used of its key's tokens, settled against its reservation: 0
    when no backend answered (the whole reservation back), None when the answer did not
    say its usage (the reservation stands)."""
    if record.status != 200 or record.first_byte_at is None:
        return 0
    if record.completion_tokens is None:
        return None
    return (record.prompt_tokens or 0) + record.completion_tokens
