"""``Proxy.forward``: the attempt loop. Try the plan's candidates in order; retry only before the
first byte of an answer; relay the answer.

Before the first byte, a connect error, a 5xx, an upstream 429, a broken connection or a
timeout (a stream's first body byte within ``ttfb_s``, a whole non-streaming answer within
``unary_s``) moves on to the next candidate, at most ``max_attempts`` tries; a failure that
may have reached the engine (all but a refused connection and a 429/503) only while the
retry budget allows (``core/retrybudget.py``: it would prefill the prompt again). vLLM's
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
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Final, NamedTuple

import orjson
from aiohttp import web
from ctxroute.router.config import RetryBudgetConfig, RoutingConfig, TimeoutsConfig
from ctxroute.router.core.classify import budget as pool_budget
from ctxroute.router.core.leakage import LeakWatch
from ctxroute.router.core.planner import PoolView
from ctxroute.router.core.retrybudget import RetryBudget
from ctxroute.router.dispatch.answer import (
    hide_address,
    no_backend_message,
    read_usage,
    request_head_tail,
    response_headers,
    route_line_of,
)
from ctxroute.router.dispatch.indicators import Indicators, leaked
from ctxroute.router.errors import NoBackend, UpstreamFailed, UpstreamTimedOut
from ctxroute.router.fleet.ledger import Attempt, Ledger
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.model import Backend, Outcome, OutcomeKind, RequestFacts, RoutePlan
from ctxroute.router.observe.record import RequestRecord
from ctxroute.router.upstream.connection import ConnectFailed, UpstreamError, UpstreamTimeout
from ctxroute.router.upstream.pool import UpstreamPool, UpstreamResponse
from ctxroute.router.upstream.relay import Relays, relay_stream

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from ctxroute.router.observe.tracing import AttemptTrace

_CONTEXT_400: Final = b"maximum context length"
_EMPTY_STREAM: Final = "the stream ended before its first byte"
_LARGER_WINDOW: Final = "context length: trying a larger window"


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """The attempt loop's settings, copied out of the config once (why:
    docs/architecture.md, "Performance budget")."""

    max_attempts: int
    ttfb_s: float
    unary_s: float
    idle_read_s: float
    retry_budget: RetryBudgetConfig

    @classmethod
    def of(cls, routing: RoutingConfig, timeouts: TimeoutsConfig) -> ForwardSettings:
        return cls(routing.max_attempts, timeouts.ttfb_s, timeouts.unary_s,
                   timeouts.idle_read_s, routing.retry_budget)  # fmt: skip


# a failed attempt that provably cost no engine work: tried elsewhere outside the budget
_FREE_RETRY: Final = frozenset(
    {OutcomeKind.CONNECT_ERROR, OutcomeKind.BACKPRESSURE, OutcomeKind.CONTEXT_REJECTED}
)


class Exchange:
    """One request on its way to a backend: what every attempt at it shares, and what the
    attempts so far left behind. ``record`` is given what the attempts learn: the
    answering backend, attempts, first byte, tokens and finish reason. ``extra_headers``
    go on the answer too (``x-ctxroute-fallback``)."""

    __slots__ = ("body", "budget_spent", "chat", "ended", "extra_headers", "facts", "leak",
                 "path", "plan", "record", "refusal", "refused_window", "request", "request_id",
                 "skipped_at_capacity")  # fmt: skip

    def __init__(self, request: web.Request, path: str, body: bytes, facts: RequestFacts,
                 plan: RoutePlan, request_id: str, record: RequestRecord,
                 extra_headers: tuple[tuple[str, str], ...] = (), chat: bool = True,
                 leak: LeakWatch | None = None) -> None:  # fmt: skip
        self.request = request
        self.path = path
        self.body = body
        self.facts = facts
        self.plan = plan
        self.request_id = request_id
        self.record = record
        self.extra_headers = extra_headers
        self.chat = chat
        self.leak = leak  # the answer's watch for quotes of its system message, if any
        self.ended: list[tuple[Backend, Outcome]] = []  # each attempt, with how it ended
        self.skipped_at_capacity = 0  # at max_in_flight when their turn came: never exceeded
        self.refused_window = 0  # after a context-length 400 from a window, only larger ones
        self.refusal: ContextRefusal | None = None
        self.budget_spent = False  # a retry was due and the retry budget refused it

    def end(self, backend: Backend, outcome: Outcome, span: AttemptTrace | None) -> None:
        """An attempt ended: it counts in the request's log line however it ended (a
        client that leaves during a prefill still had it sent), and in its trace."""
        self.ended.append((backend, outcome))
        self.record.attempts = len(self.ended)
        if span is not None:
            span.end(outcome)


class ContextRefusal(NamedTuple):
    """vLLM's context-length 400 from a window: the answer if no larger window is left."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    backend: Backend
    position: int


