"""Per-key rate limits across replicas, over a minute: how much of a key's limit two router
replicas sharing one Redis admit together, when its clients send as fast as they can.

Two runs: one bound by requests per minute, one by tokens per minute. Each starts a
redis-server, a simulated engine and two ``ctxroute serve`` replicas (processes), then
16 clients send chat requests for ``--duration`` seconds, alternating the replicas. It
counts the requests answered 200 and their tokens (the answers' usage: prompt +
completion, what the limiter settles on) and prints them against the limit over the run.

GCRA lets a key run ``burst_s`` ahead of its pace, so over T seconds the most a key can get
is ``limit x (T + burst_s) / 60`` (plus one request's cost): with the default 3 s over 60 s,
5% over the limit. Without the shared buckets each replica would admit that much: 2x.

    python -m ctxroute.bench.limits                    # 60 s each, burst 3 s
    python -m ctxroute.bench.limits --duration 60 --burst 1
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import orjson
from ctxroute.bench.mixed import _free_port, _wait_http, start_redis_server
from ctxroute.router.core.keys import digest, new_key

PY = sys.executable
CLIENTS = 16
BODY = {
    "model": "sim-model",
    "messages": [{"role": "user", "content": "Say something about rate limits. " * 12}],
    "max_tokens": 24,
}


async def _drive(urls: list[str], key: str, duration_s: float) -> tuple[int, int, int]:
    """Closed loop, ``CLIENTS`` at a time, alternating replicas: (admitted, their tokens,
    refused with 429)."""
    admitted = tokens = refused = 0
    turn = itertools.count()
    headers = {"Authorization": f"Bearer {key}"}
    deadline = asyncio.get_running_loop().time() + duration_s
    async with aiohttp.ClientSession() as s:

        async def client() -> None:
            nonlocal admitted, tokens, refused
            while asyncio.get_running_loop().time() < deadline:
                url = urls[next(turn) % len(urls)]
                async with s.post(url + "/v1/chat/completions", json=BODY,
                                  headers=headers) as r:  # fmt: skip
                    body = await r.read()
                    if r.status == 200:
                        usage = orjson.loads(body)["usage"]
                        admitted += 1
                        tokens += usage["prompt_tokens"] + usage["completion_tokens"]
                    elif r.status == 429:
                        refused += 1
                        # a client that honours Retry-After would wait; this one presses on
                        # after a moment, the worst case for the limiter
                        await asyncio.sleep(0.01)
                    else:
                        raise RuntimeError(f"unexpected {r.status}: {body[:200]!r}")

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return admitted, tokens, refused


def _run(kind: str, rpm: int, tpm: int, burst_s: float, duration_s: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="ctxroute-limits-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis, redis_url = start_redis_server([])
        procs.append(redis)
        sim_port = _free_port()
        procs.append(subprocess.Popen(
            [PY, "-m", "ctxroute.router", "sim", "--profile", "tiny", "--port", str(sim_port),
             "--max-num-seqs", "256"], stdout=subprocess.DEVNULL))  # fmt: skip
        _wait_http(f"http://127.0.0.1:{sim_port}/health", procs[-1])
        key = new_key()
        urls = []
        for replica in range(2):
            port = _free_port()
            conf = tmp / f"router-{replica}.yaml"
            conf.write_text(
                f"listen: {{host: 127.0.0.1, port: {port}}}\nlog_requests: false\n"
                f"store: {{redis_url: '{redis_url}'}}\n"
                "pools:\n  - {name: only, model: sim-model, max_context_tokens: 2048,\n"
                f"     backends: [{{url: 'http://127.0.0.1:{sim_port}', max_in_flight: 64}}]}}\n"
                f"auth:\n  burst_s: {burst_s}\n"
                f"  keys: [{{sha256: {digest(key)}, tenant: bench, rpm: {rpm}, tpm: {tpm}}}]\n"
            )
            procs.append(subprocess.Popen([PY, "-m", "ctxroute.router", "serve", "--config",
                                           str(conf)], stdout=subprocess.DEVNULL))  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            _wait_http(url + "/readyz", procs[-1])
            urls.append(url)
        print(f"{kind}: 2 replicas, {CLIENTS} clients, {duration_s:g} s ...", flush=True)
        admitted, tokens, refused = asyncio.run(_drive(urls, key, duration_s))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(15)
        shutil.rmtree(tmp, ignore_errors=True)
    minutes = duration_s / 60.0
    return {
        "admitted": admitted,
        "tokens": tokens,
        "refused": refused,
        "requests_ratio": admitted / (rpm * minutes),
        "tokens_ratio": tokens / (tpm * minutes),
        "bound": (duration_s + burst_s) / duration_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--burst", type=float, default=3.0, help="auth.burst_s (default 3)")
    args = parser.parse_args()
    runs = {
        "requests-bound (rpm 600)": (600, 10_000_000),
        "tokens-bound (tpm 60,000)": (1_000_000, 60_000),
    }
    for kind, (rpm, tpm) in runs.items():
        r = _run(kind, rpm, tpm, args.burst, args.duration)
        bound = f"GCRA's bound with {args.burst:g} s of burst: {r['bound']:.3f}"
        if kind.startswith("requests"):
            print(f"  admitted {r['admitted']:.0f} requests, {r['refused']:.0f} refused: "
                  f"{r['requests_ratio']:.3f} x the limit over the run ({bound})")  # fmt: skip
        else:
            print(f"  admitted {r['tokens']:.0f} tokens in {r['admitted']:.0f} requests, "
                  f"{r['refused']:.0f} refused: {r['tokens_ratio']:.3f} x the limit over the "
                  f"run ({bound})")  # fmt: skip


if __name__ == "__main__":
    main()
