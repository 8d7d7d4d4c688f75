"""``Proxy.forward``: the attempt loop. Try the plan's candidates in order; retry only before the
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
from dataclasses import dataclass, field
from time import monotonic
from typing import Final

from aiohttp import web

from router.config import TimeoutsConfig
from router.core.classify import budget as pool_budget
from router.core.planner import PoolView
from router.dispatch.answer import (
    no_backend_message,
    read_usage,
    request_head_tail,
    response_headers,
    route_line_of,
)
from router.errors import NoBackend, UpstreamFailed
from router.fleet.ledger import Attempt, Ledger
from router.fleet.topology import Fleet
from router.model import Backend, Outcome, OutcomeKind, RequestFacts, RoutePlan
from router.observe.record import RequestRecord
from router.upstream.connection import ConnectFailed, UpstreamError, UpstreamTimeout
from router.upstream.pool import UpstreamPool, UpstreamResponse
from router.upstream.relay import relay_stream

_CONTEXT_400: Final = b"maximum context length"


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """The attempt loop's settings, copied out of the config once: a pydantic field read
    costs about three plain attribute reads (BaseModel defines ``__getattr__``), and these
    are read on every attempt."""

    max_attempts: int
    ttfb_s: float
    unary_s: float
    idle_read_s: float

    @classmethod
    def of(cls, max_attempts: int, timeouts: TimeoutsConfig) -> ForwardSettings:
        return cls(max_attempts, timeouts.ttfb_s, timeouts.unary_s, timeouts.idle_read_s)


@dataclass(slots=True)
class Exchange:
    """One request on its way to a backend: what every attempt at it shares. ``record`` is
    given what the attempts learn: the answering backend, attempts, first byte, tokens and
    finish reason. ``extra_headers`` go on the answer too (``x-ctxroute-fallback``)."""

    request: web.Request
    path: str
    body: bytes
    facts: RequestFacts
    plan: RoutePlan
    request_id: str
    record: RequestRecord
    extra_headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class ContextRefusal:
    """vLLM's context-length 400 from a window: the answer if no larger window is left."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    backend: Backend
    position: int


@dataclass(slots=True)
class Tried:
    """What the attempts so far left behind."""

    ended: list[tuple[Backend, Outcome]] = field(default_factory=list)
    skipped_at_capacity: int = 0  # at max_in_flight when their turn came: never exceeded
    refused_window: int = 0  # after a context-length 400 from a window, only larger ones
    refusal: ContextRefusal | None = None


class _Step:
    """One attempt's response and how it ended, for its ``finally``."""

    __slots__ = ("outcome", "response")

    def __init__(self) -> None:
        self.response: UpstreamResponse | None = None
        self.outcome: Outcome | None = None


