"""What ``ctxroute bench`` shows: progress while it runs (a bar on a terminal, a line every
few seconds otherwise), the results as a table that fits the terminal (80 columns
included), and with ``--plot`` a PNG of the TTFT distributions and of goodput against
the offered rate."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

PROGRESS_EVERY_S = 5.0


@contextmanager
def progress(label: str, total: int, stream: Any = None) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``. On a terminal a transient bar; otherwise (CI logs, a pipe) a
    line every ``PROGRESS_EVERY_S`` seconds and one at the end, so a long run is never
    silent."""
    stream = stream if stream is not None else sys.stdout
    if stream.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress("[progress.description]{task.description}", *columns,
                      transient=True) as bar:  # fmt: skip
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
        return
    started = time.monotonic()
    state = {"done": 0, "said": started}

    def advance(n: int) -> None:
        state["done"] += n
        now = time.monotonic()
        if now - state["said"] >= PROGRESS_EVERY_S:
            state["said"] = now
            print(f"{label}: {state['done']}/{total} requests ended after {now - started:.0f}s",
                  file=stream, flush=True)  # fmt: skip

    yield advance
    print(f"{label}: {state['done']}/{total} requests ended in "
          f"{time.monotonic() - started:.0f}s", file=stream, flush=True)  # fmt: skip


def run_name(run: dict[str, Any]) -> str:
    name = str(run["target"])
    if run.get("variant") not in ("admission", None):
        name += f" {run['variant']}"
    if run.get("workers") not in (1, None):
        name += f" x{run['workers']}"
    if run.get("replicas") not in (1, None):
        name += f" {run['replicas']} replicas" + (" +redis" if run.get("redis") else "")
    return name


def fmt_ms(v: float) -> str:
    if math.isinf(v):
        return "failed"
    if math.isnan(v):
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def table(runs: list[dict[str, Any]], title: str) -> Table:
    """A row naming each run, then one row per class; few columns, so that it fits 80."""
    out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                padding=0)  # fmt: skip
    names = [f"{run_name(run)} @ {run['rate']:g}/s" for run in runs]
    # the run's name on a row of its own: its column as wide as the names (up to a
    # point); the other headers wrap before a value is cut
    out.add_column("run / class", min_width=min(max(map(len, names), default=0), 28))
    for col in ("ok/shed/err", "TTFT ms p50/p95/p99", "ok p99", "goodput", "good/s"):
        out.add_column(col, justify="right", no_wrap=col.startswith(("ok", "TTFT")))
    for run, name in zip(runs, names, strict=True):
        out.add_row(name, style="bold")
        for kind in ("short", "long"):
            s = run[kind]
            ttft = "/".join(fmt_ms(s[f"ttft_{q}_ms"]) for q in ("p50", "p95", "p99"))
            out.add_row(f"  {kind} ({s['n']})", f"{s['ok']}/{s['refused']}/"
                        f"{s['errors'] + s['stuck']}", ttft, fmt_ms(s["served_p99_ms"]),
                        f"{s['goodput']:.3f}", f"{s['good_per_s']:.2f}")  # fmt: skip
    return out


def _engines_line(run: dict[str, Any]) -> str | None:
    """What the engines said of a run: preemptions and the prefix-cache hit rate."""
    said = []
    if run["preemptions"] is not None:
        said.append(f"{run['preemptions']:.0f} preemptions")
    if run["prefix_cache_hit_rate"] is not None:
        said.append(f"prefix-cache hit rate {run['prefix_cache_hit_rate']:.2f}")
    if not said:
        return None
    return f"{run_name(run)} @ {run['rate']:g}/s: " + ", ".join(said)


def print_report(runs: list[dict[str, Any]], title: str, console: Console | None = None,
                 rates_line: bool = True) -> None:  # fmt: skip
    """The table, the engines' figures and errors per run; with ``rates_line`` and several
    rates, the capacity at SLO among the rates tried."""
    console = console or Console()
    console.print(table(runs, title))
    console.print(
        "ok/shed/err: finished, refused by the router (429/503), failed or stuck; "
        "TTFT over every request (one that did not finish counts as infinitely "
        "late); ok p99: the TTFT p99 of those that finished",
        style="dim",
    )
    for line in filter(None, map(_engines_line, runs)):
        console.print(line)
    for run in runs:
        if run["errors"]:
            console.print(f"{run_name(run)} at {run['rate']:g} req/s: errors by kind: "
                          f"{run['errors']}")  # fmt: skip
    if rates_line and len({r["rate"] for r in runs}) > 1:
        for name, mine in _by_name(runs).items():
            good = [r["rate"] for r in mine
                    if r["short"]["goodput"] >= 0.99 and r["long"]["goodput"] >= 0.99]  # fmt: skip
            best = f"{max(good):g} req/s" if good else "below every rate tried"
            console.print(f"capacity at SLO (goodput >= 0.99 in both classes), {name}: {best}")


def _by_name(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run_name(run), []).append(run)
    return out


def plot(runs: list[dict[str, Any]], title: str, path: Path) -> None:
    """A PNG: the TTFT distribution (CDF over every request, so the curve of a run that
    lost requests stays below 1) per class and run, and, over several rates, goodput
    against the offered rate per class and run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    rates = sorted({r["rate"] for r in runs})
    panels = 3 if len(rates) > 1 else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    for ax, kind in zip(axes[0][:2], ("short", "long"), strict=True):
        for run in runs:
            samples = sorted(run.get("ttft_ms", {}).get(kind, []))
            n = run[kind]["n"]
            if not samples or not n:
                continue
            ys = [(i + 1) / n for i in range(len(samples))]
            label = run_name(run) + (f" @ {run['rate']:g}/s" if len(rates) > 1 else "")
            ax.step(samples, ys, where="post", label=label)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("time to first token (ms)")
        ax.set_ylabel("share of requests")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{kind} requests: TTFT CDF")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    if len(rates) > 1:
        ax = axes[0][2]
        for name, mine in _by_name(runs).items():
            mine = sorted(mine, key=lambda r: r["rate"])
            for kind, style in (("short", "-o"), ("long", "--s")):
                ax.plot([r["rate"] for r in mine], [r[kind]["goodput"] for r in mine], style,
                        label=f"{name}, {kind}")  # fmt: skip
        ax.set_xlabel("offered rate (requests/s)")
        ax.set_ylabel("goodput (share within SLO)")
        ax.set_ylim(0, 1.05)
        ax.set_title("goodput against rate")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
