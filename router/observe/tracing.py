"""OpenTelemetry traces of completion requests (``tracing.endpoint``; off by default).

One trace per request: a SERVER span for the request (its parent the client's W3C
``traceparent`` when it sent one), with children for its admission (held at the router,
or admitted at once), each attempt (a CLIENT span: backend, pool, outcome) and, inside an
attempt that got one, the wait for its first byte. Each attempt sends vLLM its own
``traceparent``, so the spans of a vLLM started with ``--otlp-traces-endpoint`` join the
trace under the attempt that caused them; the client's ``traceparent`` is not passed on
as it came (it would make vLLM's spans siblings of ours).

Off, none of this runs: the app has no ``Tracing``, requests carry ``trace = None``, and the
client's trace headers go upstream untouched. This module is imported only when tracing is
configured (the SDK costs ~100 ms to import)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from ctxroute.router.config import TracingConfig
from ctxroute.router.core.explain import owner_note
from ctxroute.router.model import Backend, Outcome, OutcomeKind
from ctxroute.router.observe.record import RequestRecord
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# outcomes that say the backend (or the way to it) failed, as opposed to the client leaving
_FAILED = frozenset(
    {
        OutcomeKind.CONNECT_ERROR,
        OutcomeKind.TIMEOUT,
        OutcomeKind.UPSTREAM_5XX,
        OutcomeKind.BROKEN,
        OutcomeKind.BACKPRESSURE,
    }
)


class Tracing:
    """The app's tracer. ``exporter``: where spans go instead of OTLP/HTTP (tests hand an
    in-memory one; it is exported synchronously, span by span)."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"service.name": config.service_name})
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        if exporter is None:
            assert config.endpoint is not None
            exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers),
                                        timeout=config.export_timeout_s)  # fmt: skip
            # spans are sent from the processor's thread, never from the event loop
            self.provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=config.export_interval_ms)
            )
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("ctxroute.router")
        self.propagator = TraceContextTextMapPropagator()

    def begin(self, headers: Mapping[str, str], method: str, path: str, request_id: str
              ) -> RequestTrace:  # fmt: skip
        """The span of a request that has just arrived (a child of the client's span when
        its ``traceparent`` is valid; the propagator ignores one that is not)."""
        parent = self.propagator.extract(headers)
        span = self.tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "ctxroute.request_id": request_id,
            },
        )
        return RequestTrace(self, span)

    async def close(self) -> None:
        """Export what is left and stop (in a thread: the exporter blocks on its POST)."""
        await asyncio.to_thread(self.provider.shutdown)


class RequestTrace:
    """One request's spans."""

    __slots__ = ("context", "span", "tracing")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self.tracing = tracing
        self.span = span
        self.context = trace.set_span_in_context(span)

    def admission(self, tier: str, long: bool, held_at: float | None = None) -> Span:
        """The admission span: from ``held_at`` (monotonic; None: now) until it ends."""
        start = None if held_at is None else _wall_ns(held_at)
        return self.tracing.tracer.start_span(
            "admission",
            context=self.context,
            start_time=start,
            attributes={"ctxroute.tier": tier, "ctxroute.long": long},
        )

    def admitted_at_once(self, tier: str, long: bool) -> None:
        self.end_admission(self.admission(tier, long), True, 0.0)

    @staticmethod
    def end_admission(span: Span, admitted: bool, held_s: float) -> None:
        span.set_attribute("ctxroute.admission", "admitted" if admitted else "refused")
        span.set_attribute("ctxroute.held_ms", round(held_s * 1000.0, 3))
        span.end()

    def attempt(self, backend: Backend, position: int, number: int) -> AttemptTrace:
        span = self.tracing.tracer.start_span(
            f"attempt {number}",
            context=self.context,
            kind=SpanKind.CLIENT,
            attributes={
                "ctxroute.attempt": number,
                "ctxroute.backend": backend.name,
                "ctxroute.pool": backend.pool,
                "ctxroute.candidate_position": position,
                "server.address": backend.host,
                "server.port": backend.port,
            },
        )
        return AttemptTrace(self.tracing, span)

    def end(self, record: RequestRecord) -> None:
        """The request ended: what it did, from its record, then the span ends."""
        span = self.span
        if span.is_recording():
            span.set_attributes(_request_attributes(record))
            if record.status >= 500 or record.status == 0:
                span.set_status(Status(StatusCode.ERROR, record.reject or "no answer"))
        span.end()


class AttemptTrace:
    """One attempt's span, and its first-byte child while it waits for one."""

    __slots__ = ("first", "span", "traceparent")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self.span = span
        context = trace.set_span_in_context(span)
        self.first: Span | None = tracing.tracer.start_span("first byte", context=context)
        carrier: dict[str, str] = {}
        tracing.propagator.inject(carrier, context=context)
        # the header lines vLLM gets (traceparent, and tracestate when the client sent one)
        self.traceparent = b"".join(
            f"{name}: {value}\r\n".encode("latin-1", "replace") for name, value in carrier.items()
        )

    def first_byte(self, status: int) -> None:
        if self.first is not None:
            self.first.set_attribute("http.response.status_code", status)
            self.first.end()
            self.first = None

    def end(self, outcome: Outcome) -> None:
        if self.first is not None:  # it never got one
            self.first.end()
            self.first = None
        span = self.span
        if span.is_recording():
            span.set_attribute("ctxroute.outcome", outcome.kind.value)
            if outcome.status:
                span.set_attribute("http.response.status_code", outcome.status)
            if outcome.detail:
                span.set_attribute("ctxroute.outcome_detail", outcome.detail[:256])
            if outcome.kind in _FAILED:
                span.set_status(Status(StatusCode.ERROR, outcome.kind.value))
        span.end()


def _request_attributes(record: RequestRecord) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {
        "http.response.status_code": record.status,
        "gen_ai.request.model": record.model,
        "ctxroute.stream": record.stream,
        "ctxroute.attempts": record.attempts,
        "ctxroute.held_ms": round(record.queued_s * 1000.0, 3),
    }
    optional: dict[str, str | int | None] = {
        "ctxroute.tenant": record.tenant or None,
        "ctxroute.tier": record.tier or None,
        "ctxroute.pool": record.pool or None,
        "ctxroute.backend": record.backend or None,
        "ctxroute.budget_tokens": record.budget or None,
        "ctxroute.window_tokens": record.window or None,
        "ctxroute.route": record.route or None,
        "ctxroute.reject": record.reject,
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "gen_ai.response.finish_reason": record.finish_reason,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    plan = record.plan
    if plan is not None and plan.owner:
        out["ctxroute.hash_owner_kept"] = owner_note(plan, record.backend)
    if record.client_gone:
        out["ctxroute.client_gone"] = True
    if record.indicators:  # prompt-injection indicators it tripped (docs/indicators.md)
        out["ctxroute.indicators"] = ",".join(record.indicators)
        if record.blocked:
            out["ctxroute.blocked"] = record.blocked
    return out


def _wall_ns(monotonic_s: float) -> int:
    """A monotonic instant as the wall-clock nanoseconds spans are stamped with."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)
