"""OpenTelemetry traces: a streamed request through two attempts is one trace (the
client's), with the request's span, its admission, each attempt and the first byte, the
routing explanation and the tenant as attributes; each attempt sends the backend its own
traceparent. Seen in the SDK's in-memory exporter and at a real OTLP/HTTP receiver on
loopback. Off, the client's trace headers go upstream as they came."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from ctxroute.backends.simulator import Simulator
from ctxroute.router.core.keys import digest, new_key
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import SimFactory
from tests.fixtures.router import RunningRouter
from tests.integration.test_breakers import RouterFactory, faults, one_pool

CHAT = "/v1/chat/completions"
KEY = new_key()
TRACE_ID = secrets.token_hex(16)
CLIENT_SPAN = secrets.token_hex(8)
BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 8, "stream": True}  # fmt: skip


@dataclass
class Seen:
    """A span as either exporter gives it: hex ids, the parent's id, attributes."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    attributes: dict[str, Any] = field(default_factory=dict)
    error: bool = False


def from_sdk(exporter: InMemorySpanExporter) -> list[Seen]:
    out = []
    for s in exporter.get_finished_spans():
        parent = None if s.parent is None else f"{s.parent.span_id:016x}"
        out.append(Seen(s.name, f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}",
                        parent, s.kind.name, dict(s.attributes or {}),
                        s.status.status_code.name == "ERROR"))  # fmt: skip
    return out


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def from_otlp(request: ExportTraceServiceRequest) -> list[Seen]:
    kinds = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT"}
    out = []
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for s in scope.spans:
                out.append(Seen(s.name, s.trace_id.hex(), s.span_id.hex(),
                                s.parent_span_id.hex() or None, kinds.get(s.kind, str(s.kind)),
                                {a.key: _value(a.value) for a in s.attributes},
                                s.status.code == 2))  # fmt: skip
    return out


