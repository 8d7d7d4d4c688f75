"""A completion request's way from its parsed body to its answer: facts, plan (and the
fallback model), admission at the door, the attempt loop. The HTTP face reads the request
and hands it over here; what one request did is written to its ``RequestRecord``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from time import monotonic
from typing import Any

import orjson
from aiohttp import web
from ctxroute.router.core.admission.fairshare import VirtualCounters
from ctxroute.router.core.facts import priority_value, read_facts, timeout_s
from ctxroute.router.core.keys import Tenant
from ctxroute.router.core.planner import ViewOf
from ctxroute.router.core.tokens import TokenCounter
from ctxroute.router.dispatch.gate import Gate, Ticket
from ctxroute.router.dispatch.indicators import Indicators
from ctxroute.router.dispatch.limits import tokens_used, worded
from ctxroute.router.dispatch.proxy import Exchange, Proxy
from ctxroute.router.dispatch.routing import Route, fallback_route, route
from ctxroute.router.errors import Forbidden
from ctxroute.router.fleet.ledger import Ledger
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.model import RequestFacts, RoutePlan
from ctxroute.router.observe.record import RequestRecord
from ctxroute.router.store.limits import Limiter

log = logging.getLogger("ctxroute.handlers")


@dataclass(slots=True)
class Asked:
    """What the client sent, as the HTTP face read it: the body (raw and parsed once) and
    the header values that matter here. (A slots class, not a NamedTuple: its fields are
    read on the hot path, where a slot read is the cheapest.)"""

    chat: bool
    path: str
    raw: bytes
    body: Any
    session: str | None
    priority: str | None
    timeout: str | None
    tenant: Tenant | None = None  # the caller's key's, when keys are required


@dataclass(frozen=True, slots=True)
class Dispatcher:
    """Everything a completion request's way needs, made once per app."""

    fleet: Fleet
    ledger: Ledger
    gate: Gate
    proxy: Proxy
    counters: Mapping[str, TokenCounter]
    prefix_chars: int
    fallback: Mapping[str, str]  # model -> the smaller model answering while it is unusable
    limiter: Limiter | None = None  # per-key rate limits, when keys are required
    tenants: VirtualCounters | None = None  # fair shares between tenants, when on
    exact_inline_bytes: int = 64 * 1024  # bodies over this are counted exactly in a thread
    limit_headers_always: bool = False  # x-ratelimit-* on every answer, not only on a 429
    indicators: Indicators | None = None  # prompt-injection rules, unless turned off

    async def complete(
        self, request: web.Request, asked: Asked, request_id: str, record: RequestRecord
    ) -> web.StreamResponse:
        fleet = self.fleet
        facts = self._read(asked)
        if self.counters and len(asked.raw) > self.exact_inline_bytes:
            facts = await self._count_aside(asked, facts)
        record.prompt_tokens, record.model, record.stream = (facts.prompt.estimate, facts.model,
                                                             facts.stream)  # fmt: skip
        tenant = asked.tenant
        if tenant is not None and not tenant.may_use(facts.model):
            raise Forbidden(f"tenant {tenant.name} may not use the model {facts.model!r}", "model")
        view_of = self.ledger.views()  # the plan and the verdict on it see the same fleet
        planned = route(facts, fleet, view_of)
        record.pool = planned.plan.preferred
        record.plan = planned.plan
        raw: bytes = asked.raw
        extra: tuple[tuple[str, str], ...] = ()
        watch = None
        if self.indicators is not None:  # after the route: its hits are counted by pool
            extra = self.indicators.screen(asked.body, asked.chat, record)
            watch = self.indicators.watch(asked.body, asked.chat, facts.stream)
        if self.fallback and not planned.plan.candidates and planned.unusable(view_of):
            planned, raw, fallback = self._fallback(planned, asked, request_id, view_of)
            extra += fallback
        tier = self._tier(asked)
        wait_s = None if asked.timeout is None else timeout_s(asked.timeout)
        name = None if tenant is None else tenant.name
        reserved = 0
        if tenant is not None:
            tier, raw = self._keyed(tenant, tier, asked, raw)
            limiter, quotas = self.limiter, self.limit_headers_always
            if limiter is not None and tenant.limited:
                reserved = planned.plan.budget
                # decided here, else by the replicas' shared buckets; the headers, or the 429
                decision = limiter.take_here(tenant, reserved, quotas)
                decision = decision or await limiter.take(tenant, reserved, quotas)
                if quotas or not decision.allowed:
                    extra += worded(decision, tenant)  # the headers, or the 429
        try:
            record.tier = self.gate.settings.tiers[tier].name
            long = fleet.work.is_long(planned.facts.prompt.estimate)
            plan = planned.plan
            ticket = self.gate.admit_now(tier, long, wait_s, plan, view_of, name)
            if ticket is None:
                ticket, plan = await self._wait(planned, tier, long, wait_s, record, name)
            elif record.trace is not None:
                record.trace.admitted_at_once(record.tier, long)
            if tenant is not None and self.tenants is not None:
                self.tenants.served(tenant.name, planned.facts.prompt.estimate, 0, tenant.weight)
            try:
                exchange = Exchange(request, asked.path, raw, planned.facts, plan, request_id,
                                    record, extra, asked.chat, watch)  # fmt: skip
                return await self.proxy.forward(exchange)
            finally:
                ticket.release()
        finally:
            if tenant is not None:
                self._settle(tenant, reserved, record)

    def _read(self, asked: Asked) -> RequestFacts:
        """The request's facts, its tokens counted exactly here when its body is small."""
        return read_facts(
            asked.body,
            chat=asked.chat,
            session=asked.session,
            models=self.fleet.models,
            counters=self.counters if len(asked.raw) <= self.exact_inline_bytes else {},
            prefix_chars=self.prefix_chars,
        )

    def _keyed(self, tenant: Tenant, tier: int, asked: Asked, raw: bytes) -> tuple[int, bytes]:
        """A keyed request's tier (its ceiling, never more) and body. (Not a coroutine, nor
        are its limits when this process decides them: no await on the common path.)"""
        body = asked.body
        if "priority" in body:
            # vLLM's own priority is a privilege too: with keys, the tier decides, not the body
            del body["priority"]
            raw = orjson.dumps(body)
        return max(tier, tenant.max_tier), raw

    def _settle(self, tenant: Tenant, reserved: int, record: RequestRecord) -> None:
        """Once a keyed request has ended: its rate limits settled with what it used, its
        output charged to its tenant's counter."""
        if reserved and self.limiter is not None:
            used = tokens_used(record)
            if used is not None:
                self.limiter.settle(tenant, used - reserved)
        if self.tenants is not None and record.completion_tokens:
            self.tenants.served(tenant.name, 0, record.completion_tokens, tenant.weight)

    async def _count_aside(self, asked: Asked, estimated: RequestFacts) -> RequestFacts:
        """A large prompt's exact count, made in a thread (it would stall every other
        request on the loop for milliseconds per 100 kB); checked first on the byte bounds,
        which already answered the 4xx a request may deserve."""
        if estimated.model not in self.counters:
            return estimated
        return await asyncio.to_thread(
            read_facts,
            asked.body,
            chat=asked.chat,
            session=asked.session,
            models=self.fleet.models,
            counters=self.counters,
            prefix_chars=self.prefix_chars,
        )

    def _fallback(self, planned: Route, asked: Asked, request_id: str, view_of: ViewOf
                  ) -> tuple[Route, bytes, tuple[tuple[str, str], ...]]:  # fmt: skip
        """For a request none of whose candidates is usable: the route, body and extra
        headers of its fallback model, if it has one, else its own."""
        small = self.fallback.get(planned.facts.model)
        alternative = None if small is None else fallback_route(planned.facts, small,
                                                                self.fleet, view_of)  # fmt: skip
        if alternative is None:
            return planned, asked.raw, ()
        # the small model's servers know only their own name: the body says it
        body = asked.body
        big = planned.facts.model
        body["model"] = alternative.facts.model
        log.info("request %s: every backend of %s is unusable, answered by %s", request_id,
                 big, alternative.facts.model)  # fmt: skip
        return (
            alternative,
            orjson.dumps(body),
            (("x-ctxroute-fallback", f"{big}->{alternative.facts.model}"),),
        )

    def _tier(self, asked: Asked) -> int:
        settings = self.gate.settings
        field = asked.body.get("priority")
        if asked.priority is None and field is None:
            return settings.default_tier
        return settings.tier_of(priority_value(asked.priority, field))

    async def _wait(
        self,
        planned: Route,
        tier: int,
        long: bool,
        wait_s: float | None,
        record: RequestRecord,
        tenant: str | None,
    ) -> tuple[Ticket, RoutePlan]:
        """Wait at the router for a ticket and the plan to dispatch on (planned again over
        the load as it is then), or the refusal, raised."""
        fleet = self.fleet
        ledger = self.ledger

        def replan() -> RoutePlan:
            return planned.replan(fleet, ledger)

        held = monotonic()
        trace = record.trace
        span = None if trace is None else trace.admission(record.tier, long, held)
        admitted = False
        try:
            ticket, plan = await self.gate.wait(tier, long, wait_s, planned.plan, replan, tenant)
            admitted = True
        finally:  # refused after waiting, too: the log says how long it waited
            record.queued_s = monotonic() - held
            if trace is not None and span is not None:
                trace.end_admission(span, admitted, record.queued_s)
        record.plan = plan
        return ticket, plan
