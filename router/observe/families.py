"""The Prometheus families: the per-request figures (``Metrics``) and the router's state
(the read model, ``snapshot.py``), built when Prometheus scrapes, costing the request path
nothing. Label sets are bounded: pools, backends, status classes, tiers, reasons and
outcome kinds all come from the config or from enums, never from request content."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from ctxroute.router.core.breaker import BreakerState, Distress
from ctxroute.router.model import RULES, OutcomeKind
from ctxroute.router.observe.snapshot import AdmissionState, BackendState, RouterState
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ctxroute.router.observe.metrics import Metrics

_BREAKER_VALUE: Final = {
    BreakerState.CLOSED: 0.0,
    BreakerState.HALF_OPEN: 1.0,
    BreakerState.OPEN: 2.0,
}
_BACKEND = ["pool", "backend"]
# (name, help, the figure of a backend's state it reads): one gauge per backend each
_BACKEND_GAUGES: Final[tuple[tuple[str, str, Callable[[BackendState], float | None]], ...]] = (
    ("ctxroute_backend_in_flight", "Requests in flight on the backend, fleet-wide view",
     lambda b: b.load.in_flight),
    ("ctxroute_backend_pending_prefill_tokens",
     "Prompt tokens sent that have not produced a first byte", lambda b: b.load.pending_prefill),
    ("ctxroute_backend_long_prefills_pending", "Long prompts sent without a first byte yet",
     lambda b: b.load.long_pending),
    ("ctxroute_backend_budget_in_flight_tokens", "Prompt + max_tokens of every request in flight",
     lambda b: b.load.budget_in_flight),
    ("ctxroute_backend_kv_committed_tokens",
     "KV tokens committed: budgets in flight + what the engine held beyond them at the last "
     "scrape (a request fits when its budget does under its class's mark)",
     lambda b: b.kv_committed_tokens),
    ("ctxroute_backend_up", "1 when the backend answers", lambda b: 1.0 if b.up else 0.0),
    ("ctxroute_backend_usable",
     "1 when the router may send it new requests (breakers closed, not drained)",
     lambda b: 1.0 if b.usable else 0.0),
    ("ctxroute_backend_skew",
     "1 when the backend's engine differs from its pool's others or from the pool's config "
     "(model, max_model_len, vLLM version, cache settings; /status says how)",
     lambda b: 1.0 if b.skew else 0.0),
)  # fmt: skip
# the backend's own gauges as last probed: absent when unknown or stale
_PROBED_GAUGES: Final[tuple[tuple[str, str, Callable[[BackendState], float | None]], ...]] = (
    ("ctxroute_backend_kv_cache_usage",
     "The backend's KV-cache usage (0-1), as last probed from its /metrics", lambda b: b.kv_usage),
    ("ctxroute_backend_requests_running", "The backend's running requests, as last probed",
     lambda b: b.requests_running),
    ("ctxroute_backend_requests_waiting", "The backend's waiting requests, as last probed",
     lambda b: b.requests_waiting),
)  # fmt: skip


_HISTOGRAMS: Final = (
    ("ctxroute_ttft_seconds", "ttft", "Arrival at the router to the answer's first byte (a "
     "whole answer for non-streaming requests)"),
    ("ctxroute_request_duration_seconds", "latency", "Arrival at the router to the end of the "
     "answer"),
    ("ctxroute_queue_wait_seconds", "queued", "Time held at the router by admission before "
     "dispatch (0 when dispatched at once)"),
    ("ctxroute_prompt_tokens", "prompt", "Prompt tokens per request (the backend's usage "
     "when it reported it, else the router's estimate)"),
    ("ctxroute_completion_tokens", "completion", "Completion tokens per answered request, as "
     "the backend reported"),
    ("ctxroute_context_utilisation", "context", "Budget (prompt + max_tokens) over the "
     "answering pool's context window"),
)  # fmt: skip


class RequestCollector(Collector):
    """The per-request figures of every pool, as families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics.summed()
        pools = metrics.pools
        for name, attr, doc in _HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=["pool"])
            for pool, stats in pools.items():
                buckets, total = getattr(stats, attr).family_samples()
                family.add_metric([pool], buckets, total)
            yield family
        requests = CounterMetricFamily(
            "ctxroute_requests",
            "Requests answered, by the answering pool (else the preferred one; empty when "
            "refused before one was known) and status class (0: the client left first)",
            labels=["pool", "status_class"],
        )
        finish = CounterMetricFamily(
            "ctxroute_finish_reason",
            "Answers by finish_reason: a high share of 'length' means answers cut by max_tokens",
            labels=["pool", "reason"],
        )
        retries = CounterMetricFamily(
            "ctxroute_retries", "Attempts after a request's first", labels=["pool"]
        )
        disconnects = CounterMetricFamily(
            "ctxroute_client_disconnects",
            "Requests whose client left before the answer ended",
            labels=["pool"],
        )
        wasted = CounterMetricFamily(
            "ctxroute_client_disconnect_wasted_tokens",
            "Prompt and completion tokens processed for clients that then left",
            labels=["pool"],
        )
        for pool, stats in pools.items():
            for cls, count in stats.status.items():
                requests.add_metric([pool, cls], count)
            for reason, count in stats.finish.items():
                finish.add_metric([pool, reason], count)
            retries.add_metric([pool], stats.retries)
            disconnects.add_metric([pool], stats.disconnects)
            wasted.add_metric([pool], stats.wasted)
        shed = CounterMetricFamily(
            "ctxroute_shed",
            "Requests the router refused itself, by reason (x-ctxroute-reject: queue_full, "
            "deadline, overload, no_backend) and priority tier",
            labels=["pool", "reason", "tier"],
        )
        for (pool, reason, tier), count in sorted(metrics.shed.items()):
            shed.add_metric([pool, reason, tier], count)
        yield from (requests, finish, retries, disconnects, wasted, shed)
        yield from _process_families(metrics)
        yield from _indicator_families(metrics)
        if metrics.tenants:
            yield from _tenant_families(metrics.tenants)


