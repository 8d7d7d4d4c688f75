"""Drift scenarios: how soon the router flags a backend switched to drift, and whether
healthy traffic raises a flag. Four simulated engines behind one router, in this process;
Poisson arrivals of short streaming chats (one of 8 system prompts, a 50-200-word turn,
max_tokens 128-256), each with its own session so that hashing spreads them.

    python -m ctxroute.bench.drift detect              # 60 s healthy, then backend 4 drifts
    python -m ctxroute.bench.drift healthy --duration 1800

``detect`` prints the seconds from the switch to the first drift score of 1 or more on the
drifting backend (and whether any healthy one scored 1); ``healthy`` prints each
backend's highest score over the run and how long any score stayed at 1 or more (the
alert fires after 2 minutes). ``--speed`` runs the engines' clock faster (short CI
versions); ``--rate`` is requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass, field

import aiohttp
from ctxroute.backends.simulator import PROFILES, SimConfig, Simulator
from ctxroute.router.api.app import create_app, make_runner, start_sites
from ctxroute.router.api.context import RouterContext
from ctxroute.router.config import parse_config

_WORDS = ("route", "cache", "token", "window", "engine", "queue", "answer", "model", "batch")
_SYSTEMS = tuple(f"You are assistant {i}. " + "Answer briefly and cite sources. " * 60
                 for i in range(8))  # fmt: skip


@dataclass
class Outcome:
    flagged_after_s: float | None = None  # detect: the drifting backend's first score >= 1
    healthy_flagged: bool = False  # a healthy backend scored >= 1 at some poll
    max_scores: dict[int, float] = field(default_factory=dict)
    max_by_signal: dict[str, float] = field(default_factory=dict)  # over the healthy ones
    longest_flag_s: float = 0.0  # the longest run of polls with some score >= 1
    requests: int = 0
    errors: int = 0


async def _drive(url: str, rate: float, until: float, rng: random.Random, out: Outcome) -> None:
    async with aiohttp.ClientSession() as s:
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(50, 200)))
            body = {"model": "sim-model", "stream": True,
                    "max_tokens": rng.randint(128, 256),
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "system", "content": rng.choice(_SYSTEMS)},
                                 {"role": "user", "content": words}]}  # fmt: skip
            try:
                async with s.post(url + "/v1/chat/completions", json=body,
                                  headers={"x-session-id": f"s{i}"}) as r:  # fmt: skip
                    await r.read()
                    out.errors += r.status != 200
            except aiohttp.ClientError:
                out.errors += 1

        i = 0
        while time.monotonic() < until:
            task = asyncio.get_running_loop().create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            out.requests += 1
            await asyncio.sleep(rng.expovariate(rate))
        if tasks:
            await asyncio.wait(tasks, timeout=60)


async def run(mode: str, rate: float, duration_s: float, warmup_s: float, speed: float,
              seed: int = 1) -> Outcome:  # fmt: skip
    """One scenario; returns what it saw (``detect``: backend 3 drifts after warm-up)."""
    sims = [Simulator(SimConfig(profile=PROFILES["h100-8b"], speed=speed, seed=seed + i))
            for i in range(4)]  # fmt: skip
    for sim in sims:
        await sim.start()
    config = parse_config({"pools": [{"name": "only", "model": "sim-model",
                                      "max_context_tokens": 65_536,
                                      "backends": [{"url": s.url} for s in sims]}],
                           "log_requests": False}, environ={})  # fmt: skip
    runner = make_runner(create_app(config, probes=False))
    await runner.setup()
    url, _ = await start_sites(runner, config, host="127.0.0.1", port=0)
    ctx = runner.app[RouterContext.KEY]
    out = Outcome()
    rng = random.Random(seed)
    started = time.monotonic()
    switch_at = started + warmup_s if mode == "detect" else float("inf")
    end = (switch_at if mode == "detect" else started) + duration_s
    driving = asyncio.get_running_loop().create_task(_drive(url, rate, end, rng, out))
    flag_since: float | None = None
    try:
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now >= switch_at and not sims[3].faults.drift:
                sims[3].faults.update({"drift": True})
            drifts = {i: ctx.backend_state(i, now).drift for i in range(4)}
            scores = {i: max(d.values(), default=0.0) for i, d in drifts.items()}
            for i, score in scores.items():
                out.max_scores[i] = max(out.max_scores.get(i, 0.0), score)
            healthy = [i for i in range(4) if mode == "healthy" or i != 3]
            for i in healthy:
                for signal, score in drifts[i].items():
                    out.max_by_signal[signal] = max(out.max_by_signal.get(signal, 0.0), score)
            out.healthy_flagged |= any(scores[i] >= 1.0 for i in healthy)
            if mode == "detect" and scores[3] >= 1.0 and out.flagged_after_s is None:
                out.flagged_after_s = now - switch_at
                break
            flagged = any(score >= 1.0 for score in scores.values())
            flag_since = (flag_since or now) if flagged else None
            if flag_since is not None:
                out.longest_flag_s = max(out.longest_flag_s, now - flag_since)
    finally:
        driving.cancel()
        await asyncio.wait([driving], timeout=30)
        await runner.cleanup()
        for sim in sims:
            await sim.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["detect", "healthy"])
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="seconds (detect: after the switch, at most)")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=60.0, help="detect: healthy first")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    out = asyncio.run(run(args.mode, args.rate, args.duration, args.warmup, args.speed,
                          args.seed))  # fmt: skip
    print(f"{args.mode}: {out.requests} requests at {args.rate:g}/s, {out.errors} errors")
    print("highest score per backend: " +
          ", ".join(f"{i + 1}: {s:.2f}" for i, s in sorted(out.max_scores.items())))  # fmt: skip
    print("highest score of a healthy backend per signal: " +
          ", ".join(f"{k}: {v:.2f}" for k, v in sorted(out.max_by_signal.items())))  # fmt: skip
    if args.mode == "detect":
        after = "not flagged" if out.flagged_after_s is None else \
            f"flagged after {out.flagged_after_s:.0f} s"  # fmt: skip
        print(f"backend 4 switched to drift: {after}; a healthy backend flagged: "
              f"{'yes' if out.healthy_flagged else 'no'}")  # fmt: skip
    else:
        print(
            f"a backend flagged at some poll: {'yes' if out.healthy_flagged else 'no'}; "
            f"longest run of a score >= 1: {out.longest_flag_s:.0f} s (the alert: 120 s)"
        )


if __name__ == "__main__":
    main()
