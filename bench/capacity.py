"""``ctxroute bench --find-capacity``: the highest rate a fleet serves at SLO, and what
happens past it.

Capacity at SLO is the highest offered rate at which both classes keep goodput (requests
finished within their SLO) at or above ``GOOD``. The search steps the rate up from
``start`` by ``step`` until a run misses, then tries once halfway between the last rate
that held and the first that missed. Each rate is one seeded run of the same workload
shape, on fresh engines (``--duration`` long); a run's verdict is its own, so a lucky run
above an unlucky one is not taken as capacity: the search stops at the first miss.

With ``--overload F`` (default 4) it then offers F x capacity, and says whether the fleet
kept working under it: good requests per second over both classes against the capacity
figure (a router that admits only what it can serve on time keeps about as many good
requests as at capacity; one that admits everything serves everything late), and the
TTFT p99 of the short requests it served against the same figure at capacity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GOOD = 0.99  # goodput both classes must keep
MAX_STEPS = 12  # a bound on the search: rates past start + 12 steps are not tried


def holds(run: dict[str, Any]) -> bool:
    """Whether both classes of a run kept goodput at or above ``GOOD``."""
    return bool(run["short"]["goodput"] >= GOOD and run["long"]["goodput"] >= GOOD)


@dataclass
class Capacity:
    rate: float | None  # the highest rate that held; None: not even the first
    runs: list[dict[str, Any]]  # every run of the search, in the order run
    overload: dict[str, Any] | None = None  # the run at overload x capacity


def find_capacity(run_at: Callable[[float], dict[str, Any]], start: float, step: float,
                  max_steps: int = MAX_STEPS) -> Capacity:  # fmt: skip
    """Step the rate from ``start`` by ``step`` until a run misses, then refine once."""
    runs: list[dict[str, Any]] = []
    best: float | None = None
    missed: float | None = None
    rate = start
    for _ in range(max_steps):
        run = run_at(rate)
        runs.append(run)
        if not holds(run):
            missed = rate
            break
        best = rate
        rate = round(rate + step, 3)
    if missed is not None and best is not None and missed - best > 0.5:
        middle = round((best + missed) / 2, 3)
        run = run_at(middle)
        runs.append(run)
        if holds(run):
            best = middle
    return Capacity(best, runs)


def good_per_s(run: dict[str, Any]) -> float:
    """Requests finished within their SLO per second of arrivals, both classes."""
    return float(run["short"]["good_per_s"] + run["long"]["good_per_s"])


def capacity_lines(name: str, found: Capacity, factor: float) -> list[str]:
    """The capacity found and what the overload run says against it, in words."""
    if found.rate is None:
        return [f"{name}: no rate held goodput >= {GOOD}: capacity below {found.runs[0]['rate']:g}"]
    lines = [f"capacity at SLO (goodput >= {GOOD} in both classes), {name}: {found.rate:g} req/s"]
    over = found.overload
    if over is None:
        return lines
    at_capacity = next(r for r in found.runs if r["rate"] == found.rate)
    good = good_per_s(over)
    p99_1x = at_capacity["short"]["served_p99_ms"]
    p99_over = over["short"]["served_p99_ms"]
    lines.append(
        f"{name} at {factor:g}x capacity ({over['rate']:g} req/s): {good:.2f} good requests/s "
        f"= {good / found.rate:.2f}x the capacity figure; served short TTFT p99 "
        f"{p99_over:,.0f} ms = {p99_over / p99_1x:.2f}x its {p99_1x:,.0f} ms at capacity; "
        f"refused {over['short']['refused']} short, {over['long']['refused']} long"
    )
    return lines
