"""The capacity search of ``ctxroute bench --find-capacity`` (bench/capacity.py), over a
made-up fleet whose runs hold up to a known rate."""

from __future__ import annotations

from typing import Any

from ctxroute.bench.capacity import Capacity, capacity_lines, find_capacity, holds


def _run(rate: float, short: float, long: float, p99: float = 40.0) -> dict[str, Any]:
    return {
        "rate": rate,
        "short": {"goodput": short, "good_per_s": 0.8 * rate * short, "served_p99_ms": p99,
                  "refused": 0},
        "long": {"goodput": long, "good_per_s": 0.2 * rate * long, "refused": 0},
    }  # fmt: skip


def fleet_that_holds_up_to(limit: float) -> tuple[list[float], Any]:
    asked: list[float] = []

    def run_at(rate: float) -> dict[str, Any]:
        asked.append(rate)
        return _run(rate, 1.0, 1.0 if rate <= limit else 0.9)

    return asked, run_at


def test_it_steps_until_a_miss_then_refines_between_the_last_hold_and_the_miss() -> None:
    asked, run_at = fleet_that_holds_up_to(13.0)
    found = find_capacity(run_at, 8.0, 2.0)
    assert asked == [8.0, 10.0, 12.0, 14.0, 13.0]
    assert found.rate == 13.0 and len(found.runs) == 5
    asked, run_at = fleet_that_holds_up_to(12.5)
    assert find_capacity(run_at, 8.0, 2.0).rate == 12.0  # 13 missed: 12 stands
    asked, run_at = fleet_that_holds_up_to(5.0)
    found = find_capacity(run_at, 8.0, 2.0)
    assert found.rate is None and asked == [8.0]  # not even the first: no refinement
    asked, run_at = fleet_that_holds_up_to(1e9)
    assert find_capacity(run_at, 1.0, 1.0, max_steps=5).rate == 5.0 and asked[-1] == 5.0


def test_both_classes_must_keep_goodput() -> None:
    assert holds(_run(10, 0.99, 0.99))
    assert not holds(_run(10, 0.985, 1.0)) and not holds(_run(10, 1.0, 0.98))


def test_the_overload_run_is_judged_against_the_capacity_figure() -> None:
    at_capacity = _run(12.0, 1.0, 1.0, p99=50.0)
    over = _run(48.0, 0.3, 0.1, p99=80.0)
    lines = capacity_lines("router", Capacity(12.0, [at_capacity], over), 4.0)
    assert lines[0].endswith("router: 12 req/s")
    # 0.8 x 48 x 0.3 + 0.2 x 48 x 0.1 = 12.48 good/s: 1.04x; p99 80 / 50 = 1.6x
    assert "12.48 good requests/s = 1.04x the capacity figure" in lines[1]
    assert "= 1.60x its 50 ms at capacity" in lines[1]
    assert "capacity below 8" in capacity_lines("router", Capacity(None, [_run(8, 0, 0)]), 4)[0]
