"""The ``ctxroute`` command line: ``demo``, ``sim``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctxroute", description="A context-aware routing load balancer for vLLM fleets."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run simulated vLLM pools on loopback")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="first port of the demo backends (0: free ports)",
    )

    sim = sub.add_parser("sim", help="run one simulated vLLM server")
    from backends.simulator.cli import add_arguments

    add_arguments(sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "sim":
        from backends.simulator.cli import run

        return run(args)
    if args.command == "demo":
        from router.demo import run_demo
        from router.runtime import run_async

        run_async(run_demo(args.host, args.base_port))
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