class Proxy:
    def __init__(
        self, upstream: UpstreamPool, ledger: Ledger, fleet: Fleet, settings: ForwardSettings
    ) -> None:
        self.upstream = upstream
        self.ledger = ledger
        self.fleet = fleet
        self.settings = settings

    async def forward(self, x: Exchange) -> web.StreamResponse:
        """Try the plan's candidates in order, as the module's docstring says."""
        tried = Tried()
        head = (
            f"POST {x.path} HTTP/1.1\r\n".encode(),
            request_head_tail(x.request.raw_headers, x.request_id, len(x.body)),
        )
        for position, backend in enumerate(x.plan.candidates):
            if len(tried.ended) >= self.settings.max_attempts:
                break
            pool = self.fleet.pool_named[backend.pool]
            if pool.max_context_tokens <= tried.refused_window:
                continue
            answer = await self._attempt(x, head, tried, position, backend, pool)
            if answer is not None:
                return answer
        if tried.refusal is not None:
            return self._context_refusal(x, tried)
        raise self._no_backend(x, tried)

    async def _attempt(
        self,
        x: Exchange,
        head: tuple[bytes, bytes],
        tried: Tried,
        position: int,
        backend: Backend,
        pool: PoolView,
    ) -> web.StreamResponse | None:
        """One attempt on ``backend``: its answer, or None to try the next candidate. It
        ends in exactly one outcome, recorded by the ledger in ``finally``."""
        prompt = x.facts.prompt.estimate
        budget = pool_budget(prompt, x.facts.max_tokens, pool)
        loop = asyncio.get_running_loop()
        attempt = self.ledger.begin(backend, prompt, budget, loop.time())
        if attempt is None:
            tried.skipped_at_capacity += 1
            return None
        step = _Step()
        try:
            data = b"".join((head[0], self.fleet.host_lines[backend.index], head[1], x.body))
            first = await self._first_bytes(x, backend, data, step)
            if first is None:
                return None
            return await self._answer(
                x, tried, position, backend, pool, budget, attempt, step, first
            )
        except asyncio.CancelledError:
            if step.outcome is None:
                step.outcome = Outcome(OutcomeKind.CLIENT_GONE, detail="the client left")
            x.record.client_gone = True
            raise
        finally:
            if step.response is not None:
                step.response.close()
            outcome = step.outcome
            if outcome is None:  # an exception nobody expected: the backend is not blamed
                outcome = Outcome(OutcomeKind.CLIENT_GONE, detail="aborted by a router error")
            self.ledger.end(attempt, outcome)
            tried.ended.append((backend, outcome))

    async def _first_bytes(
        self, x: Exchange, backend: Backend, data: bytes, step: _Step
    ) -> bytes | None:
        """Send the request; the first bytes of its answer (a stream's first chunk, a whole
        answer), or None with ``step.outcome`` saying why the next candidate is tried."""
        settings = self.settings
        # until a stream's first byte, or a whole answer: timed on the connection itself
        deadline = (
            (settings.ttfb_s, "first byte") if x.facts.stream else (settings.unary_s, "answer")
        )
        try:
            resp = await self.upstream.request(
                (backend.host, backend.port), data, deadline=deadline
            )
            step.response = resp
            status = resp.status
            if status >= 500 or status == 429:
                detail = (await resp.read())[:200].decode(errors="replace")
                kind = (
                    OutcomeKind.BACKPRESSURE if status in (429, 503) else OutcomeKind.UPSTREAM_5XX
                )
                step.outcome = Outcome(kind, status, detail=f"status {status}: {detail}")
                return None
            streaming = x.facts.stream and status == 200
            first = await (resp.next_data() if streaming else resp.read())
            resp.disarm()
            if streaming and not first:
                detail = "the stream ended before its first byte"
                step.outcome = Outcome(OutcomeKind.BROKEN, status, detail=detail)
                return None
            return first
        except ConnectFailed as exc:
            step.outcome = Outcome(OutcomeKind.CONNECT_ERROR, detail=str(exc))
        except UpstreamTimeout as exc:
            step.outcome = Outcome(OutcomeKind.TIMEOUT, detail=str(exc))
        except UpstreamError as exc:
            step.outcome = Outcome(OutcomeKind.BROKEN, detail=str(exc))
            if not x.facts.stream and exc.response_started:
                # the answer had begun (a non-streaming answer is sent when it is
                # complete): retrying would generate it again, so it is lost, not retried
                raise UpstreamFailed(
                    f"backend {backend.url} broke while sending the answer: {exc}"
                ) from None
        return None

    async def _answer(
        self,
        x: Exchange,
        tried: Tried,
        position: int,
        backend: Backend,
        pool: PoolView,
        budget: int,
        attempt: Attempt,
        step: _Step,
        first: bytes,
    ) -> web.StreamResponse | None:
        """The backend answered: settle its first byte, then answer the client (None: a
        context-length 400, to try a larger window)."""
        resp = step.response
        assert resp is not None
        status = resp.status
        streaming = x.facts.stream and status == 200
        record = x.record
        # a stream's prefill ends at its first byte; a whole answer's load is settled by
        # end() in finally, in one update
        now = asyncio.get_running_loop().time()
        ledger = self.ledger
        ttft = ledger.first_byte(attempt, now) if streaming else ledger.answered(attempt, now)
        record.first_byte_at = monotonic()
        record.attempts = len(tried.ended) + 1
        record.pool = backend.pool
        record.backend = backend.url
        record.window = pool.max_context_tokens
        record.budget = budget
        record.status = status
        if status == 400 and _CONTEXT_400 in first:
            step.outcome = Outcome(
                OutcomeKind.CONTEXT_REJECTED, status, ttft, "context length: trying a larger window"
            )
            tried.refused_window = pool.max_context_tokens
            tried.refusal = ContextRefusal(status, resp.headers, first, backend, position)
            return None
        headers = self._headers(x, resp.headers, backend, position, len(tried.ended) + 1)
        if not streaming:
            kind = OutcomeKind.SUCCESS if status < 400 else OutcomeKind.CLIENT_ERROR
            step.outcome = Outcome(kind, status, ttft)
            if status == 200:
                read_usage(first, record)
            return web.Response(status=status, body=first, headers=headers)
        out, result = await relay_stream(x.request, resp, first, headers, self.settings.idle_read_s)
        summary = result.summary
        record.finish_reason = summary.finish_reason
        if summary.prompt_tokens is not None:
            record.prompt_tokens = summary.prompt_tokens
        record.completion_tokens = summary.completion_tokens
        record.client_gone = result.client_gone
        if result.client_gone:
            step.outcome = Outcome(OutcomeKind.CLIENT_GONE, status, ttft)
        elif result.upstream_error is not None:
            step.outcome = Outcome(OutcomeKind.BROKEN, status, ttft, result.upstream_error)
        else:
            step.outcome = Outcome(OutcomeKind.SUCCESS, status, ttft)
        return out

    def _headers(
        self,
        x: Exchange,
        upstream: list[tuple[bytes, bytes]],
        backend: Backend,
        position: int,
        attempts: int,
    ) -> list[tuple[str, str]]:
        """The answer's headers, with the route line (kept on the record for the log)."""
        line = route_line_of(x.plan, position, backend, x.facts, x.record, self.ledger, self.fleet)
        x.record.route = line
        headers = response_headers(upstream, backend, x.request_id, attempts, line)
        headers += x.extra_headers
        return headers

    def _context_refusal(self, x: Exchange, tried: Tried) -> web.Response:
        """No larger window was left to try: the backend's own 400 is the answer."""
        refusal = tried.refusal
        assert refusal is not None
        x.record.attempts = len(tried.ended)
        headers = self._headers(
            x, refusal.headers, refusal.backend, refusal.position, len(tried.ended)
        )
        return web.Response(status=refusal.status, body=refusal.body, headers=headers)

    def _no_backend(self, x: Exchange, tried: Tried) -> NoBackend:
        # the backends that could hold it, not every backend of the model: a pool whose
        # window is too small is no reason to refuse, and its breakers say nothing about
        # when to retry
        pools = self.fleet.by_model[x.facts.model]
        backends = [b for i in x.plan.pools for b in pools[i].backends]
        now = monotonic()
        # when breakers keep every backend away, come back when the first may take a probe
        wait = self.ledger.store.retry_after(backends, now)
        x.record.attempts = len(tried.ended)
        message = no_backend_message(
            x.plan, tried.ended, tried.skipped_at_capacity, self.ledger, backends, now
        )
        return NoBackend(message, retry_after=wait if wait else 1.0)


__all__ = ["Exchange", "ForwardSettings", "Proxy", "request_head_tail"]
