"""The read model (router/observe/snapshot.py) rendered as /status JSON and as Prometheus
families: both speak of the same state, value for value."""

from __future__ import annotations

from ctxroute.router.core.breaker import Breaker, BreakerState
from ctxroute.router.model import Backend, Load, OutcomeKind
from ctxroute.router.observe.families import StateCollector
from ctxroute.router.observe.snapshot import (
    AdmissionState,
    BackendState,
    PoolState,
    QueueState,
    RouterState,
)
from ctxroute.router.observe.status import status_json
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def _backend(i: int, load: Load, breaker: Breaker, kv: float | None) -> BackendState:
    b = Backend(i, f"http://b{i}:8000", "p", "m", f"b{i}", 8000, 8)
    return BackendState(b, True, breaker.state is BreakerState.CLOSED, breaker,
                        None if breaker.closed else 1.5, False, False, kv, 2.0 if kv else None,
                        3.0 if kv else None, "fresh" if kv else "unknown: not read yet",
                        load, load, 100_000, 20_000.0, True)  # fmt: skip


def _state() -> RouterState:
    backends = (
        _backend(0, Load(3, 1200, 0, 4000, 0), Breaker(), 0.42),
        _backend(1, Load(5, 9000, 1, 30_000, 1), Breaker(BreakerState.OPEN, openings=2), None),
    )
    queue = QueueState("p", (0, 2, 1), 1, (1, 6, 1), 3.25, True, False)
    admission = AdmissionState(True, ("high", "normal", "low"), ("low",), 0.012, 64 << 20,
                               {"deadline": 4}, (queue,))  # fmt: skip
    return RouterState(1234, "memory", True, backends, (PoolState("p", "m", 8192, backends),),
                       admission, {OutcomeKind.SUCCESS: 7, OutcomeKind.TIMEOUT: 1})  # fmt: skip


def _families(state: RouterState) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StateCollector(lambda: state))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip


def test_status_and_metrics_render_the_same_snapshot() -> None:
    state = _state()
    status = status_json(state, lambda pool: {"answers": 0})
    samples = _families(state)
    assert status["in_flight"] == 8
    backends = status["pools"][0]["backends"]  # type: ignore[index]
    for b, json in zip(state.backends, backends, strict=True):
        labels = (("backend", b.backend.url), ("pool", "p"))
        assert samples[("ctxroute_backend_in_flight", labels)] == json["in_flight"]
        assert samples[("ctxroute_backend_pending_prefill_tokens", labels)] == json[
            "pending_prefill_tokens"]  # fmt: skip
        error = {"closed": 0.0, "half_open": 1.0, "open": 2.0}[json["breaker"]["error"]]
        kind = tuple(sorted((*labels, ("kind", "error"))))
        assert samples[("ctxroute_breaker_state", kind)] == error
        kv = json["kv_cache_usage"]
        assert samples.get(("ctxroute_backend_kv_cache_usage", labels)) == kv
    assert backends[1]["breaker"]["probe_in_s"] == 1.5  # an open breaker says when
    queue = status["admission"]["pools"]["p"]  # type: ignore[index]
    assert queue["waiting"] == {"high": 0, "normal": 2, "low": 1}
    for tier, n in queue["waiting"].items():
        assert samples[("ctxroute_queue_depth", (("pool", "p"), ("tier", tier)))] == n
    assert queue["standing_queue"] == {"short": True, "long": False}
    assert status["admission"]["overload"]["shed_tiers"] == ["low"]  # type: ignore[index]
    assert samples[("ctxroute_event_loop_lag_seconds", ())] == 0.012
    assert status["outcomes"] == {"success": 7, "timeout": 1}
    # (attempt outcomes, breaker openings and admitted are the Metrics' own: summed over
    # the workers, tests/unit/test_metrics_share.py)