def _process_families(metrics: Metrics) -> Iterator[Metric]:
    """Figures every process keeps of its own (summed over the workers of a server)."""
    outcomes = CounterMetricFamily(
        "ctxroute_attempt_outcomes", "Attempts on backends by how they ended", labels=["outcome"]
    )
    for kind, count in zip(OutcomeKind, metrics.outcomes, strict=True):
        outcomes.add_metric([kind.value], count)
    openings = CounterMetricFamily(
        "ctxroute_breaker_openings",
        "Times the error breaker opened on this router's own evidence (never goes back)",
        labels=_BACKEND,
    )
    for (pool, url), count in zip(metrics.backend_labels, metrics.openings, strict=True):
        openings.add_metric([pool, url], count)
    admitted = GaugeMetricFamily("ctxroute_admitted", _ADMITTED_HELP, labels=["pool", "tier"])
    for pool, counts in metrics.admitted.items():
        for tier, count in zip(metrics.tiers, counts, strict=True):
            admitted.add_metric([pool, tier], count)
    yield from (outcomes, openings, admitted)


def _indicator_families(metrics: Metrics) -> Iterator[Metric]:
    """Prompt-injection indicators: hits per rule, by model and pool, and by tenant."""
    hits = CounterMetricFamily(
        "ctxroute_indicator_hits",
        "Requests that tripped a prompt-injection indicator (rule: ignore_instructions, "
        "role_delimiter, prompt_request, jailbreak_persona, invisible_text, encoded_blob on "
        "the way in; system_prompt_leak on the way out), whatever the rule's action",
        labels=["rule", "model", "pool"],
    )
    models = metrics.pool_models
    for (rule, pool), count in metrics.indicators.items():
        hits.add_metric([rule, models.get(pool, ""), pool], count)
    yield hits
    if metrics.tenant_indicators:
        tenants = CounterMetricFamily(
            "ctxroute_tenant_indicator_hits",
            "The tenant's requests that tripped a prompt-injection indicator, per rule",
            labels=["tenant", "rule"],
        )
        for tenant, per_rule in metrics.tenant_indicators.items():
            for rule, count in zip(RULES, per_rule, strict=True):
                tenants.add_metric([tenant, rule], count)
        yield tenants


def _tenant_families(tenants: dict[str, list[int]]) -> Iterator[Metric]:
    """Per tenant (API keys on): its requests, its rate-limit refusals, its tokens. The
    tenant is named, never its key; "other" holds tenants added by a reload since start."""
    requests = CounterMetricFamily(
        "ctxroute_tenant_requests",
        "Completion requests of the tenant by status class (0: the client left first)",
        labels=["tenant", "status_class"],
    )
    limited = CounterMetricFamily(
        "ctxroute_tenant_rate_limited",
        "The tenant's requests refused by its rate limits (429 rate_limited)",
        labels=["tenant"],
    )
    tokens = CounterMetricFamily(
        "ctxroute_tenant_tokens",
        "Prompt and completion tokens of the tenant's answered requests",
        labels=["tenant", "kind"],
    )
    for tenant, (gone, ok, client, server, rate_limited, prompt, completion) in tenants.items():
        for cls, count in (("0", gone), ("2xx", ok), ("4xx", client), ("5xx", server)):
            requests.add_metric([tenant, cls], count)
        limited.add_metric([tenant], rate_limited)
        tokens.add_metric([tenant, "prompt"], prompt)
        tokens.add_metric([tenant, "completion"], completion)
    yield from (requests, limited, tokens)


