"""Why a request went where it went, as one compact line. Pure.

The same words go in the answer's ``x-ctxroute-route`` header and the request's log line:

    preferred=low-latency (fits); budget=1536 estimated, window 16384; wait=3ms;
    owner=yes; held=0ms; attempts=1

* ``preferred``: the smallest pool whose window holds the request's likely budget, and
  why ("fits", or "may not fit" when only the largest window might and the backend's own
  check decides); ", spilled to P" when another pool's backend answered;
* ``budget``: prompt + max_tokens as routed, whether the prompt count is exact (a
  tokenizer) or estimated, and the answering pool's window;
* ``wait``: the answering backend's estimated wait for its first token when planned;
* ``owner``: whether the answering backend is the request's hash owner (its prefix cache),
  and if not, why it was passed over: its estimated wait, its bounded load, no KV room, a
  long prefill pending on it, a breaker, KV cache pressure, a drain, down, max_in_flight,
  or an attempt on it that failed;
* ``held``: time held at the router by admission; ``attempts``: backends tried.
"""

from __future__ import annotations

from ctxroute.router.model import Bypass, RoutePlan


def bypass_words(plan: RoutePlan) -> str:
    """Why the plan passed over its hash owner, in words ("" when it did not)."""
    if plan.bypass is Bypass.WAIT:
        return f"wait {plan.owner_wait_ms:.0f}ms"
    return str(plan.bypass)


def owner_note(plan: RoutePlan, answered_by: str, unusable_why: str = "") -> str:
    """``yes``, or ``no (why)``. ``unusable_why`` says what made the owner unusable (a
    breaker, memory pressure or a drain) when the plan says only that it was."""
    if answered_by == plan.owner:
        return "yes"
    if plan.bypass is Bypass.NONE:
        why = "its attempt failed"  # it was first, and another backend answered
    elif plan.bypass is Bypass.UNUSABLE:
        why = unusable_why or str(plan.bypass)
    else:
        why = bypass_words(plan)
    return f"no ({why})"


def route_line(
    plan: RoutePlan,
    answered_pool: str,
    budget: int,
    exact: bool,
    window: int,
    wait_ms: float | None,
    owner: str,
    held_s: float,
    attempts: int,
) -> str:
    """The ``x-ctxroute-route`` value (ASCII: pool names are checked at config load).
    ``budget`` and ``window``: the answering pool's; ``wait_ms``: None for a backend that
    was planned as down."""
    fit = "fits" if plan.fits else "may not fit"
    spill = "" if answered_pool == plan.preferred else f", spilled to {answered_pool}"
    count = "exact" if exact else "estimated"
    wait = "unknown (was down)" if wait_ms is None else f"{int(wait_ms + 0.5)}ms"
    return (
        f"preferred={plan.preferred} ({fit}){spill}; budget={budget} {count}, "
        f"window {window}; wait={wait}; owner={owner}; held={int(held_s * 1000 + 0.5)}ms; "
        f"attempts={attempts}"
    )
