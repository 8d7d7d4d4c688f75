"""serve --workers N: every worker writes its figures to its row of a shared mapping and a
scrape of any worker sums the rows. The figures kept outside Metrics (the ledger's attempt
outcomes, the store's breaker openings, the gate's admitted requests) travel the same way,
so a counter never goes back whichever worker answers."""

from __future__ import annotations

from ctxroute.router.model import OutcomeKind
from ctxroute.router.observe.families import RequestCollector
from ctxroute.router.observe.metrics import Metrics, MetricsShare
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

POOLS, TIERS, BACKENDS = ["", "p"], ["high", "normal"], [("p", "http://a:1"), ("p", "http://b:1")]


def _worker(shared: object, row: int, outcomes: int, opened: int, admitted: int) -> Metrics:
    m = Metrics(POOLS, TIERS, (), BACKENDS)
    counts = dict.fromkeys(OutcomeKind, 0)
    counts[OutcomeKind.SUCCESS] = outcomes
    m.follow(counts, [opened, 0], {"p": [0, admitted]})
    size = len(m.vector())
    m.attach(MetricsShare(shared, 2, row, size))  # type: ignore[arg-type]
    m.flush()
    return m


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RequestCollector(m))  # (the state's families need a running router)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip


def test_a_scrape_of_either_worker_sums_both_workers_figures() -> None:
    size = len(Metrics(POOLS, TIERS, (), BACKENDS).vector())
    shared = MetricsShare.shared_memory(2, size)
    first = _worker(shared, 0, outcomes=5, opened=1, admitted=2)
    second = _worker(shared, 1, outcomes=7, opened=2, admitted=3)
    for m in (first, second):
        samples = _samples(m)
        assert samples[("ctxroute_attempt_outcomes_total", (("outcome", "success"),))] == 12
        opened = (("backend", "http://a:1"), ("pool", "p"))
        assert samples[("ctxroute_breaker_openings_total", opened)] == 3
        assert samples[("ctxroute_admitted", (("pool", "p"), ("tier", "normal")))] == 5
