"""``ctxroute vllm-args POOL`` and ``ctxroute capacity POOL``: a pool's vLLM engine
arguments from ``engines.yaml``, and the capacity they leave on a GPU."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from ctxroute.backends.vllm.engines import ENGINES, EngineError, load_engines


def add_args_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pool", help="a pool named in the engines file")
    parser.add_argument("--engines", default=str(ENGINES),
                        help="engines file (default: backends/vllm/engines.yaml)")  # fmt: skip
    parser.add_argument("--format", choices=("shell", "json", "lines"), default="shell",
                        help="shell: one quoted line (default); json: an array (compose, "
                        "Kubernetes); lines: one argument per line")  # fmt: skip


def add_capacity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pool", help="a pool named in the engines file")
    parser.add_argument("--engines", default=str(ENGINES),
                        help="engines file (default: backends/vllm/engines.yaml)")  # fmt: skip
    parser.add_argument("--gpu-gib", type=float, default=None,
                        help="GPU memory in GiB (default: GPU 0's, from torch)")  # fmt: skip
    parser.add_argument("--model-config", default=None,
                        help="a preset name or config.json path (default: the engines "
                        "file's model_config)")  # fmt: skip
    parser.add_argument("--reserve-gib", type=float, default=None,
                        help="activations + overhead as measured (default: estimated)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run_args(args: argparse.Namespace) -> int:
    try:
        argv = load_engines(args.engines).args(args.pool)
    except EngineError as exc:
        print(f"ctxroute vllm-args: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(argv))
    elif args.format == "lines":
        print("\n".join(argv))
    else:
        print(shlex.join(["vllm", "serve", *argv]))
    return 0


def run_capacity(args: argparse.Namespace) -> int:
    from ctxroute.backends.vllm.capacity import GIB, ModelShape, describe, gpu_memory, plan_capacity

    try:
        engines = load_engines(args.engines)
        engine = engines.pool(args.pool)
        ref = args.model_config or engines.model_config_ref
        if ref is None:
            raise EngineError("no model config: pass --model-config or set model_config "
                              "in the engines file")  # fmt: skip
        shape = ModelShape.from_ref(ref)
    except EngineError as exc:
        print(f"ctxroute capacity: {exc}", file=sys.stderr)
        return 2
    if args.gpu_gib is not None:
        if args.gpu_gib <= 0:
            print("ctxroute capacity: --gpu-gib must be above 0", file=sys.stderr)
            return 2
        gpu = (int(args.gpu_gib * GIB), "given")
    else:
        found = gpu_memory()
        if found is None:
            print("ctxroute capacity: no GPU found through torch (or torch is not installed): "
                  "pass --gpu-gib, e.g. --gpu-gib 80 for an H100", file=sys.stderr)  # fmt: skip
            return 2
        gpu = found
    reserve = None if args.reserve_gib is None else int(args.reserve_gib * GIB)
    plan = plan_capacity(shape, engine, gpu[0], gpu_source=gpu[1], reserve_bytes=reserve)
    if args.json:
        out = {**plan.__dict__, "router_limits": plan.router_limits()}
        print(json.dumps(out, indent=2))
    else:
        print(describe(plan, args.pool))
    return 1 if plan.problems else 0
