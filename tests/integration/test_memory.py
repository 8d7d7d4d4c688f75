"""Memory stays flat under hostile input: the router in a process of its own (so its RSS is
its own, not the test's or hypothesis's), fed a round of hostile requests to warm up, then
five more rounds of the same kinds with every client-chosen value new each time. Were any
of them kept (a raw session ID or ``user`` string as a hash-ring cache key, a request ID,
a body), the second measure would be hundreds of MB above the first."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from ctxroute.backends.simulator import PROFILES, SimConfig, Simulator

from tests.fixtures.servers import free_port, rss_mb, wait_for_port

CLI = [sys.executable, "-m", "ctxroute.router"]
USER_BYTES = 256 * 1024  # each valid request's `user`: the hash ring's key when no session ID
ROUND = 400  # requests per round; 5 rounds after warm-up: ~2,000 x 256 KB = 500 MB offered


def _hostile(i: int) -> tuple[bytes | dict[str, object], dict[str, str]]:
    """The i-th request: every client-chosen value unique to i."""
    tag = f"{i:08d}"
    kind = i % 4
    if kind == 0:  # a valid chat, a huge unique `user` (the affinity key)
        body: bytes | dict[str, object] = {
            "model": "sim-model", "max_tokens": 1, "user": tag + "u" * USER_BYTES,
            "messages": [{"role": "user", "content": "hi " + tag}],
        }  # fmt: skip
        return body, {"X-Request-ID": "r" + tag}
    if kind == 1:  # a unique 8 KB session ID header, a unique request ID of hostile text
        body = {"model": "sim-model", "max_tokens": 1, "prompt": "hi"}
        return body, {"X-Session-ID": tag + "s" * 8000, "X-Request-ID": "<script>" + tag * 50}
    if kind == 2:  # malformed JSON, 64 KB of it
        return b'{"model": "sim-model", "messages": [' + tag.encode() * 8192, {}
    # an unknown model with a long unique name
    return {"model": "m" + tag * 1000, "prompt": "hi", "max_tokens": 1}, {}


async def _round(s: aiohttp.ClientSession, url: str, start: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        body, headers = _hostile(i)
        path = (
            "/v1/completions"
            if isinstance(body, dict) and "prompt" in body
            else "/v1/chat/completions"
        )
        kwargs: dict[str, object] = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with sem, s.post(url + path, headers=headers, **kwargs) as r:  # type: ignore[arg-type]
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1

    await asyncio.gather(*(one(i) for i in range(start, start + ROUND)))
    return statuses


async def test_router_memory_stays_flat_under_hostile_input(tmp_path: Path) -> None:
    # two backends: with one, the hash ring is never asked
    sims = [
        Simulator(SimConfig(model="sim-model", profile=PROFILES["tiny"], seed=i)) for i in (1, 2)
    ]
    for sim in sims:
        await sim.start()
    port = free_port()
    config = tmp_path / "router.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        "log_requests: false\n"
        "pools:\n"
        "  - {name: only, model: sim-model, max_context_tokens: 4096,\n"
        f"     backends: [{{url: '{sims[0].url}'}}, {{url: '{sims[1].url}'}}]}}\n"
    )
    proc = subprocess.Popen([*CLI, "serve", "--config", str(config)],  # noqa: ASYNC220
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 20.0, proc)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            warm = await _round(s, url, 0)
            warm = await _round(s, url, ROUND)
            before = rss_mb(proc.pid)
            totals: dict[int, int] = {}
            for n in range(2, 7):
                for status, count in (await _round(s, url, n * ROUND)).items():
                    totals[status] = totals.get(status, 0) + count
            after = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)
        for sim in sims:
            await sim.stop()
    # every kind was answered as it should be: valid ones routed, hostile ones refused
    assert set(warm) <= {200, 400, 404} and totals.get(200, 0) >= ROUND, totals
    assert totals.get(400, 0) >= ROUND // 2 and totals.get(404, 0) >= ROUND // 2, totals
    assert not [code for code in totals if code >= 500], totals
    # ~500 MB of unique client-chosen values went through; a router that kept even the
    # `user` strings alone would have grown by ~250 MB
    assert after - before < 40, f"RSS {before:.0f} MB -> {after:.0f} MB"
    print(f"router RSS {before:.1f} MB after warm-up, {after:.1f} MB after {5 * ROUND} more")
