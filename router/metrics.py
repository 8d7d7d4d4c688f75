"""Prometheus metrics, prefix ``ctxroute_`` (never ``vllm:``: those are the engines').

Two kinds, for two costs:

* per request, observed once when the request ends (``Metrics.observe``), with children
  bound per pool when the app starts, so a request does no label lookup: requests by
  status class, TTFT and latency from arrival at the router, time held by admission,
  prompt and completion tokens, context utilisation (budget / window), finish reasons,
  retries, client disconnects and the tokens they wasted, the router's own refusals by
  reason and tier;
* the router's state, read when Prometheus scrapes (``_StateCollector``), costing the
  request path nothing: in-flight, pending prefill and budget per backend (the fleet-wide
  view), queue depth and admitted requests per pool and tier, attempt outcomes, breaker
  states, the backends' own KV usage / running / waiting as last probed, Redis
  reachability and event-loop lag.

Label sets are bounded: pools, backends, status classes, tiers, reasons and outcome kinds
all come from the config or from enums, never from request content.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.core.breaker import BreakerState
from router.record import RequestRecord

if TYPE_CHECKING:
    from router.context import RouterContext

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


class _PoolChildren:
    """One pool's metric children, bound once."""

    __slots__ = (
        "completion",
        "context",
        "disconnects",
        "finish",
        "latency",
        "prompt",
        "queued",
        "retries",
        "status",
        "ttft",
        "wasted",
    )

    def __init__(self, m: Metrics, pool: str) -> None:
        self.ttft = m.ttft.labels(pool)
        self.latency = m.latency.labels(pool)
        self.queued = m.queued.labels(pool)
        self.prompt = m.prompt_tokens.labels(pool)
        self.completion = m.completion_tokens.labels(pool)
        self.context = m.context.labels(pool)
        self.retries = m.retries.labels(pool)
        self.disconnects = m.disconnects.labels(pool)
        self.wasted = m.wasted.labels(pool)
        self.status = {cls: m.requests.labels(pool, cls) for cls in ("0", *_STATUS_CLASS.values())}
        self.finish = {r: m.finish.labels(pool, r) for r in (*FINISH_REASONS, "other")}