class StateCollector(Collector):
    """The router's state as gauges and counters, from one snapshot per scrape."""

    def __init__(self, state: Callable[[], RouterState]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        yield from _backend_families(state)
        yield from _admission_families(state.admission)
        redis = GaugeMetricFamily(
            "ctxroute_store_up",
            "1 when the shared store (Redis) is reachable; always 1 for the in-process store",
            labels=["kind"],
        )
        redis.add_metric([state.store_kind], 1.0 if state.store_up else 0.0)
        lag = GaugeMetricFamily(
            "ctxroute_event_loop_lag_seconds", "The router's event-loop lag at its last check"
        )
        lag.add_metric([], state.admission.loop_lag_s)
        yield from (redis, lag)


_MEMORY_REASONS: Final = tuple(
    d.name.lower() for d in Distress if d not in (Distress.NONE, Distress.RECOVERING)
)


def _backend_families(state: RouterState) -> Iterator[Metric]:
    gauges = [
        (GaugeMetricFamily(n, doc, labels=_BACKEND), read) for n, doc, read in _BACKEND_GAUGES
    ]
    probed = [(GaugeMetricFamily(n, doc, labels=_BACKEND), read) for n, doc, read in _PROBED_GAUGES]
    breaker = GaugeMetricFamily(
        "ctxroute_breaker_state",
        "Breaker state: error breaker 0 closed, 1 half-open, 2 open; memory breaker 0 closed, "
        "2 open",
        labels=[*_BACKEND, "kind"],
    )
    memory = CounterMetricFamily(
        "ctxroute_memory_breaker_openings",
        "Memory breaker openings this process decided, by the distress rule that opened it "
        "(preempting, queue_growing, full, queue_over)",
        labels=[*_BACKEND, "reason"],
    )
    for b in state.backends:
        names = [b.backend.pool, b.backend.url]
        for family, read in gauges:
            family.add_metric(names, read(b) or 0.0)
        breaker.add_metric([*names, "error"], _BREAKER_VALUE[b.breaker.state])
        breaker.add_metric([*names, "memory"], 2.0 if b.memory_open else 0.0)
        for reason in _MEMORY_REASONS:  # every rule, from 0: increase() sees the first
            memory.add_metric([*names, reason], b.memory_openings.get(reason, 0))
        for family, read in probed:
            value = read(b)
            if value is not None:
                family.add_metric(names, value)
    yield from (family for family, _ in gauges[:4])
    yield from (family for family, _ in gauges[4:])
    yield from (breaker, memory)
    yield from (family for family, _ in probed)
    yield from _drift_families(state)


def _drift_families(state: RouterState) -> Iterator[Metric]:
    drift = GaugeMetricFamily(
        "ctxroute_drift_score",
        "A backend's recent answers against its model's other backends and against its own "
        "baseline, per signal: the two-sample statistic over its critical value at alpha "
        "1e-4, the higher of the two (1 or more: drift)",
        labels=["model", "backend", "signal"],
    )
    length = GaugeMetricFamily(
        "ctxroute_backend_length_stop_share",
        "Share of the backend's last 200 short answers cut by max_tokens (finish_reason "
        "length); absent under 30 answers",
        labels=["model", "backend"],
    )
    for b in state.backends:
        for signal, score in b.drift.items():
            drift.add_metric([b.backend.model, b.backend.url, signal], score)
        if b.length_share is not None:
            length.add_metric([b.backend.model, b.backend.url], b.length_share)
    yield from (drift, length)


_QUEUE_DEPTH_HELP: Final = "Requests held at the router, per pool and priority tier"
_ADMITTED_HELP: Final = "Requests admitted and not ended, per pool and priority tier"


def _admission_families(admission: AdmissionState) -> Iterator[Metric]:
    labels = ["pool", "tier"]
    depth = GaugeMetricFamily("ctxroute_queue_depth", _QUEUE_DEPTH_HELP, labels=labels)
    for q in admission.queues:
        for t, name in enumerate(admission.tiers):
            depth.add_metric([q.pool, name], q.waiting[t])
    yield depth
