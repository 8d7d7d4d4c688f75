"""The fleet as configured: backends (frozen values), pools by model, and the pure core's
settings made from the configuration in one place (the planner's, admission's, and the
long-work rules both share).

Static: built once from the configuration. What changes while the router runs (load,
health, learned rates) lives in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctxroute.router.config import AdmissionConfig, ClassAdmissionConfig, RouterConfig
from ctxroute.router.core.admission import AdmissionSettings, ClassLimits, Tier
from ctxroute.router.core.hashring import PoolRing
from ctxroute.router.core.kvroom import KvMarks
from ctxroute.router.core.longwork import LongWork
from ctxroute.router.core.planner import PlannerSettings, PoolView
from ctxroute.router.model import Backend


@dataclass(frozen=True, slots=True)
class Fleet:
    pools: tuple[PoolView, ...]  # ordered by window, smallest first
    by_model: dict[str, tuple[PoolView, ...]]
    backends: tuple[Backend, ...]  # by index
    settings: PlannerSettings
    pool_named: dict[str, PoolView]
    models: tuple[str, ...]  # the served model names, in configuration order
    host_lines: tuple[bytes, ...]  # each backend's Host header line, by index
    by_url: dict[str, Backend]
    by_name: dict[str, Backend]
    work: LongWork  # what is long work: the one source for every part of the router
    admission: AdmissionSettings

    @classmethod
    def from_config(cls, config: RouterConfig) -> Fleet:
        views: list[PoolView] = []
        backends: list[Backend] = []
        for pool in config.pools_by_window():
            members: list[Backend] = []
            for n, b in enumerate(pool.backends, 1):
                host, port = b.origin
                name = b.name or f"{pool.name}-{n}"
                backend = Backend(
                    index=len(backends),
                    url=b.url,
                    pool=pool.name,
                    model=b.model or pool.model,
                    host=host,
                    port=port,
                    max_in_flight=b.max_in_flight,
                    weight=b.weight,
                    kv_tokens=b.kv_tokens or pool.kv_tokens,
                    prefill_tokens_per_s=pool.prefill_tokens_per_s,
                    name=name,
                    shown=b.url if config.expose_backends else name,
                )
                backends.append(backend)
                members.append(backend)
            ring = PoolRing(((b.url, b.weight) for b in members), config.routing.vnodes)
            views.append(
                PoolView(
                    pool.name,
                    pool.model,
                    pool.max_context_tokens,
                    pool.default_max_tokens,
                    ring,
                    tuple(members),
                    {b.url: b for b in members},
                )
            )
        by_model: dict[str, list[PoolView]] = {}
        for view in views:
            by_model.setdefault(view.model, []).append(view)
        work = long_work(config)
        # the routing config's fields are the planner's settings, by name
        planner = config.routing.model_dump(include=set(PlannerSettings.__dataclass_fields__))
        settings = PlannerSettings(**planner, work=work)
        return cls(
            tuple(views),
            {m: tuple(v) for m, v in by_model.items()},
            tuple(backends),
            settings,
            {v.name: v for v in views},
            tuple(by_model),
            tuple(f"Host: {b.host}:{b.port}\r\n".encode() for b in backends),
            {b.url: b for b in backends},
            {b.name: b for b in backends},
            work,
            admission_settings(config.admission, work),
        )


def long_work(config: RouterConfig) -> LongWork:
    marks = config.routing.kv_marks
    return LongWork(
        prefill_tokens=config.routing.long_prefill_tokens,
        keep_clean=config.routing.keep_clean,
        hold=config.admission.enabled and config.admission.hold_long,
        kv=KvMarks(long=marks.long, short=marks.short),
    )


def admission_settings(config: AdmissionConfig, work: LongWork) -> AdmissionSettings:
    names = [t.name for t in config.tiers]

    def limits(c: ClassAdmissionConfig) -> ClassLimits:
        return ClassLimits(c.deadline_s, c.max_wait_s, c.codel_target_s, c.codel_interval_s)

    return AdmissionSettings(
        tiers=tuple(Tier(t.name, t.reserve, t.weight) for t in config.tiers),
        default_tier=names.index(config.default_tier),
        aliases={k.strip().lower(): names.index(v) for k, v in config.aliases.items()},
        max_queue=config.max_queue,
        short=limits(config.short),
        long=limits(config.long),
        work=work,
    )
