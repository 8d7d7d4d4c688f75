"""The nothing-lost ledger every chaos scenario checks.

Three accounts of the same requests, joined by request id (each client request carries
its own ``X-Request-ID``, which the router logs and sends to the backends):

- the client's: what it sent, the status, whether a stream ended with ``data: [DONE]``
  and whether an SSE error event came before it, and whether the client left on purpose;
- the router's request log (one JSON line per request that reached a handler);
- the simulators': how many times each id reached a backend (one per attempt).

Rules (each broken one is a violation, reported with the request id):

1. every request the router answered has exactly one line in its log (one terminal
   outcome), and none has a line the client never sent;
2. attempts that reached a backend <= the attempts the log says <= ``max_attempts``;
3. a request the router refused before dispatch (queue full, deadline, overload,
   shutting down, rate limited, unauthorized, bad input) reached no backend;
4. no attempt after the client left: a request whose client left has at most the
   attempts the log counts, and is logged as ``client_gone`` (or ended before it left);
5. every 200 event stream ends with ``data: [DONE]``, complete or after an SSE error
   event (a stream request a backend answered with one JSON body is answered so);
6. afterwards nothing is in flight or waiting on any router (``/status``).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

# refusals the router makes before any backend sees the request
REFUSED_BEFORE_DISPATCH = frozenset(
    {"queue_full", "deadline", "overload", "shutting_down", "rate_limited", "unauthorized",
     "body_timeout"}
)  # fmt: skip


@dataclass
class Sent:
    """One client request and what the client saw of it."""

    request_id: str
    stream: bool
    status: int | None = None  # None: no answer at all (connection refused or reset)
    sse: bool = False  # answered as an event stream (a backend may answer JSON instead)
    done: bool = False  # a stream ended with data: [DONE]
    error_event: bool = False  # an SSE error event came before [DONE]
    left: bool = False  # the client gave up on purpose (the scenario's choice)
    error: str | None = None


@dataclass
class Ledger:
    sent: list[Sent] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def check(self, log_lines: Iterable[dict[str, Any]], received: Counter[str],
              max_attempts: int, unlogged: frozenset[str] = frozenset()) -> list[str]:  # fmt: skip
        """The violations; ``unlogged``: requests sent to a router killed with SIGKILL,
        whose last 0.2 s of request lines (buffered, written every 0.2 s) died with it."""
        logged: dict[str, list[dict[str, Any]]] = {}
        for line in log_lines:
            logged.setdefault(str(line["request_id"]), []).append(line)
        mine = {s.request_id for s in self.sent}
        out = self.violations
        for rid in set(logged) - mine:
            out.append(f"{rid}: logged by the router, never sent by the client")
        for s in self.sent:
            lines = logged.get(s.request_id, [])
            reached = received.get(s.request_id, 0)
            if (
                s.status is not None
                and len(lines) != 1
                and not (s.request_id in unlogged and not lines)
            ):
                out.append(f"{s.request_id}: answered {s.status}, logged {len(lines)} times")
            if len(lines) > 1:
                continue
            line = lines[0] if lines else None
            attempts = int(line["attempts"] or 0) if line else 0
            if line is not None and not reached <= max(attempts, 0) <= max_attempts:
                out.append(f"{s.request_id}: reached backends {reached} times, the log says "
                           f"{attempts} attempts (max {max_attempts})")  # fmt: skip
            if line is not None and line.get("reject") in REFUSED_BEFORE_DISPATCH and reached:
                out.append(f"{s.request_id}: refused ({line['reject']}) yet reached a backend")
            if s.left and line is not None and reached > attempts:
                out.append(f"{s.request_id}: an attempt after the client left")
            if s.status == 200 and s.sse and not s.left and not s.done:
                out.append(f"{s.request_id}: a 200 stream that did not end with [DONE] "
                           f"({s.error})")  # fmt: skip
        return out


async def send(session: aiohttp.ClientSession, url: str, ledger: Ledger, request_id: str,
               *, stream: bool, max_tokens: int = 8, leave_after_s: float | None = None,
               headers: dict[str, str] | None = None) -> Sent:  # fmt: skip
    """One chat request, recorded in ``ledger``; ``leave_after_s``: the client gives up
    then (closing its connection), whatever the state of its request."""
    sent = Sent(request_id, stream)
    ledger.sent.append(sent)
    body = {"model": "sim-model", "messages": [{"role": "user", "content": f"hi {request_id}"}],
            "max_tokens": max_tokens, "stream": stream, "ignore_eos": True}  # fmt: skip
    all_headers = {"X-Request-ID": request_id, **(headers or {})}

    async def go() -> None:
        async with session.post(url + "/v1/chat/completions", json=body,
                                headers=all_headers) as r:  # fmt: skip
            sent.status = r.status
            raw = await r.read()
            sent.sse = r.content_type == "text/event-stream"
            if sent.sse and r.status == 200:
                events = [e for e in raw.split(b"\n\n") if e.strip()]
                sent.done = bool(events) and events[-1].strip() == b"data: [DONE]"
                sent.error_event = any(b'"error"' in e for e in events[-2:-1])

    try:
        if leave_after_s is None:
            await go()
        else:
            try:
                await asyncio.wait_for(go(), leave_after_s)
            except TimeoutError:
                sent.left = True
    except (aiohttp.ClientError, OSError) as exc:
        sent.error = f"{type(exc).__name__}: {exc}"
    return sent


def read_log(path: Path) -> list[dict[str, Any]]:
    """The request lines of a router's stderr (JSON lines; other lines are skipped)."""
    out = []
    for text in path.read_text().splitlines():
        if not text.startswith("{"):
            continue
        line = json.loads(text)
        if line.get("logger") == "ctxroute.request":
            out.append(line)
    return out


async def settled(session: aiohttp.ClientSession, urls: Sequence[str],
                  timeout_s: float = 10.0) -> list[str]:  # fmt: skip
    """Rule 6: wait until every router has nothing in flight and nothing waiting; the
    violations if that does not come within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        left = []
        for url in urls:
            try:
                async with session.get(url + "/status") as r:
                    status = await r.json()
            except (aiohttp.ClientError, OSError):
                continue  # a router the scenario stopped
            for pool in status["pools"]:
                for b in pool["backends"]:
                    if b["local"]["in_flight"]:  # this process's own count (the fleet's
                        # view may hold other replicas' load for a publish interval)
                        left.append(f"{url}: {b['url']} has {b['local']['in_flight']} in flight")
            for name, pool in status["admission"]["pools"].items():
                if any(pool["waiting"].values()) or any(pool["admitted_in_flight"].values()):
                    left.append(f"{url}: pool {name} still has waiters or admitted requests")
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(0.1)
