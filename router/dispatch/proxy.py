"""forward(): the attempt loop. Try the plan's candidates in order; retry only before the
first byte of an answer; relay the answer.

Before the first byte, a connect error, a 5xx, an upstream 429, a broken connection or a
timeout (a stream's first body byte within ``ttfb_s``, a whole non-streaming answer within
``unary_s``) moves on to the next candidate, at most ``max_attempts`` tries. vLLM's
context-length 400 moves on to a candidate with a larger window (the request's likely
size was short of its true size); with none left, that 400 is the answer. After the first
byte, never: a stream gets an SSE error event and ``data: [DONE]`` (router/upstream/
relay.py); a non-streaming answer that breaks after its first byte is a 502.

Every attempt ends in exactly one ``Outcome``, recorded once by the ledger in ``finally``,
whatever happened (answer, error, timeout, the client leaving: aiohttp cancels the handler
with ``handler_cancellation=True``, the upstream connection is closed at once, and vLLM
aborts the request and frees its KV cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from time import monotonic
from typing import Final

import orjson
from aiohttp import web

from router.config import TimeoutsConfig
from router.core.breaker import BreakerState, retry_after
from router.core.classify import budget as pool_budget
from router.core.explain import owner_note, route_line
from router.errors import NoBackend, UpstreamFailed
from router.fleet.ledger import Ledger
from router.fleet.topology import Fleet
from router.model import Backend, Outcome, OutcomeKind, RequestFacts, RoutePlan
from router.observe.record import RequestRecord
from router.upstream.connection import ConnectFailed, UpstreamError, UpstreamTimeout
from router.upstream.pool import UpstreamPool, UpstreamResponse
from router.upstream.relay import relay_stream

# RFC 9110 hop-by-hop headers, plus the ones the relay recomputes
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "X-Request-ID",
        "Expect",  # the router has the whole body already: no 100-continue upstream
    )
)  # fmt: skip
_HOP_BY_HOP_RAW = frozenset(h.encode() for h in _HOP_BY_HOP)
_RESPONSE_DROP_RAW = frozenset(h.encode() for h in _HOP_BY_HOP | {"date", "server"})
_CONTEXT_400 = b"maximum context length"
# Enum members read on every request, as module globals: on Python 3.11 ``Enum.MEMBER``
# goes through EnumType.__getattr__, about 8x the cost of a global read
_SUCCESS: Final = OutcomeKind.SUCCESS


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """The attempt loop's settings, copied out of the config once: a pydantic field read
    costs about three plain attribute reads (BaseModel defines ``__getattr__``)."""

    max_attempts: int
    ttfb_s: float
    unary_s: float
    idle_read_s: float

    @classmethod
    def of(cls, max_attempts: int, timeouts: TimeoutsConfig) -> ForwardSettings:
        return cls(max_attempts, timeouts.ttfb_s, timeouts.unary_s, timeouts.idle_read_s)


def request_head_tail(incoming: Sequence[tuple[bytes, bytes]], request_id: str,
                      body_length: int) -> bytes:  # fmt: skip
    """The end-to-end headers sent upstream (the backend-specific lines are added per try),
    from the client's header lines as they came (``request.raw_headers``): bytes in,
    bytes out, nothing decoded and encoded again."""
    parts = [b"Content-Length: ", str(body_length).encode(), b"\r\nX-Request-ID: ",
             request_id.encode("latin-1", "replace"), b"\r\n"]  # fmt: skip
    for name, value in incoming:
        if name.lower() not in _HOP_BY_HOP_RAW:
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _response_headers(upstream: list[tuple[bytes, bytes]], backend: Backend, request_id: str,
                      attempts: int, route: str) -> list[tuple[str, str]]:  # fmt: skip
    # pairs, not a CIMultiDict: aiohttp builds its own from them (it would copy ours); only
    # the lines kept are decoded
    out = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in upstream
           if name.lower() not in _RESPONSE_DROP_RAW]  # fmt: skip
    out += (
        ("x-ctxroute-pool", backend.pool),
        ("x-ctxroute-backend", backend.url),
        ("x-ctxroute-attempts", str(attempts)),
        ("x-ctxroute-route", route),
        ("X-Request-ID", request_id),
    )
    return out


def _explain(plan: RoutePlan, position: int, backend: Backend, facts: RequestFacts,
             record: RequestRecord, ledger: Ledger, fleet: Fleet) -> str:  # fmt: skip
    """The request's route line (``router/core/explain.py``), kept on its record for its
    log line. ``position``: the answering backend's place among the plan's candidates."""
    unusable = ""
    if plan.bypass == "unusable":
        owner = fleet.by_url.get(plan.owner)
        if owner is not None:
            unusable = _why_unusable(ledger, owner, monotonic())
    line = route_line(plan, backend.pool, record.budget, facts.prompt.exact, record.window,
                      plan.waits_ms[position], owner_note(plan, backend.url, unusable),
                      record.queued_s, record.attempts)  # fmt: skip
    record.route = line
    return line


async def forward(
    request: web.Request,
    upstream: UpstreamPool,
    ledger: Ledger,
    fleet: Fleet,
    path: str,
    raw_body: bytes,
    facts: RequestFacts,
    plan: RoutePlan,
    request_id: str,
    settings: ForwardSettings,
    record: RequestRecord,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> web.StreamResponse:
    """``extra_headers`` go on the answer too (``x-ctxroute-fallback``). ``record`` is
    given what the attempts learned: the answering backend, attempts, first byte, tokens
    and finish reason."""
    loop = asyncio.get_running_loop()
    request_line = f"POST {path} HTTP/1.1\r\n".encode()
    host_lines = fleet.host_lines
    tail = request_head_tail(request.raw_headers, request_id, len(raw_body))
    # until a stream's first byte, or a whole answer: timed on the connection itself
    deadline = (settings.ttfb_s, "first byte") if facts.stream else (settings.unary_s, "answer")
    prompt = facts.prompt.estimate
    ended: list[tuple[Backend, Outcome]] = []
    full = 0
    refused_window = 0  # after a context-length 400 from a window, only larger ones
    refusal: tuple[int, list[tuple[bytes, bytes]], bytes, Backend, int] | None = None
    for position, backend in enumerate(plan.candidates):
        if len(ended) >= settings.max_attempts:
            break
        pool = fleet.pool_named[backend.pool]
        if pool.max_context_tokens <= refused_window:
            continue
        budget = pool_budget(prompt, facts.max_tokens, pool)
        attempt = ledger.begin(backend, prompt, budget, loop.time())
        if attempt is None:
            full += 1  # at max_in_flight: skipped, never exceeded
            continue
        outcome: Outcome | None = None
        resp: UpstreamResponse | None = None
        head = b"".join((request_line, host_lines[backend.index], tail, raw_body))
        try:
            try:
                resp = await upstream.request((backend.host, backend.port), head,
                                              deadline=deadline)  # fmt: skip
                status = resp.status
                if status >= 500 or status == 429:
                    detail = (await resp.read())[:200].decode(errors="replace")
                    kind = (OutcomeKind.BACKPRESSURE if status in (429, 503)
                            else OutcomeKind.UPSTREAM_5XX)  # fmt: skip
                    outcome = Outcome(kind, status, detail=f"status {status}: {detail}")
                    continue
                streaming = facts.stream and status == 200
                first = await (resp.next_data() if streaming else resp.read())
                resp.disarm()
                if streaming and not first:
                    detail = "the stream ended before its first byte"
                    outcome = Outcome(OutcomeKind.BROKEN, status, detail=detail)
                    continue
            except ConnectFailed as exc:
                outcome = Outcome(OutcomeKind.CONNECT_ERROR, detail=str(exc))
                continue
            except UpstreamTimeout as exc:
                outcome = Outcome(OutcomeKind.TIMEOUT, detail=str(exc))
                continue
            except UpstreamError as exc:
                outcome = Outcome(OutcomeKind.BROKEN, detail=str(exc))
                if not facts.stream and exc.response_started:
                    # the answer had begun (a non-streaming answer is sent when it is
                    # complete): retrying would generate it again, so it is lost, not retried
                    raise UpstreamFailed(
                        f"backend {backend.url} broke while sending the answer: {exc}"
                    ) from None
                continue
            # a stream's prefill ends at its first byte; a whole answer's load is settled
            # by end() in finally, in one update
            now = loop.time()
            ttft = ledger.first_byte(attempt, now) if streaming else ledger.answered(attempt, now)
            record.first_byte_at = monotonic()
            record.attempts = len(ended) + 1
            record.pool = backend.pool
            record.backend = backend.url
            record.window = pool.max_context_tokens
            record.budget = budget
            record.status = status
            if status == 400 and _CONTEXT_400 in first:
                outcome = Outcome(OutcomeKind.CONTEXT_REJECTED, status, ttft,
                                  "context length: trying a larger window")  # fmt: skip
                refused_window = pool.max_context_tokens
                refusal = (status, resp.headers, first, backend, position)
                continue
            route = _explain(plan, position, backend, facts, record, ledger, fleet)
            headers = _response_headers(resp.headers, backend, request_id, len(ended) + 1, route)
            headers += extra_headers
            if not streaming:
                kind = _SUCCESS if status < 400 else OutcomeKind.CLIENT_ERROR
                outcome = Outcome(kind, status, ttft)
                if status == 200:
                    _read_usage(first, record)
                return web.Response(status=status, body=first, headers=headers)
            out, result = await relay_stream(request, resp, first, headers, settings.idle_read_s)
            summary = result.summary
            record.finish_reason = summary.finish_reason
            if summary.prompt_tokens is not None:
                record.prompt_tokens = summary.prompt_tokens
            record.completion_tokens = summary.completion_tokens
            record.client_gone = result.client_gone
            if result.client_gone:
                outcome = Outcome(OutcomeKind.CLIENT_GONE, status, ttft)
            elif result.upstream_error is not None:
                outcome = Outcome(OutcomeKind.BROKEN, status, ttft, result.upstream_error)
            else:
                outcome = Outcome(_SUCCESS, status, ttft)
            return out
        except asyncio.CancelledError:
            if outcome is None:
                outcome = Outcome(OutcomeKind.CLIENT_GONE, detail="the client left")
            record.client_gone = True
            raise
        finally:
            if resp is not None:
                resp.close()
            if outcome is None:  # an exception nobody expected: the backend is not blamed
                outcome = Outcome(OutcomeKind.CLIENT_GONE, detail="aborted by a router error")
            ledger.end(attempt, outcome)
            ended.append((backend, outcome))
    if refusal is not None:
        # no larger window was left to try: the backend's own 400 is the answer
        status, upstream_headers, body, backend, position = refusal
        record.attempts = len(ended)
        route = _explain(plan, position, backend, facts, record, ledger, fleet)
        headers = _response_headers(upstream_headers, backend, request_id, len(ended), route)
        headers += extra_headers
        return web.Response(status=status, body=body, headers=headers)
    # the backends that could hold it, not every backend of the model: a pool whose window
    # is too small is no reason to refuse, and its breakers say nothing about when to retry
    pools = fleet.by_model[facts.model]
    backends = [b for i in plan.pools for b in pools[i].backends]
    now = monotonic()
    # when breakers keep every backend away, come back when the first may take a probe
    wait = ledger.store.retry_after(backends, now)
    record.attempts = len(ended)
    raise NoBackend(_no_backend_message(plan, ended, full, ledger, backends, now),
                    retry_after=wait if wait else 1.0)  # fmt: skip


def _read_usage(body: bytes, record: RequestRecord) -> None:
    """finish_reason and token usage of a whole (non-streaming) answer: the one parse of
    the answer's body the router makes."""
    try:
        answer = orjson.loads(body)
        choice = answer["choices"][0]
        usage = answer.get("usage") or {}
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return  # not an OpenAI answer: nothing to count
    reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    record.finish_reason = reason if isinstance(reason, str) else None
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if isinstance(prompt, int):
        record.prompt_tokens = prompt
    if isinstance(completion, int):
        record.completion_tokens = completion


