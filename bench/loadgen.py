"""Open-loop load: every planned request is sent at its time, whatever the others are doing.

TTFT is measured from the *scheduled* send time, not from when the request got out, so
a client that falls behind is not hidden (no coordinated omission). A request counts as
good when it finished (``data: [DONE]``, status 200) with its TTFT within its class's SLO.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from ctxroute.bench.workload import Planned


@dataclass
class Result:
    kind: str
    ttft_s: float | None = None  # scheduled send -> first body byte
    latency_s: float | None = None
    status: int | None = None
    error: str | None = None
    finished: bool = False
    target: str = ""
    tenant: str | None = None


class Targets:
    """Where request i goes: the router (one URL), or client-side round-robin over the
    backends whose window holds the request (the fairest request-count baseline)."""

    def __init__(self, urls: Sequence[tuple[str, int]], round_robin: bool) -> None:
        self.urls = list(urls)  # (base url, window)
        self.round_robin = round_robin
        self._next = itertools.count()

    def pick(self, planned: Planned) -> str:
        if not self.round_robin:
            return self.urls[0][0]
        need = planned.prompt_tokens + planned.max_tokens
        holding = [u for u, window in self.urls if window >= need] or [self.urls[-1][0]]
        return holding[next(self._next) % len(holding)]


async def run_load(
    planned: Sequence[Planned],
    targets: Targets,
    *,
    session_header: str = "X-Session-ID",
    grace_s: float = 60.0,
    progress: Callable[[int], None] | None = None,
    deadlines: Mapping[str, str] | None = None,
    keys: Mapping[str, str] | None = None,
) -> tuple[list[Result], float]:
    """Send every request at its time; wait for all, at most ``grace_s`` after the last
    send: what is still running then is 'stuck'. Returns results and the run's length.
    ``deadlines``: class -> X-Request-Timeout to send (a client's own SLO); ``keys``:
    tenant -> the API key its requests carry."""
    deadlines = deadlines or {}
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    keys = keys or {}
    results = [Result(p.kind, tenant=p.tenant) for p in planned]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time() + 0.5

        async def one(i: int, p: Planned) -> None:
            r = results[i]
            scheduled = start + p.at
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            url = targets.pick(p)
            r.target = url
            headers = {"Content-Type": "application/json"}
            if p.session is not None:
                headers[session_header] = p.session
            if p.kind in deadlines:
                headers["X-Request-Timeout"] = deadlines[p.kind]
            key = keys.get(p.tenant) if p.tenant is not None else None
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            try:
                async with session.post(url + p.path, data=p.body, headers=headers) as resp:
                    r.status = resp.status
                    if resp.status != 200:
                        r.error = f"status {resp.status}: {(await resp.text())[:120]}"
                        return
                    tail = b""
                    async for data in resp.content.iter_any():
                        if r.ttft_s is None:
                            r.ttft_s = loop.time() - scheduled
                        tail = (tail + data)[-64:]
                    r.latency_s = loop.time() - scheduled
                    r.finished = b"data: [DONE]" in tail
                    if not r.finished:
                        r.error = "stream ended without [DONE]"
            except (aiohttp.ClientError, OSError) as exc:
                r.error = f"{type(exc).__name__}: {exc}"
            finally:
                if progress is not None:
                    progress(1)

        tasks = [loop.create_task(one(i, p)) for i, p in enumerate(planned)]
        last = start + (planned[-1].at if planned else 0.0)
        t0 = time.monotonic()
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, last - loop.time()) + grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for i, task in enumerate(tasks):
            if task in pending:
                results[i].error = "stuck: unfinished when the run ended"
        return results, time.monotonic() - t0


__all__ = ["Result", "Targets", "run_load"]
