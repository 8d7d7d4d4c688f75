"""Prometheus metrics, prefix ``ctxroute_`` (never ``vllm:``: those are the engines').

Two kinds, for two costs:

* per request, observed once when the request ends (``Metrics.observe``) into plain
  integers per pool (``Buckets``), exposed as families at scrape time: requests by
  status class, TTFT and latency from arrival at the router, time held by admission,
  prompt and completion tokens, context utilisation (budget / window), finish reasons,
  retries, client disconnects and the tokens they wasted, the router's own refusals by
  reason and tier;
* the router's state, read when Prometheus scrapes (``families.StateCollector``, from the
  read model), costing the request path nothing: in-flight, pending prefill and budget per
  backend (the fleet-wide view), queue depth and admitted requests per pool and tier,
  attempt outcomes, breaker states, the backends' own KV usage / running / waiting as last
  probed, Redis reachability and event-loop lag.

Label sets are bounded: pools, backends, status classes, tiers, reasons and outcome kinds
all come from the config or from enums, never from request content.
"""

from __future__ import annotations

import mmap
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from ctxroute.router.core.breaker import BreakerState
from ctxroute.router.model import RULES, OutcomeKind
from ctxroute.router.observe.families import RequestCollector, StateCollector
from ctxroute.router.observe.record import RequestRecord
from ctxroute.router.observe.snapshot import RouterState
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from ctxroute.router.config import RouterConfig

# 5 ms to 60 s: a short chat's first token and a 60k-token document's
SECONDS: Final = (
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    7.5,
    10.0,
    15.0,
    30.0,
    60.0,
)
TOKENS: Final = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
SHARE: Final = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
_STATUS_CLASS: Final = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_BREAKER_VALUE: Final = {
    BreakerState.CLOSED: 0.0,
    BreakerState.HALF_OPEN: 1.0,
    BreakerState.OPEN: 2.0,
}
FINISH_REASONS: Final = ("stop", "length", "abort", "tool_calls", "error")


_RULE_INDEX: Final = {rule: i for i, rule in enumerate(RULES)}


