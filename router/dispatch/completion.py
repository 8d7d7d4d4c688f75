"""A completion request's way from its parsed body to its answer: facts, plan (and the
fallback model), admission at the door, the attempt loop. The HTTP face reads the request
and hands it over here; what one request did is written to its ``RequestRecord``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from time import monotonic
from typing import Any

import orjson
from aiohttp import web
from ctxroute.router.core.facts import priority_value, read_facts, timeout_s
from ctxroute.router.core.tokens import TokenCounter
from ctxroute.router.dispatch.gate import Gate, Ticket
from ctxroute.router.dispatch.proxy import Exchange, Proxy
from ctxroute.router.dispatch.routing import Route, fallback_route, route
from ctxroute.router.fleet.ledger import Ledger
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.model import RoutePlan
from ctxroute.router.observe.record import RequestRecord

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

    async def complete(
        self, request: web.Request, asked: Asked, request_id: str, record: RequestRecord
    ) -> web.StreamResponse:
        fleet = self.fleet
        body = asked.body
        facts = read_facts(
            body,
            chat=asked.chat,
            session=asked.session,
            models=fleet.models,
            counters=self.counters,
            prefix_chars=self.prefix_chars,
        )
        record.prompt_tokens = facts.prompt.estimate  # the backend's usage replaces it
        record.model = facts.model
        record.stream = facts.stream
        view_of = self.ledger.views()  # the plan and the verdict on it see the same fleet
        planned = route(facts, fleet, view_of)
        record.pool = planned.plan.preferred
        record.plan = planned.plan
        raw = asked.raw
        extra: tuple[tuple[str, str], ...] = ()
        small = self.fallback.get(facts.model) if not planned.plan.candidates else None
        alternative = None if small is None else fallback_route(facts, small, fleet, view_of)
        if alternative is not None:
            # the small model's servers know only their own name: the body says it
            big = facts.model
            planned = alternative
            body["model"] = alternative.facts.model
            raw = orjson.dumps(body)
            extra = (("x-ctxroute-fallback", f"{big}->{alternative.facts.model}"),)
            log.info(
                "request %s: every backend of %s is unusable, answered by %s",
                request_id,
                big,
                alternative.facts.model,
            )
        settings = self.gate.settings
        field = body.get("priority")
        tier = (
            settings.default_tier
            if asked.priority is None and field is None
            else settings.tier_of(priority_value(asked.priority, field))
        )
        wait_s = None if asked.timeout is None else timeout_s(asked.timeout)
        record.tier = settings.tiers[tier].name
        long = fleet.work.is_long(planned.facts.prompt.estimate)
        plan = planned.plan
        ticket = self.gate.admit_now(tier, long, wait_s, plan, view_of)
        if ticket is None:
            ticket, plan = await self._wait(planned, tier, long, wait_s, record)
        try:
            exchange = Exchange(
                request, asked.path, raw, planned.facts, plan, request_id, record, extra
            )
            return await self.proxy.forward(exchange)
        finally:
            ticket.release()

    async def _wait(self, planned: Route, tier: int, long: bool, wait_s: float | None,
                    record: RequestRecord) -> tuple[Ticket, RoutePlan]:  # fmt: skip
        """Wait at the router for a ticket and the plan to dispatch on (planned again over
        the load as it is then), or the refusal, raised."""
        fleet = self.fleet
        ledger = self.ledger

        def replan() -> RoutePlan:
            return planned.replan(fleet, ledger)

        held = monotonic()
        try:
            ticket, plan = await self.gate.wait(tier, long, wait_s, planned.plan, replan)
        finally:  # refused after waiting, too: the log says how long it waited
            record.queued_s = monotonic() - held
        record.plan = plan
        return ticket, plan
