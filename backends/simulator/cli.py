"""``ctxroute sim``: run one simulated vLLM server in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from ctxroute.backends.simulator.faults import Faults
from ctxroute.backends.simulator.profiles import PROFILES, parse_overrides, validate
from ctxroute.backends.simulator.server import SimConfig, Simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="sim-model", help="served model name")
    parser.add_argument(
        "--profile",
        default="h100-8b",
        choices=sorted(PROFILES),
        help="latency/memory profile (default: h100-8b)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--max-model-len", type=int, help="override the profile's window")
    parser.add_argument("--num-blocks", type=int, help="override the KV block count")
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--max-num-batched-tokens", type=int)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any profile field, e.g. --set step_overhead_ms=3",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="run the modelled clock this many times faster than real time",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", help="tokenizer.json for exact token counts")
    parser.add_argument("--version", default="0.32.0",
                        help="the vLLM version GET /version reports (default 0.32.0)")  # fmt: skip
    faults = parser.add_argument_group("faults (also settable with POST /sim/faults)")
    faults.add_argument("--error-rate", type=float, default=0.0)
    faults.add_argument(
        "--burst-5xx",
        type=int,
        default=0,
        metavar="N",
        help="the first N requests answer --burst-status",
    )
    faults.add_argument("--burst-status", type=int, default=500)
    faults.add_argument("--hang-before-first-token", type=float, default=0.0, metavar="SECONDS")
    faults.add_argument("--slow-token-ms", type=float, default=0.0)
    faults.add_argument("--cut-after-tokens", type=int, default=0)
    faults.add_argument("--refuse-for-s", type=float, default=0.0)
    faults.add_argument("--engine-dead", action="store_true")
    faults.add_argument("--json-to-streams", action="store_true",
                        help="answer stream requests with one JSON body")  # fmt: skip
    faults.add_argument("--drift", action="store_true",
                        help="shorter answers, more cut short, another vocabulary")  # fmt: skip


def config_from_args(args: argparse.Namespace) -> SimConfig:
    overrides = parse_overrides(args.set)
    for name in ("max_model_len", "num_blocks", "max_num_seqs", "max_num_batched_tokens"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    profile = PROFILES[args.profile].replace(**overrides)
    validate(profile)
    faults = Faults()
    faults.update(
        {
            "error_rate": args.error_rate,
            "burst_5xx": args.burst_5xx,
            "burst_status": args.burst_status,
            "hang_before_first_token": args.hang_before_first_token,
            "slow_token_ms": args.slow_token_ms,
            "cut_after_tokens": args.cut_after_tokens,
            "refuse_for_s": args.refuse_for_s,
            "engine_dead": args.engine_dead,
            "json_to_streams": args.json_to_streams,
            "drift": args.drift,
        }
    )
    return SimConfig(
        model=args.model,
        profile=profile,
        host=args.host,
        port=args.port,
        speed=args.speed,
        seed=args.seed,
        tokenizer=args.tokenizer,
        faults=faults,
        version=args.version,
    )


async def serve(config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Simulator(config) as sim:
        sim.core.extra_step_ms = config.faults.slow_token_ms
        p = sim.profile
        print(
            f"simulated vLLM '{config.model}' ({p.name}: max_model_len={p.max_model_len}, "
            f"{p.num_blocks} blocks x {p.block_size}) on {sim.url}",
            flush=True,
        )
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"ctxroute sim: {exc}")
        return 2
    import uvloop  # the simulator imports nothing from router/: it stands alone, like vLLM

    uvloop.run(serve(config))
    return 0
