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

from router.model import RoutePlan

_INF = float("inf")


def owner_note(plan: RoutePlan, answered_by: str, unusable_why: str = "") -> str:
    """``yes``, or ``no (why)``. ``unusable_why`` says what made the owner unusable (a
    breaker, memory pressure or a drain) when the plan says only "unusable"."""
    if answered_by == plan.owner:
        return "yes"
    why = plan.bypass
    if not why:
        why = "its attempt failed"  # it was first, and another backend answered
    elif why == "unusable":
        why = unusable_why or why
    return f"no ({why})"


def route_line(plan: RoutePlan, answered_pool: str, budget: int, exact: bool, window: int,
               wait_ms: float, owner: str, held_s: float, attempts: int) -> str:  # fmt: skip
    """The ``x-ctxroute-route`` value (ASCII: pool names are checked at config load).
    ``budget`` and ``window``: the answering pool's."""
    fit = "fits" if plan.why and plan.why[0][:4] == "fits" else "may not fit"
    spill = "" if answered_pool == plan.preferred else f", spilled to {answered_pool}"
    count = "exact" if exact else "estimated"
    # whole milliseconds as int(x + 0.5): a float format spec costs about 3x as much
    wait = f"{int(wait_ms + 0.5)}ms" if wait_ms != _INF else "unknown (was down)"
    return (f"preferred={plan.preferred} ({fit}){spill}; budget={budget} {count}, "
            f"window {window}; wait={wait}; owner={owner}; held={int(held_s * 1000 + 0.5)}ms; "
            f"attempts={attempts}")  # fmt: skip
