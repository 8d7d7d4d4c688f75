"""``/status``: the read model (``snapshot.py``) as JSON; the dashboard and ``ctxroute
status`` read it."""

from __future__ import annotations

from collections.abc import Callable

from ctxroute.router.observe.snapshot import AdmissionState, BackendState, RouterState

RecentTtft = Callable[[str], dict[str, float | int | None]]  # pool -> recent percentiles


def status_json(state: RouterState, ttft_recent: RecentTtft) -> dict[str, object]:
    return {
        "pid": state.pid,
        "store": {"kind": state.store_kind, "up": state.store_up},
        "in_flight": state.in_flight,
        "admission": admission_json(state.admission),
        "outcomes": {kind.value: n for kind, n in state.outcomes.items()},
        "pools": [
            {
                "name": pool.name,
                "model": pool.model,
                "max_context_tokens": pool.max_context_tokens,
                "ttft_recent": ttft_recent(pool.name),
                "backends": [backend_json(b) for b in pool.backends],
            }
            for pool in state.pools
        ],
    }


def admission_json(a: AdmissionState) -> dict[str, object]:
    return {
        "enabled": a.enabled,
        "overload": {
            "shed_tiers": list(a.shed_tiers),
            "loop_lag_ms": round(a.loop_lag_s * 1000, 1),
            "rss_mib": a.rss_bytes >> 20,
        },
        "refused": dict(a.refused),
        "pools": {
            q.pool: {
                "waiting": dict(zip(a.tiers, q.waiting, strict=True)),
                "held_long": q.held_long,
                "admitted_in_flight": dict(zip(a.tiers, q.admitted, strict=True)),
                "finished_per_s": round(q.finished_per_s, 2),  # the drain rate
                "standing_queue": {"short": q.standing_short, "long": q.standing_long},
            }
            for q in a.queues
        },
    }


def backend_json(b: BackendState) -> dict[str, object]:
    load = b.load
    breaker = b.breaker
    return {
        "url": b.backend.url,
        "up": b.up,
        "usable": b.usable,
        # the rules that keep it from new requests now, most decisive first
        "kept_from": list(b.kept_from),
        # how its engine differs from its pool's others (model, window, version, cache)
        "skew": list(b.skew),
        # per signal, its answers against its model's other backends and against its own
        # baseline, the higher of the two (1.0 or more: drift); the baseline's alone
        "drift": {signal: round(score, 3) for signal, score in b.drift.items()},
        "drift_baseline": {signal: round(score, 3) for signal, score in b.drift_baseline.items()},
        "length_share": None if b.length_share is None else round(b.length_share, 4),
        "breaker": {
            "error": breaker.state.value,
            "memory": "open" if b.memory_open else "closed",
            "memory_why": b.memory_why or None,  # the distress rule that holds it open
            "openings": breaker.openings,
            # set only while the breaker is open (the snapshot's rule)
            "probe_in_s": None if b.probe_in_s is None else round(b.probe_in_s, 3),
        },
        "drained": b.drained,
        "kv_cache_usage": b.kv_usage,
        "requests_waiting": b.requests_waiting,
        "requests_running": b.requests_running,
        "metrics": b.metrics,
        "in_flight": load.in_flight,
        "pending_prefill_tokens": load.pending_prefill,
        "long_prefills_pending": load.long_pending,
        "long_in_flight": load.long_in_flight,  # prefilling or decoding
        "budget_in_flight_tokens": load.budget_in_flight,
        "kv_capacity_tokens": b.kv_capacity_tokens,
        # committed = budgets in flight + unaccounted; room: what each class may still add
        "kv_unaccounted_tokens": b.kv_unaccounted_tokens,
        "kv_committed_tokens": b.kv_committed_tokens,
        "kv_room_tokens": None
        if b.kv_room_tokens is None
        else {"long": b.kv_room_tokens[0], "short": b.kv_room_tokens[1]},
        "prefill_tokens_per_s": round(b.prefill_tokens_per_s),
        "prefill_rate": "learned" if b.prefill_learned else "configured",
        "local": {
            "in_flight": b.local.in_flight,
            "pending_prefill_tokens": b.local.pending_prefill,
            "budget_in_flight_tokens": b.local.budget_in_flight,
        },
    }