class Proxy:
    def __init__(self, upstream: UpstreamPool, ledger: Ledger, fleet: Fleet,
                 settings: ForwardSettings,
                 indicators: Indicators | None = None) -> None:  # fmt: skip
        self.upstream = upstream
        self.indicators = indicators
        self.ledger = ledger
        self.fleet = fleet
        self.settings = settings
        # until a whole answer, or a stream's first byte: timed on the connection itself
        self.deadlines = ((settings.unary_s, "answer"), (settings.ttfb_s, "first byte"))
        b = settings.retry_budget
        self.budget = RetryBudget(b.ratio, b.min_per_s, b.window_s)
        self.relays = Relays()  # the streams in flight, for a shutdown to end cleanly

    async def forward(self, x: Exchange) -> web.StreamResponse:
        """Try the plan's candidates in order, as the module's docstring says."""
        head = (
            f"POST {x.path} HTTP/1.1\r\n".encode(),
            request_head_tail(
                x.request.raw_headers, x.request_id, len(x.body), traced=x.record.trace is not None
            ),
        )
        self.budget.request(monotonic())
        judged = 0  # failed attempts whose retry was decided
        for position, backend in enumerate(x.plan.candidates):
            if len(x.ended) >= self.settings.max_attempts:
                break
            pool = self.fleet.pool_named[backend.pool]
            if pool.max_context_tokens <= x.refused_window:
                continue
            if len(x.ended) > judged:
                judged = len(x.ended)
                if not self._may_retry(x):
                    break
            answer = await self._attempt(x, head, position, backend, pool)
            if answer is not None:
                return answer
        if x.refusal is not None:
            return self._context_refusal(x)
        raise self._unanswered(x)

    def _may_retry(self, x: Exchange) -> bool:
        """After a failed attempt: whether another may follow. Always when the failure
        provably cost no engine work; otherwise when the retry budget allows it."""
        if x.ended[-1][1].kind in _FREE_RETRY or self.budget.try_retry(monotonic()):
            return True
        x.budget_spent = True
        return False

    async def _attempt(self, x: Exchange, head: tuple[bytes, bytes], position: int,
                       backend: Backend, pool: PoolView) -> web.StreamResponse | None:  # fmt: skip
        """One attempt: its answer, or None to try the next; one outcome, ended in finally."""
        prompt = x.facts.prompt.estimate
        budget = pool_budget(prompt, x.facts.max_tokens, pool)
        attempt = self.ledger.begin(backend, prompt, budget, asyncio.get_running_loop().time())
        if attempt is None:
            x.skipped_at_capacity += 1
            return None
        resp: UpstreamResponse | None = None
        outcome: Outcome | None = None
        trace = x.record.trace
        span = None if trace is None else trace.attempt(backend, position, len(x.ended) + 1)
        try:
            data = self._request_bytes(x, head, backend, b"" if span is None else span.traceparent)
            try:
                resp = await self.upstream.request(
                    (backend.host, backend.port), data, deadline=self.deadlines[x.facts.stream]
                )
                status = resp.status
                if status >= 500 or status == 429:
                    outcome = _refused_by_backend(status, await resp.read())
                    return None
                # a stream only when the backend streams (a 200 may be one JSON body)
                streaming = x.facts.stream and status == 200 and is_event_stream(resp.headers)
                first = await (resp.next_data() if streaming else resp.read())
                resp.disarm()
            except UpstreamError as exc:
                outcome, lost = _failure(exc, backend, x.facts.stream)
                if lost is not None:
                    raise lost from None
                return None
            if streaming and not first:
                outcome = Outcome(OutcomeKind.BROKEN, status, detail=_EMPTY_STREAM)
                return None
            ttft = self._first_byte(x, attempt, backend, pool, budget, status, streaming, span)
            if status == 400 and _CONTEXT_400 in first:
                outcome = Outcome(OutcomeKind.CONTEXT_REJECTED, status, ttft, _LARGER_WINDOW)
                x.refused_window = pool.max_context_tokens
                x.refusal = ContextRefusal(status, resp.headers, first, backend, position)
                return None
            headers = self._headers(x, resp.headers, backend, position, len(x.ended) + 1)
            if streaming:
                out, outcome = await self._relay(x, resp, first, headers, ttft)
                return out
            kind = OutcomeKind.SUCCESS if status < 400 else OutcomeKind.CLIENT_ERROR
            outcome = Outcome(kind, status, ttft)
            return self._whole(x, status, first, headers)
        except asyncio.CancelledError:
            outcome = self._cancelled(x, outcome)
            raise
        finally:
            if resp is not None:
                resp.close()
            if outcome is None:  # an exception nobody expected: the backend is not blamed
                outcome = Outcome(OutcomeKind.CLIENT_GONE, detail="aborted by a router error")
            self.ledger.end(attempt, outcome)
            x.end(backend, outcome, span)

    def _request_bytes(self, x: Exchange, head: tuple[bytes, bytes], backend: Backend,
                       trace_lines: bytes) -> bytes:  # fmt: skip
        """The request as ``backend`` gets it: its own host line (and this attempt's
        ``traceparent`` when traced), and, for a backend that serves the model under a name
        of its own (``model`` in its config), that name in the body (only then is the body
        parsed again and its length recounted)."""
        host = self.fleet.host_lines[backend.index]
        if backend.model == x.facts.model:
            return b"".join((head[0], host, trace_lines, head[1], x.body))
        body = orjson.dumps({**orjson.loads(x.body), "model": backend.model})
        tail = request_head_tail(x.request.raw_headers, x.request_id, len(body),
                                 traced=bool(trace_lines))  # fmt: skip
        return b"".join((head[0], host, trace_lines, tail, body))

    def _cancelled(self, x: Exchange, outcome: Outcome | None) -> Outcome:
        """The outcome of an attempt whose handler was cancelled: ended by the router's
        shutdown (its grace ran out), else by the client leaving."""
        if self.relays.stopping is not None:
            return outcome or Outcome(OutcomeKind.SHUTDOWN, detail=self.relays.stopping)
        x.record.client_gone = True
        return outcome or Outcome(OutcomeKind.CLIENT_GONE, detail="the client left")

    def _first_byte(self, x: Exchange, attempt: Attempt, backend: Backend, pool: PoolView,
                    budget: int, status: int, streaming: bool,
                    span: AttemptTrace | None) -> float:  # fmt: skip
        """The backend answered: its first byte settled in the ledger (a stream's prefill
        ends there; a whole answer's load is settled by ``end``, in one update), the record
        filled, and the attempt's span told. Returns the time to first byte."""
        if span is not None:
            span.first_byte(status)
        now = asyncio.get_running_loop().time()
        ledger = self.ledger
        ttft = ledger.first_byte(attempt, now) if streaming else ledger.answered(attempt, now)
        record = x.record
        record.first_byte_at = monotonic()
        record.attempts = len(x.ended) + 1
        record.pool = backend.pool
        record.backend = backend.url
        record.window = pool.max_context_tokens
        record.budget = budget
        record.status = status
        return ttft

    async def _relay(self, x: Exchange, resp: UpstreamResponse, first: bytes,
                     headers: list[tuple[str, str]],
                     ttft: float) -> tuple[web.StreamResponse, Outcome]:  # fmt: skip
        """A stream, relayed chunk by chunk; how it ended is the attempt's outcome."""
        status = resp.status
        guard = None if self.indicators is None else self.indicators.stream_guard(x.leak, x.chat)
        out, result = await relay_stream(x.request, resp, first, headers,
                                         self.settings.idle_read_s, self.relays, guard)  # fmt: skip
        record = x.record
        if guard is not None and guard.finish():
            leaked(record, result.blocked)
        summary = result.summary
        record.finish_reason = summary.finish_reason
        if summary.prompt_tokens is not None:
            record.prompt_tokens = summary.prompt_tokens
        record.completion_tokens = summary.completion_tokens
        record.client_gone = result.client_gone
        if result.client_gone:
            return out, Outcome(OutcomeKind.CLIENT_GONE, status, ttft)
        if result.stopped:
            return out, Outcome(OutcomeKind.SHUTDOWN, status, ttft, self.relays.stopping or "")
        if result.upstream_error is not None:
            return out, Outcome(OutcomeKind.BROKEN, status, ttft, result.upstream_error)
        return out, Outcome(OutcomeKind.SUCCESS, status, ttft)

    def _whole(self, x: Exchange, status: int, body: bytes,
               headers: list[tuple[str, str]]) -> web.Response:  # fmt: skip
        """A whole answer: its usage read; if watched for leaks, what the leak rule makes of it."""
        if status != 200:
            return web.Response(status=status, body=body, headers=headers)
        answer = read_usage(body, x.record)
        if x.leak is not None and self.indicators is not None:
            return self.indicators.checked(x.leak, answer, body, headers, x.chat, x.record)
        return web.Response(status=status, body=body, headers=headers)

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

    def _context_refusal(self, x: Exchange) -> web.Response:
        """No larger window was left to try: the backend's own 400 is the answer."""
        refusal = x.refusal
        assert refusal is not None
        x.record.attempts = len(x.ended)
        headers = self._headers(x, refusal.headers, refusal.backend, refusal.position, len(x.ended))
        return web.Response(status=refusal.status, body=refusal.body, headers=headers)

    def _unanswered(self, x: Exchange) -> NoBackend | UpstreamTimedOut:
        """The refusal of a request no backend answered: 504 when every one tried took it
        and timed out, else 503 naming why each could not."""
        # the backends that could hold it, not every backend of the model: a pool whose
        # window is too small is no reason to refuse, and its breakers say nothing about
        # when to retry
        pools = self.fleet.by_model[x.facts.model]
        backends = [b for i in x.plan.pools for b in pools[i].backends]
        now = monotonic()
        # when breakers keep every backend away, come back when the first may take a probe
        wait = self.ledger.store.retry_after(backends, now)
        x.record.attempts = len(x.ended)
        message = no_backend_message(
            x.plan, x.ended, x.skipped_at_capacity, self.ledger, backends, now
        )
        if x.budget_spent:
            message += ("; not tried again: the retry budget is spent (too many recent "
                        "attempts failed after reaching a backend)")  # fmt: skip
        if x.ended and all(o.kind is OutcomeKind.TIMEOUT for _, o in x.ended):
            # every backend tried is up and took the request, and none answered in time:
            # a gateway timeout, not "no backend" (and no advice to retry in a second)
            return UpstreamTimedOut(message)
        return NoBackend(message, retry_after=wait if wait else 1.0)


