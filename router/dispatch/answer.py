"""The bytes and words around an attempt: the head sent upstream, the answer's headers,
its route line, its usage, and the message of a 503 when no backend answered."""

from __future__ import annotations

from collections.abc import Sequence
from time import monotonic
from typing import Any

import orjson
from ctxroute.router.core.breaker import BreakerState, retry_after
from ctxroute.router.core.explain import owner_note, route_line
from ctxroute.router.fleet.ledger import Ledger
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.model import Backend, Bypass, Load, Outcome, RequestFacts, RoutePlan
from ctxroute.router.observe.record import RequestRecord

# RFC 9110 hop-by-hop headers, plus the ones the relay recomputes
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "X-Request-ID",
        "Expect",  # the router has the whole body already: no 100-continue upstream
    )
)
_HOP_BY_HOP_RAW = frozenset(h.encode() for h in _HOP_BY_HOP)
# with tracing on, each attempt sends its own span's W3C trace headers instead of the client's
_TRACED_DROP_RAW = _HOP_BY_HOP_RAW | {b"traceparent", b"tracestate"}
_RESPONSE_DROP_RAW = frozenset(h.encode() for h in _HOP_BY_HOP | {"date", "server"})


def request_head_tail(
    incoming: Sequence[tuple[bytes, bytes]], request_id: str, body_length: int,
    traced: bool = False,
) -> bytes:  # fmt: skip
    """The end-to-end headers sent upstream (the backend-specific lines are added per try),
    from the client's header lines as they came (``request.raw_headers``): bytes in,
    bytes out, nothing decoded and encoded again. ``traced``: the client's trace headers
    are left out (each attempt sends its own span's)."""
    parts = [b"Content-Length: ", str(body_length).encode(), b"\r\nX-Request-ID: ",
             request_id.encode("latin-1", "replace"), b"\r\n"]  # fmt: skip
    dropped = _TRACED_DROP_RAW if traced else _HOP_BY_HOP_RAW
    for name, value in incoming:
        if name.lower() not in dropped:
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def response_headers(
    upstream: list[tuple[bytes, bytes]],
    backend: Backend,
    request_id: str,
    attempts: int,
    route: str,
) -> list[tuple[str, str]]:
    # pairs, not a CIMultiDict: aiohttp builds its own from them (it would copy ours); only
    # the lines kept are decoded
    out = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in upstream
        if name.lower() not in _RESPONSE_DROP_RAW
    ]
    out += (
        ("x-ctxroute-pool", backend.pool),
        ("x-ctxroute-backend", backend.shown),
        ("x-ctxroute-attempts", str(attempts)),
        ("x-ctxroute-route", route),
        ("X-Request-ID", request_id),
    )
    return out


def route_line_of(
    plan: RoutePlan,
    position: int,
    backend: Backend,
    facts: RequestFacts,
    record: RequestRecord,
    ledger: Ledger,
    fleet: Fleet,
) -> str:
    """The request's route line (``router/core/explain.py``). ``position``: the answering
    backend's place among the plan's candidates."""
    unusable = ""
    if plan.bypass is Bypass.UNUSABLE:
        owner = fleet.by_url.get(plan.owner)
        if owner is not None:
            unusable = why_unusable(ledger, owner, monotonic())
    wait_ms = plan.waits_ms[position] if position < plan.usable else None
    return route_line(
        plan,
        backend.pool,
        record.budget,
        facts.prompt.exact,
        record.window,
        wait_ms,
        owner_note(plan, backend.url, unusable),  # (a yes or no: no address in it)
        record.queued_s,
        record.attempts,
    )


def read_usage(body: bytes, record: RequestRecord) -> Any:
    """finish_reason and token usage of a whole (non-streaming) answer: the one parse of
    the answer's body the router makes. Returns the answer parsed (None if it is not JSON)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    try:
        choice = answer["choices"][0]
        usage = answer.get("usage") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        return answer  # not an OpenAI answer: nothing to count
    reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    record.finish_reason = reason if isinstance(reason, str) else None
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if isinstance(prompt, int):
        record.prompt_tokens = prompt
    if isinstance(completion, int):
        record.completion_tokens = completion
    return answer


def kept_from(
    ledger: Ledger, backend: Backend, load: Load, room: tuple[int, int] | None
) -> tuple[str, ...]:
    """Every rule that keeps ``backend`` from new requests now, most decisive first
    (``room``: the KV tokens long and short requests may still commit there)."""
    store = ledger.store
    i = backend.index
    rules = []
    if store.drained(i):
        rules.append("drained")
    if store.memory_open(i):
        rules.append(f"memory breaker: {ledger.memory_why[i] or 'KV cache distress'}")
    b = store.breaker(i)
    if b.state is not BreakerState.CLOSED:
        rules.append(f"error breaker {b.state.value}")
    if not ledger.up[i]:
        rules.append("down")
    if load.in_flight >= backend.max_in_flight:
        rules.append("at max_in_flight")
    if room is not None and room[1] <= 0:
        rules.append("no KV room under the short mark")
    elif room is not None and room[0] <= 0:
        rules.append("no KV room for long work (under the long mark)")
    return tuple(rules)


def why_unusable(ledger: Ledger, backend: Backend, now: float) -> str:
    store = ledger.store
    i = backend.index
    if store.drained(i):
        return "drained"
    if store.memory_open(i):
        return f"memory breaker open: {ledger.memory_why[i] or 'KV cache distress'}"
    b = store.breaker(i)
    if b.state is not BreakerState.CLOSED:
        wait = retry_after(b, now)
        return f"breaker {b.state.value}" + (f", probe in {wait:.1f}s" if wait else "")
    if not ledger.up[i]:
        return "down"
    if ledger.board.fleet(i).in_flight >= backend.max_in_flight:
        return "at max_in_flight"
    return "no KV room for its budget under its class's mark"


def no_backend_message(
    plan: RoutePlan,
    ended: list[tuple[Backend, Outcome]],
    skipped: int,
    ledger: Ledger,
    backends: list[Backend],
    now: float,
) -> str:
    if not plan.candidates:
        parts = [f"{b.shown} ({b.pool}): {why_unusable(ledger, b, now)}" for b in backends]
        return "no backend can take this request now: " + "; ".join(parts)
    parts = [f"{b.shown} ({b.pool}): {hide_address(b, o.detail)}" for b, o in ended]
    if skipped:
        parts.append(f"{skipped} skipped (at max_in_flight, or a breaker or drain took effect)")
    if not ended:
        return "no backend can take this request: " + "; ".join(parts)
    tried = f"{len(ended)} backend{'s' if len(ended) != 1 else ''} tried"
    return f"no backend answered ({tried}): " + "; ".join(parts)


def hide_address(backend: Backend, detail: str) -> str:
    """An attempt's detail as a client may read it: the backend's address replaced by what
    clients are shown of it (a connection error names host and port)."""
    if backend.shown == backend.url:
        return detail
    return detail.replace(backend.url, backend.shown).replace(
        f"{backend.host}:{backend.port}", backend.shown
    )