async def two_attempt_stream(router: RunningRouter, first: Simulator) -> str:
    """Stream one request whose first candidate answers 500 before any byte: the second
    answers. Returns the body the client got."""
    headers = {"Authorization": f"Bearer {KEY}", "x-session-id": "trace-me",
               "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}  # fmt: skip
    async with aiohttp.ClientSession() as s:
        await faults(s, first, burst_5xx=1)
        async with s.post(router.url + CHAT, json=BODY, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert r.headers["x-ctxroute-attempts"] == "2"
            return await r.text()


async def owner_of_session(router: RunningRouter, sims: list[Simulator]) -> Simulator:
    """The backend the session's requests go to first (its hash owner)."""
    headers = {"Authorization": f"Bearer {KEY}", "x-session-id": "trace-me"}
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + CHAT, json={**BODY, "stream": False},
                          headers=headers) as r:  # fmt: skip
            assert r.status == 200
            url = r.headers["x-ctxroute-backend"]
    return next(sim for sim in sims if sim.url == url)


def check_trace(spans: list[Seen], sims: list[Simulator], first: Simulator) -> None:
    mine = [s for s in spans if s.trace_id == TRACE_ID]
    # the request, its admission, two attempts and each one's wait for a first byte
    assert sorted(s.name for s in mine) == sorted(
        [f"POST {CHAT}", "admission", "attempt 1", "attempt 2", "first byte", "first byte"]
    ), mine
    by_name = {s.name: s for s in mine}
    request = by_name[f"POST {CHAT}"]
    assert request.kind == "SERVER" and request.parent_id == CLIENT_SPAN
    a = request.attributes
    assert a["ctxroute.pool"] == "only" and a["ctxroute.tenant"] == "acme"
    assert a["ctxroute.attempts"] == 2 and a["http.response.status_code"] == 200
    assert a["ctxroute.budget_tokens"] > 0 and "ctxroute.held_ms" in a
    assert a["ctxroute.hash_owner_kept"].startswith("no (")  # its owner failed first
    assert "only" in a["ctxroute.route"]  # the x-ctxroute-route line
    admission = by_name["admission"]
    assert admission.parent_id == request.span_id
    assert admission.attributes["ctxroute.admission"] == "admitted"
    one, two = by_name["attempt 1"], by_name["attempt 2"]
    for attempt in (one, two):
        assert attempt.kind == "CLIENT" and attempt.parent_id == request.span_id
    assert one.attributes["ctxroute.outcome"] == "upstream_5xx" and one.error
    assert one.attributes["http.response.status_code"] == 500
    assert two.attributes["ctxroute.outcome"] == "success" and not two.error
    assert one.attributes["ctxroute.backend"] != two.attributes["ctxroute.backend"]
    firsts = [s for s in mine if s.name == "first byte"]
    assert {f.parent_id for f in firsts} == {one.span_id, two.span_id}
    answered = next(f for f in firsts if f.parent_id == two.span_id)
    assert answered.attributes["http.response.status_code"] == 200
    # each backend got its own attempt's span as the parent of its work
    second = next(sim for sim in sims if sim is not first)
    assert first.last_traceparent == f"00-{TRACE_ID}-{one.span_id}-01"
    assert second.last_traceparent == f"00-{TRACE_ID}-{two.span_id}-01"


def traced(sims: list[Simulator], **tracing: Any) -> Any:
    keys = [{"sha256": digest(KEY), "tenant": "acme"}]
    return one_pool(sims, auth={"keys": keys}, tracing=tracing,
                    breakers={"consecutive_failures": 50})  # fmt: skip


async def test_two_attempts_make_one_trace_in_the_sdk(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    sims = [await make_sim(model="sim-model", seed=i) for i in range(2)]
    exporter = InMemorySpanExporter()
    router = await make_router(traced(sims), span_exporter=exporter)
    first = await owner_of_session(router, sims)
    exporter.clear()
    body = await two_attempt_stream(router, first)
    assert body.rstrip().endswith("data: [DONE]")
    for _ in range(100):  # the request's span ends in the handler, just after the stream
        if any(s.name == f"POST {CHAT}" for s in from_sdk(exporter)):
            break
        await asyncio.sleep(0.02)
    check_trace(from_sdk(exporter), sims, first)


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[tuple[str, list[Seen]]]:
    """A real OTLP/HTTP receiver on loopback: POST /v1/traces, protobuf bodies."""
    got: list[Seen] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        got.extend(from_otlp(message))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1/traces", got
    await runner.cleanup()


async def test_two_attempts_make_one_trace_at_an_otlp_receiver(
    make_sim: SimFactory, make_router: RouterFactory, otlp_receiver: tuple[str, list[Seen]]
) -> None:
    endpoint, got = otlp_receiver
    sims = [await make_sim(model="sim-model", seed=i) for i in range(2)]
    config = traced(sims, endpoint=endpoint, export_interval_ms=50, service_name="edge-1")
    router = await make_router(config)
    first = await owner_of_session(router, sims)
    await two_attempt_stream(router, first)
    for _ in range(250):  # exported in batches from the processor's thread
        if any(s.name == f"POST {CHAT}" and s.trace_id == TRACE_ID for s in got):
            break
        await asyncio.sleep(0.02)
    check_trace(got, sims, first)


async def test_sampling_keeps_a_share_and_follows_the_clients_decision(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    sims = [await make_sim(model="sim-model")]
    exporter = InMemorySpanExporter()
    router = await make_router(traced(sims, sample_ratio=0.0), span_exporter=exporter)
    sampled = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    async with aiohttp.ClientSession() as s:
        for traceparent in (None, None, sampled):
            headers = {"Authorization": f"Bearer {KEY}"}
            if traceparent:
                headers["traceparent"] = traceparent
            async with s.post(router.url + CHAT, json=BODY, headers=headers) as r:
                assert r.status == 200
                await r.read()
            await asyncio.sleep(0.05)
            if traceparent is None:  # ours, at ratio 0: not kept, but still propagated
                assert sims[0].last_traceparent is not None
                flags = int(sims[0].last_traceparent.rsplit("-", 1)[1], 16)
                assert not flags & 1  # the sampled flag is off
    spans = from_sdk(exporter)
    # only the client's sampled trace was kept
    assert spans and {s.trace_id for s in spans} == {TRACE_ID}


async def test_without_tracing_the_clients_trace_headers_go_upstream_untouched(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(one_pool([sim]))
    assert router.ctx.tracing is None
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + CHAT, json=BODY,
                          headers={"traceparent": traceparent}) as r:  # fmt: skip
            assert r.status == 200
            await r.read()
    assert sim.last_traceparent == traceparent


async def test_a_hostile_traceparent_starts_a_new_trace(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    sims = [await make_sim(model="sim-model")]
    exporter = InMemorySpanExporter()
    router = await make_router(traced(sims), span_exporter=exporter)
    for bad in ("00-" + "0" * 32 + "-" + CLIENT_SPAN + "-01", "garbage", "00-" + "f" * 4000):
        async with aiohttp.ClientSession() as s:
            headers = {"Authorization": f"Bearer {KEY}", "traceparent": bad}
            async with s.post(router.url + CHAT, json=BODY, headers=headers) as r:
                assert r.status == 200
                await r.read()
        assert sims[0].last_traceparent is not None and bad not in sims[0].last_traceparent
    await asyncio.sleep(0.1)
    roots = [s for s in from_sdk(exporter) if s.name == f"POST {CHAT}"]
    assert len(roots) == 3 and all(r.parent_id is None for r in roots)


def test_check_config_names_a_bad_tracing_section() -> None:
    from ctxroute.router.config import ConfigError, parse_config

    data = {"pools": [{"name": "p", "model": "m", "max_context_tokens": 2048,
                       "backends": [{"url": "http://127.0.0.1:9"}]}],
            "tracing": {"endpoint": "otel:4318", "sample_ratio": 2}}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ={})
    said = str(caught.value)
    assert "tracing.endpoint: must be an http:// or https:// URL" in said
    assert "tracing.sample_ratio" in said