def _refused_by_backend(status: int, body: bytes) -> Outcome:
    """A 5xx or 429 before any answer: busy (429, 503) or broken; the next candidate."""
    detail = body[:200].decode(errors="replace")
    kind = OutcomeKind.BACKPRESSURE if status in (429, 503) else OutcomeKind.UPSTREAM_5XX
    return Outcome(kind, status, detail=f"status {status}: {detail}")


def _failure(exc: UpstreamError, backend: Backend,
             stream: bool) -> tuple[Outcome, UpstreamFailed | None]:  # fmt: skip
    """The outcome of an attempt the transport failed before an answer, and the error to
    answer with when a whole answer was lost while it was being sent (retrying it would
    generate it again)."""
    if isinstance(exc, ConnectFailed):
        return Outcome(OutcomeKind.CONNECT_ERROR, detail=str(exc)), None
    if isinstance(exc, UpstreamTimeout):
        return Outcome(OutcomeKind.TIMEOUT, detail=str(exc)), None
    outcome = Outcome(OutcomeKind.BROKEN, detail=str(exc))
    if exc.response_started and not stream:
        message = hide_address(
            backend, f"backend {backend.shown} broke while sending the answer: {exc}"
        )
        return outcome, UpstreamFailed(message)
    return outcome, None


__all__ = ["Exchange", "ForwardSettings", "Proxy", "request_head_tail"]


def is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the upstream's raw headers say ``Content-Type: text/event-stream``."""
    for name, value in headers:
        if len(name) == 12 and name.lower() == b"content-type":
            return value.lstrip().lower().startswith(b"text/event-stream")
    return False
