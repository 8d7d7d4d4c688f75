"""The read model of the router's state: one snapshot, taken when someone asks, that
``/status``, ``/metrics`` and the dashboard all render. Values only; the router builds it
(``RouterContext.snapshot``) and nothing here reads live state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ctxroute.router.core.breaker import Breaker
from ctxroute.router.model import Backend, Load, OutcomeKind


@dataclass(frozen=True, slots=True)
class QueueState:
    """One pool's admission queue."""

    pool: str
    waiting: tuple[int, ...]  # per priority tier
    held_long: int  # waiting because a hold rule keeps long work at the router
    admitted: tuple[int, ...]  # admitted and not ended, per priority tier
    finished_per_s: float  # the drain rate
    standing_short: bool
    standing_long: bool


@dataclass(frozen=True, slots=True)
class AdmissionState:
    enabled: bool
    tiers: tuple[str, ...]  # highest first
    shed_tiers: tuple[str, ...]  # shed by the overload guard now
    loop_lag_s: float
    rss_bytes: int
    refused: Mapping[str, int]  # x-ctxroute-reject reason -> count
    queues: tuple[QueueState, ...]


@dataclass(frozen=True, slots=True)
class BackendState:
    backend: Backend
    up: bool
    usable: bool
    breaker: Breaker
    probe_in_s: float | None  # until an open breaker may take a probe
    memory_open: bool
    drained: bool
    # the backend's own gauges as last probed; None when unknown or stale
    kv_usage: float | None
    requests_waiting: float | None
    requests_running: float | None
    metrics: str  # "fresh", or why the reading is not
    load: Load  # the fleet-wide view
    local: Load  # this process's own attempts
    kv_capacity_tokens: int | None
    prefill_tokens_per_s: float
    prefill_learned: bool
    memory_why: str = ""  # the rule that holds the memory breaker open
    # memory breaker openings this process decided, by the rule's name (preempting, full...)
    memory_openings: Mapping[str, int] = field(default_factory=dict)
    kv_unaccounted_tokens: int = 0  # held beyond the budgets in flight, at the last scrape
    kv_committed_tokens: int = 0  # budgets in flight + unaccounted (``core/kvroom.py``)
    # tokens a request of each class may still commit here (long, short); None: size unknown
    kv_room_tokens: tuple[int, int] | None = None
    # the rules that keep it from new requests now ("" for none), most decisive first
    kept_from: tuple[str, ...] = ()
    # how its engine differs from its pool's others (``core/skew.py``); () for nothing
    skew: tuple[str, ...] = ()
    # drift scores by signal (``core/drift.py``: 1.0 or more is drift); {} until enough answers
    drift: Mapping[str, float] = field(default_factory=dict)
    drift_baseline: Mapping[str, float] = field(default_factory=dict)  # against its own past
    length_share: float | None = None  # of its recent answers, cut by max_tokens


@dataclass(frozen=True, slots=True)
class PoolState:
    name: str
    model: str
    max_context_tokens: int
    backends: tuple[BackendState, ...]


@dataclass(frozen=True, slots=True)
class RouterState:
    pid: int  # which worker answered, under serve --workers
    store_kind: str
    store_up: bool
    backends: tuple[BackendState, ...]  # by index
    pools: tuple[PoolState, ...]  # by window, smallest first
    admission: AdmissionState
    outcomes: Mapping[OutcomeKind, int]  # attempts by how they ended

    @property
    def in_flight(self) -> int:
        return sum(b.load.in_flight for b in self.backends)