def _why_unusable(ledger: Ledger, backend: Backend, now: float) -> str:
    store = ledger.store
    i = backend.index
    if store.drained(i):
        return "drained"
    if store.memory_open(i):
        return "KV cache under pressure"
    b = store.breaker(i)
    if b.state is not BreakerState.CLOSED:
        wait = retry_after(b, now)
        return f"breaker {b.state.value}" + (f", probe in {wait:.1f}s" if wait else "")
    if not ledger.up[i]:
        return "down"
    return "at max_in_flight"


def _no_backend_message(plan: RoutePlan, ended: list[tuple[Backend, Outcome]], full: int,
                        ledger: Ledger, backends: list[Backend], now: float) -> str:  # fmt: skip
    if not plan.candidates:
        parts = [f"{b.url} ({b.pool}): {_why_unusable(ledger, b, now)}" for b in backends]
        return "no backend can take this request now: " + "; ".join(parts)
    parts = [f"{b.url} ({b.pool}): {o.detail}" for b, o in ended]
    if full:
        parts.append(f"{full} skipped (at max_in_flight, or a breaker or drain took effect)")
    if not ended:
        return "no backend can take this request: " + "; ".join(parts)
    tried = f"{len(ended)} backend{'s' if len(ended) != 1 else ''} tried"
    return f"no backend answered ({tried}): " + "; ".join(parts)


__all__ = ["ForwardSettings", "forward", "request_head_tail"]