class Metrics:
    def __init__(self, pools: list[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ctxroute_requests",
            "Requests answered, by the answering "
            "pool and status class (0: the client left before any answer)",
            ["pool", "status_class"],
            registry=r,
        )
        self.ttft = Histogram(
            "ctxroute_ttft_seconds",
            "Arrival at the router to the answer's "
            "first byte (a whole answer for non-streaming requests)",
            ["pool"],
            buckets=SECONDS,
            registry=r,
        )
        self.latency = Histogram(
            "ctxroute_request_duration_seconds",
            "Arrival at the router to the end of the answer",
            ["pool"],
            buckets=SECONDS,
            registry=r,
        )
        self.queued = Histogram(
            "ctxroute_queue_wait_seconds",
            "Time held at the router by admission before dispatch (0 when dispatched at once)",
            ["pool"],
            buckets=SECONDS,
            registry=r,
        )
        self.prompt_tokens = Histogram(
            "ctxroute_prompt_tokens",
            "Prompt tokens per request "
            "(the backend's usage when it reported it, else the "
            "router's estimate)",
            ["pool"],
            buckets=TOKENS,
            registry=r,
        )
        self.completion_tokens = Histogram(
            "ctxroute_completion_tokens",
            "Completion tokens per answered request, as the backend reported",
            ["pool"],
            buckets=TOKENS,
            registry=r,
        )
        self.context = Histogram(
            "ctxroute_context_utilisation",
            "Budget (prompt + max_tokens) over the answering pool's context window",
            ["pool"],
            buckets=SHARE,
            registry=r,
        )
        self.finish = Counter(
            "ctxroute_finish_reason",
            "Answers by finish_reason: a high share of 'length' means answers cut by max_tokens",
            ["pool", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "ctxroute_retries", "Attempts after a request's first", ["pool"], registry=r
        )
        self.disconnects = Counter(
            "ctxroute_client_disconnects",
            "Requests whose client left before the answer ended",
            ["pool"],
            registry=r,
        )
        self.wasted = Counter(
            "ctxroute_client_disconnect_wasted_tokens",
            "Prompt and completion tokens processed for clients that then left",
            ["pool"],
            registry=r,
        )
        self.shed = Counter(
            "ctxroute_shed",
            "Requests the router refused itself, by reason (x-ctxroute-reject: queue_full, "
            "deadline, overload, no_backend) and priority tier",
            ["pool", "reason", "tier"],
            registry=r,
        )
        self._pools = {pool: _PoolChildren(self, pool) for pool in pools}
        self._context: RouterContext | None = None

    def watch(self, ctx: RouterContext) -> None:
        """Expose ``ctx``'s state at scrape time."""
        self._context = ctx
        self.registry.register(_StateCollector(ctx))

    def observe(self, record: RequestRecord, now: float) -> None:
        """The request is over: once, from the handler's ``finally``."""
        children = self._pools.get(record.pool)
        if children is None:
            return  # refused before a pool was known (a 400 on the body)
        status = record.status
        children.status[_STATUS_CLASS.get(status // 100, "0") if status else "0"].inc()
        children.latency.observe(now - record.arrived)
        children.queued.observe(record.queued_s)
        if record.first_byte_at is not None:
            children.ttft.observe(record.first_byte_at - record.arrived)
        if record.attempts > 1:
            children.retries.inc(record.attempts - 1)
        if record.window:
            children.context.observe(record.budget / record.window)
        prompt = record.prompt_tokens
        if prompt is not None:
            children.prompt.observe(prompt)
        completion = record.completion_tokens
        if completion is not None:
            children.completion.observe(completion)
        reason = record.finish_reason
        if reason is not None:
            finish = children.finish.get(reason)
            (finish if finish is not None else children.finish["other"]).inc()
        if record.reject is not None:
            self.shed.labels(record.pool, record.reject, record.tier).inc()  # rare: bound here
        if record.client_gone:
            children.disconnects.inc()
            children.wasted.inc((prompt or 0) + (completion or 0))


class _StateCollector(Collector):
    """The router's state as gauges and counters, read at scrape time."""

    def __init__(self, ctx: RouterContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        ledger = ctx.ledger
        store = ledger.store
        fleet = ctx.fleet
        now = time.monotonic()
        labels = ["pool", "backend"]
        in_flight = GaugeMetricFamily(
            "ctxroute_backend_in_flight",
            "Requests in flight on the backend, fleet-wide view",
            labels=labels,
        )
        pending = GaugeMetricFamily(
            "ctxroute_backend_pending_prefill_tokens",
            "Prompt tokens sent that have not produced a first byte",
            labels=labels,
        )
        long_pending = GaugeMetricFamily(
            "ctxroute_backend_long_prefills_pending",
            "Long prompts sent without a first byte yet",
            labels=labels,
        )
        budget = GaugeMetricFamily(
            "ctxroute_backend_budget_in_flight_tokens",
            "Prompt + max_tokens of every request in flight",
            labels=labels,
        )
        up = GaugeMetricFamily("ctxroute_backend_up", "1 when the backend answers", labels=labels)
        usable = GaugeMetricFamily(
            "ctxroute_backend_usable",
            "1 when the router may send it new requests (breakers closed, not drained)",
            labels=labels,
        )
        breaker = GaugeMetricFamily(
            "ctxroute_breaker_state",
            "Breaker state: error breaker 0 "
            "closed, 1 half-open, 2 open; memory breaker 0 closed, 2 "
            "open",
            labels=[*labels, "kind"],
        )
        openings = CounterMetricFamily(
            "ctxroute_breaker_openings", "Times the error breaker opened", labels=labels
        )
        kv = GaugeMetricFamily(
            "ctxroute_backend_kv_cache_usage",
            "The backend's KV-cache usage (0-1), as last probed from its /metrics",
            labels=labels,
        )
        running = GaugeMetricFamily(
            "ctxroute_backend_requests_running",
            "The backend's running requests, as last probed",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            "ctxroute_backend_requests_waiting",
            "The backend's waiting requests, as last probed",
            labels=labels,
        )
        interval = ctx.config.probe.interval_s
        for b in fleet.backends:
            i = b.index
            names = [b.pool, b.url]
            load = ledger.board.fleet(i)
            in_flight.add_metric(names, load.in_flight)
            pending.add_metric(names, load.pending_prefill)
            long_pending.add_metric(names, load.long_pending)
            budget.add_metric(names, load.budget_in_flight)
            up.add_metric(names, 1.0 if ledger.up[i] else 0.0)
            usable.add_metric(names, 1.0 if store.usable(i, now) else 0.0)
            state = store.breaker(i)
            breaker.add_metric([*names, "error"], _BREAKER_VALUE[state.state])
            breaker.add_metric([*names, "memory"], 2.0 if store.memory_open(i) else 0.0)
            openings.add_metric(names, state.openings)
            reading = ctx.readings[i]
            if reading.fresh(now, interval):
                if reading.kv_usage is not None:
                    kv.add_metric(names, reading.kv_usage)
                if reading.running is not None:
                    running.add_metric(names, reading.running)
                if reading.waiting is not None:
                    waiting.add_metric(names, reading.waiting)
        yield from (
            in_flight,
            pending,
            long_pending,
            budget,
            up,
            usable,
            breaker,
            openings,
            kv,
            running,
            waiting,
        )

        gate = ctx.gate
        tiers = [t.name for t in gate.settings.tiers]
        depth = GaugeMetricFamily(
            "ctxroute_queue_depth",
            "Requests held at the router, per pool and priority tier",
            labels=["pool", "tier"],
        )
        admitted = GaugeMetricFamily(
            "ctxroute_admitted",
            "Requests admitted and not ended, per pool and priority tier",
            labels=["pool", "tier"],
        )
        for pool, queue in gate.queues.items():
            waiting_by_tier = [0] * len(tiers)
            for w in queue.waiters:
                waiting_by_tier[w.tier] += 1
            for t, name in enumerate(tiers):
                depth.add_metric([pool, name], waiting_by_tier[t])
                admitted.add_metric([pool, name], gate.admitted[pool][t])
        outcomes = CounterMetricFamily(
            "ctxroute_attempt_outcomes",
            "Attempts on backends by how they ended",
            labels=["outcome"],
        )
        for kind, count in ledger.outcomes.items():
            outcomes.add_metric([kind.value], count)
        redis = GaugeMetricFamily(
            "ctxroute_store_up",
            "1 when the shared store (Redis) is reachable; always 1 for the in-process store",
            labels=["kind"],
        )
        redis.add_metric([store.kind], 1.0 if store.up else 0.0)
        lag = GaugeMetricFamily(
            "ctxroute_event_loop_lag_seconds", "The router's event-loop lag at its last check"
        )
        lag.add_metric([], gate.guard.lag_s)
        yield from (depth, admitted, outcomes, redis, lag)
