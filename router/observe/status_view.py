"""``ctxroute status URL``: a running router's ``/status`` as terminal tables (rich).

``render`` is pure (the status JSON in, rich renderables out); ``run`` fetches and prints,
once or every ``--watch`` seconds until interrupted.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text


def _num(value: Any, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def _compact(value: Any) -> str:
    """A count in at most five characters: 950, 12.3k, 1.2M."""
    if value is None:
        return "-"
    n = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            scaled = n / limit
            return f"{scaled:.1f}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{n:.0f}"


def _labels(urls: list[str]) -> dict[str, str]:
    """The part of each backend URL that tells it from the others: ``:8101`` when every
    backend is on one host, ``host:port`` otherwise (never a bare ``http://...`` that a
    narrow terminal cuts down to the same ``ht…`` for all)."""
    hosts = {u.removeprefix("http://").rpartition(":")[0] for u in urls}
    if len(hosts) == 1:
        return {u: ":" + u.rpartition(":")[2] for u in urls}
    return {u: u.removeprefix("http://") for u in urls}


def _state(b: dict[str, Any]) -> Text:
    """One word or a few for what keeps a backend from new requests; ``ok`` when nothing."""
    breaker = b.get("breaker", {})
    problems = []
    if not b.get("up"):
        problems.append("down")
    if b.get("drained"):
        problems.append("drained")
    error = str(breaker.get("error", "closed"))
    if error != "closed":
        problems.append(error.replace("_", "-"))
    if breaker.get("memory") == "open":
        problems.append("kv-open")
    room = b.get("kv_room_tokens") or {}
    if room.get("short", 1) <= 0:
        problems.append("kv-full")  # no room even for short work
    elif room.get("long", 1) <= 0:
        problems.append("kv-long-full")  # room for short work only
    if b.get("skew"):
        problems.append("skew")  # serves, but differs from its pool (/status says how)
    if not problems:
        return Text("ok", style="green")
    mild = set(problems) <= {"half-open", "skew"}
    return Text(",".join(problems), style="yellow" if mild else "red")


def _by_tier(counts: dict[str, int]) -> str:
    parts = [f"{tier}:{n}" for tier, n in counts.items() if n]
    return " ".join(parts) or "0"


def render(status: dict[str, Any], url: str) -> RenderableType:
    parts: list[RenderableType] = [_head(status, url)]
    pools = status.get("pools", [])
    labels = _labels([b["url"] for p in pools for b in p.get("backends", [])])
    parts += (_pool_table(pool, labels) for pool in pools)
    admission = status.get("admission", {})
    queues = admission.get("pools", {})
    if queues:
        parts.append(_admission_table(queues))
    parts.append(
        Text(
            "prefill: prompt tokens sent without a first token yet; budget: prompt "
            "+ max_tokens in flight; tok/s: prefill rate",
            style="dim",
        )
    )
    refused = admission.get("refused") or {}
    outcomes = {k: v for k, v in (status.get("outcomes") or {}).items() if v}
    parts.append(Text(
        "refused: " + (", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none")
        + "   attempts: " + (", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
                             or "none")))  # fmt: skip
    return Group(*parts)


def _head(status: dict[str, Any], url: str) -> Text:
    store = status.get("store", {})
    overload = status.get("admission", {}).get("overload", {})
    head = Text.assemble(
        (f"{url}", "bold"),
        f"  pid {status.get('pid')}  store {store.get('kind')} ",
        ("up" if store.get("up") else "DOWN", "green" if store.get("up") else "bold red"),
        f"  in flight {status.get('in_flight', 0)}",
        f"  loop lag {overload.get('loop_lag_ms', 0)} ms",
    )
    if overload.get("shed_tiers"):
        head.append(f"  shedding: {', '.join(overload['shed_tiers'])}", style="bold red")
    return head


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A compact table: no side borders, one space between columns, headers that wrap
    rather than widen a column, so that it fits 80 columns."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)  # fmt: skip
    for i, column in enumerate(columns):
        # the first column names the row: never cut; the others fold rather than hide
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0,
                         overflow="fold")  # fmt: skip
    return table


def _pool_table(pool: dict[str, Any], labels: dict[str, str]) -> Table:
    table = _table(
        f"pool {pool['name']} ({pool['model']}, window {pool['max_context_tokens']:,})",
        ("backend", "state", "KV", "run/wait", "inflight", "prefill", "long", "budget",
         "tok/s"),
    )  # fmt: skip
    for b in pool.get("backends", []):
        kv = b.get("kv_cache_usage")
        running, waiting = b.get("requests_running"), b.get("requests_waiting")
        table.add_row(
            labels.get(b["url"], b["url"]),
            _state(b),
            Text(_num(kv, "{:.0%}"), style="red" if kv is not None and kv >= 0.85 else ""),
            "-" if running is None else f"{running:.0f}/{_num(waiting, '{:.0f}')}",
            _num(b.get("in_flight")),
            _compact(b.get("pending_prefill_tokens")),
            _num(b.get("long_prefills_pending")),
            _compact(b.get("budget_in_flight_tokens")),
            _compact(b.get("prefill_tokens_per_s")),
        )
    return table


def _admission_table(queues: dict[str, Any]) -> Table:
    table = _table("admission", ("pool", "waiting", "held long", "admitted", "finished/s",
                                 "standing"))  # fmt: skip
    for name, q in queues.items():
        standing = [k for k, v in q.get("standing_queue", {}).items() if v]
        table.add_row(
            name,
            _by_tier(q.get("waiting", {})),
            str(q.get("held_long", 0)),
            _by_tier(q.get("admitted_in_flight", {})),
            str(q.get("finished_per_s", 0)),
            ", ".join(standing) or "-",
        )
    return table


def fetch(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=timeout_s) as response:
        data = json.loads(response.read())
    if not isinstance(data, dict):
        raise ValueError("/status did not answer a JSON object")
    return data


def _frame(url: str) -> tuple[RenderableType, bool]:
    try:
        return render(fetch(url), url), True
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Text(f"ctxroute status: cannot read {url}/status: {reason}", style="red"), False


def run(url: str, watch_s: float | None, console: Console | None = None) -> int:
    console = console or Console()
    if watch_s is None:
        frame, ok = _frame(url)
        (console.print if ok else _to_stderr)(frame)
        return 0 if ok else 1
    try:
        with Live(_frame(url)[0], console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(watch_s)
                live.update(_frame(url)[0])
    except KeyboardInterrupt:
        return 0


def _to_stderr(frame: RenderableType) -> None:
    Console(file=sys.stderr).print(frame)
