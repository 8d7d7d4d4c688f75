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

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text


def _num(value: Any, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def _state(value: str) -> Text:
    style = {"closed": "green", "half_open": "yellow", "half-open": "yellow", "open": "red"}
    return Text(value, style=style.get(value, ""))


def _yes(flag: bool) -> Text:
    return Text("yes" if flag else "no", style="green" if flag else "red")


def render(status: dict[str, Any], url: str) -> RenderableType:
    parts: list[RenderableType] = [_head(status, url)]
    parts += (_pool_table(pool) for pool in status.get("pools", []))
    admission = status.get("admission", {})
    queues = admission.get("pools", {})
    if queues:
        parts.append(_admission_table(queues))
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


def _pool_table(pool: dict[str, Any]) -> Table:
    table = Table(
        title=f"pool {pool['name']} ({pool['model']}, window {pool['max_context_tokens']:,})",
        title_justify="left",
    )
    for column in ("backend", "up", "usable", "breaker", "memory", "KV", "running",
                   "waiting", "in flight", "pending prefill", "long", "budget",
                   "prefill tok/s"):  # fmt: skip
        table.add_column(column, justify="left" if column == "backend" else "right")
    for b in pool.get("backends", []):
        breaker = b.get("breaker", {})
        kv = b.get("kv_cache_usage")
        table.add_row(
            b["url"] + (" (drained)" if b.get("drained") else ""),
            _yes(bool(b.get("up"))),
            _yes(bool(b.get("usable"))),
            _state(str(breaker.get("error", "?"))),
            _state(str(breaker.get("memory", "?"))),
            Text(_num(kv, "{:.0%}"), style="red" if kv is not None and kv >= 0.85 else ""),
            _num(b.get("requests_running"), "{:.0f}"),
            _num(b.get("requests_waiting"), "{:.0f}"),
            _num(b.get("in_flight")),
            _num(b.get("pending_prefill_tokens")),
            _num(b.get("long_prefills_pending")),
            _num(b.get("budget_in_flight_tokens")),
            _num(b.get("prefill_tokens_per_s")),
        )
    return table


def _admission_table(queues: dict[str, Any]) -> Table:
    table = Table(title="admission", title_justify="left")
    for column in ("pool", "waiting", "held long", "admitted", "finished/s", "standing"):
        table.add_column(column, justify="left" if column == "pool" else "right")
    for name, q in queues.items():
        standing = [k for k, v in q.get("standing_queue", {}).items() if v]
        table.add_row(
            name,
            " ".join(f"{t}:{n}" for t, n in q.get("waiting", {}).items()),
            str(q.get("held_long", 0)),
            " ".join(f"{t}:{n}" for t, n in q.get("admitted_in_flight", {}).items()),
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
