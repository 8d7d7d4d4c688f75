"""``ctxroute bench --tenants RATIO``: two tenants share one fleet, one sending RATIO times
the other's rate, together ``--rate``. Each sends the mixed workload with an API key of its
own (tenants ``heavy`` and ``light``, weight 1 each); the router runs with keys on.

Three runs on the same seeded traffic: the light tenant alone (what it gets with the fleet
to itself), then both tenants with fair shares on, then off. Per tenant the report shows
its short requests' TTFT p50/p95/p99 and its goodput (short and long within their SLOs).
With fair shares on, the light tenant should keep about what it had alone: at least 95%
of the goodput, a short TTFT p95 within 1.5x (the README's "fair shares" figures).

    ctxroute bench --fleet one-pool --tenants 10 --rate 24 --duration 45
    ctxroute bench --fleet one-pool --tenants 10 --rate 24 --replicas 2 --redis
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from ctxroute.bench.loadgen import Result
from ctxroute.bench.workload import Planned, Workload, plan_requests
from ctxroute.router.core.keys import digest, new_key
from rich import box
from rich.console import Console
from rich.table import Table

HEAVY, LIGHT = "heavy", "light"
# a run of the scenario: (label, tenants sending, fair shares on)
TenantRun = tuple[str, tuple[str, ...], bool]
RUNS: tuple[TenantRun, ...] = (
    ("light alone", (LIGHT,), True),
    ("fair shares on", (HEAVY, LIGHT), True),
    ("fair shares off", (HEAVY, LIGHT), False),
)


def plan_tenants(workload: Workload, ratio: float, sending: tuple[str, ...]) -> list[Planned]:
    """Each tenant's own seeded stream (the light one's is the same whether the heavy one
    sends or not), merged in time order and tagged with its tenant."""
    light_rate = workload.rate / (ratio + 1.0)
    rates = {LIGHT: light_rate, HEAVY: workload.rate - light_rate}
    seeds = {LIGHT: workload.seed, HEAVY: workload.seed + 7919}
    out: list[Planned] = []
    for tenant in sending:
        for p in plan_requests(replace(workload, rate=rates[tenant], seed=seeds[tenant])):
            p.tenant = tenant
            if p.session is not None:  # sessions apart: two apps do not share users
                p.session = f"{tenant}-{p.session}"
            out.append(p)
    out.sort(key=lambda p: p.at)
    return out


def keys_overlay(fair: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The router config's ``auth`` section (fresh keys for both tenants), and tenant ->
    key for the load generator."""
    keys = {tenant: new_key() for tenant in (HEAVY, LIGHT)}
    auth = {
        "keys": [{"sha256": digest(key), "tenant": tenant} for tenant, key in keys.items()],
        "fair_share": fair,
    }
    return {"auth": auth}, keys


def tenant_rows(results: list[Result], summarise: Any, short_slo_s: float, long_slo_s: float,
                duration_s: float) -> dict[str, dict[str, Any]]:  # fmt: skip
    """tenant -> its short and long ClassSummary (as dicts) and its goodput overall."""
    out: dict[str, dict[str, Any]] = {}
    for tenant in sorted({r.tenant for r in results if r.tenant}):
        mine = [r for r in results if r.tenant == tenant]
        short = summarise(mine, "short", short_slo_s, duration_s)
        long = summarise(mine, "long", long_slo_s, duration_s)
        good = short.goodput * short.n + long.goodput * long.n
        n = short.n + long.n
        out[tenant] = {
            "short": short.__dict__,
            "long": long.__dict__,
            "goodput": good / n if n else math.nan,
        }
    return out


def verdict(runs: list[dict[str, Any]]) -> list[str]:
    """The light tenant's figures with fair shares on (and off) against its own alone."""
    by = {run["scenario"]: run["tenants"].get(LIGHT) for run in runs}
    alone = by.get("light alone")
    lines = []
    for label in ("fair shares on", "fair shares off"):
        shared = by.get(label)
        if alone is None or shared is None:
            continue
        kept = shared["goodput"] / alone["goodput"] if alone["goodput"] else math.nan
        p95 = shared["short"]["ttft_p95_ms"] / alone["short"]["ttft_p95_ms"]
        ok = kept >= 0.95 and p95 <= 1.5
        lines.append(
            f"light tenant, {label}: keeps {kept:.1%} of its goodput alone, short TTFT p95 "
            f"{p95:.2f}x its own alone (target >= 95%, <= 1.5x: {'met' if ok else 'NOT met'})"
        )
    return lines


def print_tenant_report(runs: list[dict[str, Any]], title: str,
                        console: Console | None = None) -> None:  # fmt: skip
    console = console or Console()
    out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                padding=0)  # fmt: skip
    out.add_column("run / tenant", min_width=16)
    for col in ("short ok/shed/err", "short TTFT p50/p95/p99", "goodput s/l", "all"):
        out.add_column(col, justify="right", no_wrap=True)
    from ctxroute.bench.report import fmt_ms

    for run in runs:
        out.add_row(run["scenario"], style="bold")
        for tenant, row in run["tenants"].items():
            s, long = row["short"], row["long"]
            ttft = "/".join(fmt_ms(s[f"ttft_{q}_ms"]) for q in ("p50", "p95", "p99"))
            out.add_row(f"  {tenant} ({s['n'] + long['n']})",
                        f"{s['ok']}/{s['refused']}/{s['errors'] + s['stuck']}", ttft,
                        f"{s['goodput']:.3f}/{long['goodput']:.3f}",
                        f"{row['goodput']:.3f}")  # fmt: skip
    console.print(out)
    console.print("goodput: share of the tenant's requests finished within their SLO "
                  "(s/l: short/long; all: both)", style="dim")  # fmt: skip
    for line in verdict(runs):
        console.print(line)