class Buckets:
    """A histogram's counts, kept as plain integers: ``Metrics.observe`` adds to them with
    one ``bisect`` and two additions (prometheus-client's ``Histogram.observe`` takes a
    lock per bucket it touches, about 0.9 us, ten times this); exposed as a histogram
    family at scrape time."""

    __slots__ = ("bounds", "counts", "les", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # the "le" label values, written as prometheus-client writes them
        self.les = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        self.counts = [0] * (len(bounds) + 1)  # the last one: above the largest bound
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family_samples(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative buckets (``le``, count) ending with +Inf, and the sum."""
        out: list[tuple[str, float]] = []
        running = 0
        for le, count in zip(self.les, self.counts, strict=False):
            running += count
            out.append((le, running))
        out.append(("+Inf", running + self.counts[-1]))
        return out, self.total


RECENT_ANSWERS = 512
RECENT_S = 60.0


class PoolStats:
    """One pool's per-request figures (its label value is the pool's name)."""

    __slots__ = ("completion", "context", "disconnects", "finish", "latency", "prompt",
                 "queued", "recent", "retries", "status", "ttft", "wasted")  # fmt: skip

    def __init__(self) -> None:
        self.ttft = Buckets(SECONDS)
        # (end time, TTFT) of the last answers, for /status and the dashboard: this
        # process's own, never summed or exported (Prometheus has the histogram)
        self.recent: deque[tuple[float, float]] = deque(maxlen=RECENT_ANSWERS)
        self.latency = Buckets(SECONDS)
        self.queued = Buckets(SECONDS)
        self.prompt = Buckets(TOKENS)
        self.completion = Buckets(TOKENS)
        self.context = Buckets(SHARE)
        self.status = dict.fromkeys(("0", *_STATUS_CLASS.values()), 0)
        self.finish = dict.fromkeys((*FINISH_REASONS, "other"), 0)
        self.retries = 0
        self.disconnects = 0
        self.wasted = 0


class MetricsShare:
    """``rows`` rows of float64 cells in a mapping made before ``serve --workers`` forks:
    each worker writes its own row (``Metrics.flush``), a scrape of any worker sums them."""

    def __init__(self, shared: mmap.mmap, rows: int, row: int, size: int) -> None:
        if len(shared) < rows * size * 8:
            raise ValueError("the shared mapping is smaller than the metrics rows")
        cells = memoryview(shared).cast("d")
        self.size = size
        self.rows = [cells[r * size : (r + 1) * size] for r in range(rows)]
        self.mine = self.rows[row]

    @staticmethod
    def shared_memory(rows: int, size: int) -> mmap.mmap:
        return mmap.mmap(-1, max(8, rows * size * 8))


SHED_REASONS: Final = ("queue_full", "deadline", "overload", "no_backend", "other")
_HISTOGRAM_ATTRS: Final = ("ttft", "latency", "queued", "prompt", "completion", "context")


# a tenant's figures, in this order: requests by status class (0: the client left first),
# requests refused by its rate limits, prompt and completion tokens
TENANT_FIGURES: Final = ("0", "2xx", "4xx", "5xx", "rate_limited", "prompt", "completion")
OTHER_TENANT: Final = "other"  # a tenant whose keys arrived by a reload after the start
_TENANT_STATUS: Final = {2: 1, 4: 2, 5: 3}  # status // 100 -> its place in TENANT_FIGURES


class Metrics:
    def __init__(self, pools: list[str], tiers: list[str], tenants: Sequence[str] = (),
                 backends: Sequence[tuple[str, str]] = (),
                 pool_models: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.registry = CollectorRegistry(auto_describe=True)
        self.pool_models = dict(pool_models or {})  # pool -> its model (the metrics' label)
        self.pool_names = list(pools)
        self.tiers = list(tiers)
        self.tenant_names = list(tenants)
        self.backend_labels = list(backends)  # (pool, url) of each backend, by index
        self.pools = {pool: PoolStats() for pool in pools}
        # counters and gauges kept elsewhere in this process (the ledger's attempt outcomes,
        # the store's breaker openings, the gate's admitted requests), carried in the same
        # shared rows so that with serve --workers a scrape of any worker sums them all
        self.outcomes = [0] * len(OutcomeKind)
        self.openings = [0] * len(self.backend_labels)
        self.admitted = {pool: [0] * len(tiers) for pool in pools if pool}
        self._sources: tuple[dict[OutcomeKind, int], list[int], dict[str, list[int]]] | None = None
        # tenant -> its TENANT_FIGURES; none without keys. Label values fixed at start (the
        # layout of a shared row may not change while workers run)
        self.tenants: dict[str, list[int]] = {
            t: [0] * len(TENANT_FIGURES) for t in ([*tenants, OTHER_TENANT] if tenants else ())
        }
        # the router's own refusals: (pool, reason, tier) -> count, every known combination
        # present from the start (a rate() over a series that appears late misses its first)
        self.shed: dict[tuple[str, str, str], int] = {
            (pool, reason, tier): 0 for pool in pools for reason in SHED_REASONS for tier in tiers
        }
        # prompt-injection indicators: (rule, pool) -> hits; tenant -> hits per rule
        self.indicators: dict[tuple[str, str], int] = {(r, p): 0 for r in RULES for p in pools}
        self.tenant_indicators = {t: [0] * len(RULES) for t in self.tenants}
        self.share: MetricsShare | None = None

    @classmethod
    def for_config(cls, config: RouterConfig) -> Metrics:
        """The label values are the config's: pools (and "" for requests refused before
        one was known) and priority tiers. Every process of a server agrees on them."""
        backends = [(p.name, b.url) for p in config.pools for b in p.backends]
        return cls(["", *(p.name for p in config.pools)], [t.name for t in config.admission.tiers],
                   metric_tenants(config), backends,
                   {p.name: p.model for p in config.pools})  # fmt: skip

    def follow(self, outcomes: dict[OutcomeKind, int], openings: list[int],
               admitted: dict[str, list[int]]) -> None:  # fmt: skip
        """Read these figures of this process (kept by their owners, updated in place)."""
        self._sources = (outcomes, openings, admitted)

    def _refresh(self) -> None:
        if self._sources is not None:
            outcomes, openings, admitted = self._sources
            self.outcomes = [outcomes[kind] for kind in OutcomeKind]
            self.openings = list(openings)
            self.admitted = {pool: list(counts) for pool, counts in admitted.items()}

    def recent_ttft(self, pool: str, now: float) -> dict[str, float | int | None]:
        """TTFT percentiles (ms) of the pool's answers through this process that ended in
        the last ``RECENT_S``."""
        values = sorted(v for t, v in self.pools[pool].recent if now - t <= RECENT_S)
        n = len(values)
        if not n:
            return {"answers": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}

        def at(q: float) -> float:
            return round(values[min(n - 1, int(q * n))] * 1000, 1)

        return {"answers": n, "p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99)}

    def watch(self, state: Callable[[], RouterState]) -> None:
        """Expose the per-request figures and the router's state (read when Prometheus
        scrapes, through ``state``) from this registry."""
        self.registry.register(RequestCollector(self))
        self.registry.register(StateCollector(state))

    # ---- serve --workers N: every worker's figures in its row of a shared mapping --------

    def vector(self) -> list[float]:
        """Every per-request figure, in a fixed order (the layout of a shared row)."""
        out: list[float] = []
        for stats in self.pools.values():
            for attr in _HISTOGRAM_ATTRS:
                b: Buckets = getattr(stats, attr)
                out += b.counts
                out.append(b.total)
            out += stats.status.values()
            out += stats.finish.values()
            out += (stats.retries, stats.disconnects, stats.wasted)
        out += self.shed.values()
        for figures in self.tenants.values():
            out += figures
        out += self.indicators.values()
        for hits in self.tenant_indicators.values():
            out += hits
        self._refresh()
        out += self.outcomes
        out += self.openings
        for counts in self.admitted.values():
            out += counts
        return out

    def load(self, values: Sequence[float]) -> None:
        """Set every figure from a vector laid out as ``vector`` makes it."""
        it = iter(values)
        for stats in self.pools.values():
            for attr in _HISTOGRAM_ATTRS:
                b = getattr(stats, attr)
                b.counts = [int(next(it)) for _ in b.counts]
                b.total = next(it)
            stats.status = {k: int(next(it)) for k in stats.status}
            stats.finish = {k: int(next(it)) for k in stats.finish}
            stats.retries, stats.disconnects, stats.wasted = (int(next(it)) for _ in range(3))
        self.shed = {k: int(next(it)) for k in self.shed}
        self.tenants = {t: [int(next(it)) for _ in figures] for t, figures in self.tenants.items()}
        self.indicators = {k: int(next(it)) for k in self.indicators}
        self.tenant_indicators = {t: [int(next(it)) for _ in hits]
                                  for t, hits in self.tenant_indicators.items()}  # fmt: skip
        self.outcomes = [int(next(it)) for _ in self.outcomes]
        self.openings = [int(next(it)) for _ in self.openings]
        self.admitted = {p: [int(next(it)) for _ in counts] for p, counts in self.admitted.items()}

    def attach(self, share: MetricsShare) -> None:
        """Write this process's figures to ``share`` from now on, starting from what its
        row holds (a worker replacing a dead one carries its totals on: counters never go
        back)."""
        self.load(share.mine)
        self.share = share

    def flush(self) -> None:
        if self.share is not None:
            self.share.mine[:] = array("d", self.vector())

    def summed(self) -> Metrics:
        """Every process's figures added up (this one's written first); this process's
        own when nothing is shared."""
        share = self.share
        if share is None:
            self._refresh()
            return self
        self.flush()
        total = [0.0] * share.size
        for row in share.rows:
            for i, value in enumerate(row):
                total[i] += value
        out = Metrics(self.pool_names, self.tiers, self.tenant_names, self.backend_labels,
                      self.pool_models)  # fmt: skip
        out.load(total)
        return out

    def observe(self, record: RequestRecord, now: float) -> None:
        """The request is over: once, from the handler's ``finally``."""
        if record.tenant:
            self._observe_tenant(record)
        if record.indicators:
            self._observe_indicators(record)
        stats = self.pools.get(record.pool)
        if stats is None:
            return
        status = record.status
        stats.status[_STATUS_CLASS.get(status // 100, "0") if status else "0"] += 1
        stats.latency.add(now - record.arrived)
        stats.queued.add(record.queued_s)
        if record.first_byte_at is not None:
            ttft = record.first_byte_at - record.arrived
            stats.ttft.add(ttft)
            stats.recent.append((now, ttft))
        if record.window:
            stats.context.add(record.budget / record.window)
        prompt = record.prompt_tokens
        if prompt is not None:
            stats.prompt.add(prompt)
        completion = record.completion_tokens
        if completion is not None:
            stats.completion.add(completion)
        reason = record.finish_reason
        if reason is not None:
            finish = stats.finish
            finish[reason if reason in finish else "other"] += 1
        if record.attempts > 1:
            stats.retries += record.attempts - 1
        if record.reject is not None:
            key = (record.pool, record.reject, record.tier)
            if key not in self.shed:
                key = (record.pool, "other", record.tier)
            if key in self.shed:
                self.shed[key] += 1
        if record.client_gone:
            stats.disconnects += 1
            stats.wasted += (prompt or 0) + (completion or 0)

    def _observe_indicators(self, record: RequestRecord) -> None:
        pool = record.pool if record.pool in self.pools else ""
        hits = self.indicators
        for rule in record.indicators:
            key = (rule, pool)
            if key in hits:
                hits[key] += 1
        if record.tenant:
            tenants = self.tenant_indicators
            per_rule = tenants.get(record.tenant) or tenants.get(OTHER_TENANT)
            if per_rule is not None:
                for rule in record.indicators:
                    per_rule[_RULE_INDEX[rule]] += 1

    def _observe_tenant(self, record: RequestRecord) -> None:
        figures = self.tenants.get(record.tenant) or self.tenants.get(OTHER_TENANT)
        if figures is None:
            return
        status = record.status
        figures[_TENANT_STATUS.get(status // 100, 0) if status else 0] += 1
        if record.reject == "rate_limited":
            figures[4] += 1
        if record.first_byte_at is not None:  # tokens a backend worked on
            figures[5] += record.prompt_tokens or 0
            figures[6] += record.completion_tokens or 0


def metric_tenants(config: RouterConfig) -> list[str]:
    """The tenants the metrics name: ``auth.tenants`` and those of the inline keys (the
    server adds those of ``keys_env`` and ``keys_file`` as read at start, ``with_tenants``)."""
    auth = config.auth
    if auth is None or auth.mode != "keys":
        return []
    return sorted({*auth.tenants, *(k.tenant for k in auth.keys)} - {OTHER_TENANT})
