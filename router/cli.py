"""The ``ctxroute`` command line: serve, demo, status, keys, check-config, sim, bench,
vllm-args, capacity."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ctxroute.router.config import ConfigError, RouterConfig, load_config


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctxroute", description="A context-aware routing load balancer for vLLM fleets."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the router")
    serve.add_argument("--config", required=True, help="router YAML file")
    serve.add_argument("--workers", type=int, default=1,
                       help="processes sharing the port (reuse_port); default 1")  # fmt: skip

    demo = sub.add_parser("demo", help="simulated vLLM pools + the router, on loopback")
    demo.add_argument(
        "--config",
        metavar="FILE",
        help="pools and router settings to simulate (default: the shipped "
        "demo.yaml; `ctxroute demo --print-config` shows it)",
    )
    demo.add_argument(
        "--print-config",
        action="store_true",
        help="print the shipped demo configuration, to start your own from",
    )
    demo.add_argument("--free-ports", action="store_true",
                      help="bind the router and simulators to free ports (the default when "
                           "a configured port is taken)")  # fmt: skip

    _add_keys(sub.add_parser("keys", help="API keys: `keys new TENANT` makes one"))

    check = sub.add_parser("check-config", help="validate a router YAML file and exit")
    check.add_argument("config", help="router YAML file")

    status = sub.add_parser("status", help="a running router's /status as tables")
    status.add_argument("url", help="the router's base URL, e.g. http://127.0.0.1:8080")
    status.add_argument("--watch", type=float, nargs="?", const=2.0, default=None,
                        metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until ^C")  # fmt: skip

    bench = sub.add_parser(
        "bench", help="the mixed workload against a fleet: TTFT, goodput, errors"
    )
    from ctxroute.bench.mixed import add_arguments as add_bench_arguments

    add_bench_arguments(bench)

    from ctxroute.backends.vllm.cli import add_args_arguments, add_capacity_arguments

    add_args_arguments(sub.add_parser("vllm-args", help="a pool's vLLM engine arguments"))
    capacity_help = "KV tokens, sequences per context length and router limits of a pool"
    add_capacity_arguments(sub.add_parser("capacity", help=capacity_help))

    sim = sub.add_parser("sim", help="run one simulated vLLM server")
    from ctxroute.backends.simulator.cli import add_arguments

    add_arguments(sim)
    return parser


def _add_keys(keys: argparse.ArgumentParser) -> None:
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="print a new key once, and its config entry")
    new.add_argument("tenant", nargs="?", help="the tenant it belongs to (not with --admin)")
    new.add_argument("--admin", action="store_true", help="an admin key (admin.keys)")
    new.add_argument("--rpm", type=int, help="requests per minute")
    new.add_argument("--tpm", type=int, help="tokens per minute (prompt + max_tokens)")
    new.add_argument("--models", help="comma-separated models it may use (default: all)")
    new.add_argument("--max-priority", help="the highest tier it may ask for")
    new.add_argument("--weight", type=float, help="its fair share, relative (default 1)")


def _load(path: str) -> RouterConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"ctxroute: invalid configuration: {exc}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "sim":
        from ctxroute.backends.simulator.cli import run

        return run(args)
    if args.command in ("vllm-args", "capacity"):
        from ctxroute.backends.vllm.cli import run_args, run_capacity

        return run_args(args) if args.command == "vllm-args" else run_capacity(args)
    if args.command == "bench":
        from ctxroute.bench.mixed import run as run_bench

        return run_bench(args)
    if args.command == "status":
        from ctxroute.router.observe.status_view import run as run_status

        if args.watch is not None and args.watch <= 0:
            print("ctxroute status: --watch must be above 0 seconds", file=sys.stderr)
            return 2
        return run_status(args.url, args.watch)
    if args.command == "check-config":
        config = _load(args.config)
        if config is None:
            return 2
        backends = sum(len(p.backends) for p in config.pools)
        print(f"{args.config}: ok ({len(config.pools)} pools, {backends} backends)")
        return 0
    if args.command == "keys":
        from ctxroute.router.run.keys import new_key_command

        return new_key_command(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        return _demo(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    if args.workers < 1:
        print("ctxroute serve: --workers must be at least 1", file=sys.stderr)
        return 2
    from ctxroute.router.run.server import serve

    return serve(config, args.workers)


def _demo(args: argparse.Namespace) -> int:
    from ctxroute.router.config import shipped
    from ctxroute.router.run.demo import run_demo
    from ctxroute.router.run.runtime import run_async

    if args.print_config:
        print(shipped("demo.yaml").read_text(), end="")
        return 0
    config_path = None if args.config is None else Path(args.config)
    try:
        run_async(run_demo(free_ports=args.free_ports, config_path=config_path))
    except (ConfigError, OSError) as exc:
        print(f"ctxroute demo: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
