"""``ctxroute bench``: the mixed workload against a fleet, through the router or not.

    ctxroute bench --fleet bench/fleets/one-pool.yaml --rate 8 --duration 60
    ctxroute bench --fleet bench/fleets/split-16k.yaml --target both --json out.json
    ctxroute bench --url http://127.0.0.1:8080 --rate 4        # a router already running

With ``--fleet CONFIG`` (a router configuration) it starts one simulated engine
(``--profile``, default h100-8b) per backend of the config on free loopback ports, each
with its pool's window, and for ``--target router`` the router itself (``--workers N``),
pinned to core 0 while the engines and the load run on core 1 (taskset, when present).
``--target round-robin`` sends the same requests straight to the engines, round-robin
over the ones whose window holds each request; ``both`` runs round-robin then the
router on fresh engines, the same seeded traffic each. Every run prints, per class, TTFT
p50/p95/p99 (from the scheduled send time), goodput against the SLOs, errors, requests
still stuck when the run ended, and the engines' preemptions and prefix-cache hit rate.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import yaml
from ctxroute.bench.capacity import capacity_lines, find_capacity
from ctxroute.bench.loadgen import Result, Targets, run_load
from ctxroute.bench.report import plot, print_report, progress, run_name
from ctxroute.bench.tenants import RUNS as TENANT_RUNS
from ctxroute.bench.tenants import (
    TenantRun,
    keys_overlay,
    plan_tenants,
    print_tenant_report,
    tenant_rows,
)
from ctxroute.bench.workload import MIXES, Workload, plan_requests
from ctxroute.router.config import ConfigError, RouterConfig, load_config
from prometheus_client.parser import text_string_to_metric_families

PY = sys.executable


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--fleet", type=_fleet,
                       help="router config: start engines (+ router); a file, or the name of "
                            f"a shipped fleet ({', '.join(shipped_fleets())})")  # fmt: skip
    where.add_argument("--url", help="send to this router (already running); no engines started")
    p.add_argument("--target", choices=["router", "round-robin", "both"], default="router")
    p.add_argument("--workers", type=int, default=1, help="router processes (serve --workers)")
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="router replicas, each on its own port; the load spreads round-robin",
    )
    p.add_argument(
        "--redis",
        action="store_true",
        help="start a redis-server and share the replicas' state through it",
    )
    p.add_argument("--profile", default="h100-8b", help="simulated engine profile")
    p.add_argument("--workload", type=Path, help="YAML with Workload fields (bench/workload.py)")
    p.add_argument("--mix", choices=sorted(MIXES), help="a named workload (bench/workload.py); "
                   "kv-heavy: the default mix, whose long documents keep engines' KV caches "
                   "80-95%% full past 10 req/s on four H100 engines")  # fmt: skip
    p.add_argument("--rate", type=float, help="requests per second (default 8)")
    p.add_argument("--duration", type=float, help="seconds of arrivals (default 60)")
    p.add_argument("--seed", type=int, help="workload seed (default 1)")
    p.add_argument("--short-slo-ms", type=float, default=500.0)
    p.add_argument("--long-slo-s", type=float, default=15.0)
    p.add_argument("--grace", type=float, default=60.0, help="seconds to wait after the last send")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="draw the TTFT distributions (and goodput against rate, with --rates) "
                        "here; needs matplotlib (pip install 'ctxroute[bench]')")  # fmt: skip
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument(
        "--rates",
        type=_rates,
        help="comma-separated request rates, each run in turn (e.g. 8,12,16); overrides --rate",
    )
    p.add_argument(
        "--variant",
        action="append",
        choices=sorted(VARIANTS),
        help="router variant, repeatable (default: admission): admission (as configured), "
        "no-hold (queues, but long work is neither held at the router nor stacked in "
        "engines: the plain token-work policy), stack (no holding at the router; long work "
        "queues in engines that already have some, to keep one clean), no-admission (no "
        "queue: full means 503 at once)",
    )
    p.add_argument(
        "--tenants",
        type=float,
        metavar="RATIO",
        help="two tenants with API keys, one sending RATIO times the other's rate (together "
        "--rate): the light one alone, then both with fair shares on and off (bench/tenants.py)",
    )
    p.add_argument(
        "--find-capacity",
        action="store_true",
        help="step the rate from --rate (default 8) by --step until goodput drops under 0.99 "
        "in a class, refine once, then run at --overload x the capacity found "
        "(bench/capacity.py); once per --variant",
    )
    p.add_argument("--step", type=float, default=2.0, help="--find-capacity's rate step")
    p.add_argument("--overload", type=float, default=4.0,
                   help="--find-capacity's overload factor (0: no overload run)")  # fmt: skip
    p.add_argument(
        "--no-deadlines",
        action="store_true",
        help="do not send X-Request-Timeout (by default each request carries its class's SLO)",
    )


# config overlays (section -> keys) of the router, compared on the same traffic
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "admission": {},
    "wall": {
        "breakers": {"memory": {"open_at": 0.88, "on_preemptions": False, "queue_growth_at": None}},
        "routing": {"kv_marks": {"long": 0.792, "short": 1.0}},
    },
    "no-hold": {"admission": {"hold_long": False}, "routing": {"keep_clean": 0}},
    "stack": {"admission": {"hold_long": False}},
    "no-admission": {"admission": {"enabled": False}},
}


def shipped_fleets() -> list[str]:
    """The fleets that ship with ctxroute (bench/fleets/), by name."""
    folder = files("ctxroute.bench") / "fleets"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def _fleet(text: str) -> Path:
    """``--fleet``: a file, else a shipped fleet's name (``one-pool`` or ``one-pool.yaml``)."""
    path = Path(text)
    if path.exists():
        return path
    name = text.removesuffix(".yaml")
    if "/" not in text and name in shipped_fleets():
        return Path(str(files("ctxroute.bench") / "fleets" / f"{name}.yaml"))
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a file nor a shipped fleet ({', '.join(shipped_fleets())})"
    )


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("every rate must be above 0")
    return rates


@dataclass
class ClassSummary:
    n: int
    ok: int
    errors: int  # failed, not counting quick refusals
    stuck: int
    ttft_p50_ms: float  # over every request: one that did not finish counts as infinitely late
    ttft_p95_ms: float
    ttft_p99_ms: float
    goodput: float  # share of requests finished within the SLO
    refused: int = 0  # answered 429 or 503 by the router (shed, with Retry-After)
    good_per_s: float = 0.0  # requests finished within the SLO, per second of arrivals
    served_p99_ms: float = math.nan  # TTFT p99 of the requests that finished


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def summarise(results: list[Result], kind: str, slo_s: float,
              duration_s: float = math.nan) -> ClassSummary:  # fmt: skip
    mine = [r for r in results if r.kind == kind]
    # a request that failed or never started has no TTFT: it counts as infinitely late
    ttfts = [r.ttft_s if (r.finished and r.ttft_s is not None) else math.inf for r in mine]
    stuck = sum(1 for r in mine if r.error and r.error.startswith("stuck"))
    refused = sum(1 for r in mine if r.status in (429, 503))
    ok = sum(1 for r in mine if r.finished)
    good = sum(1 for r, t in zip(mine, ttfts, strict=True) if r.finished and t <= slo_s)
    served = [t for t in ttfts if not math.isinf(t)]
    return ClassSummary(
        n=len(mine),
        ok=ok,
        errors=len(mine) - ok - stuck - refused,
        stuck=stuck,
        ttft_p50_ms=1e3 * _pct(ttfts, 0.50),
        ttft_p95_ms=1e3 * _pct(ttfts, 0.95),
        ttft_p99_ms=1e3 * _pct(ttfts, 0.99),
        goodput=good / len(mine) if mine else math.nan,
        refused=refused,
        good_per_s=good / duration_s if duration_s > 0 else math.nan,
        served_p99_ms=1e3 * _pct(served, 0.99),
    )


# ---- processes ---------------------------------------------------------------------------


_handed_out: set[int] = set()


def _free_port() -> int:
    """A port free now and not handed out before in this run: the processes bind theirs a
    moment later, so the kernel may offer the same one twice meanwhile."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}")  # type: ignore[arg-type]
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s:g}s")


def start_redis_server(pin: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free loopback port, nothing persisted, started under ``pin``
    (a taskset prefix, or nothing); the process and its URL once it accepts connections."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [*pin, binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


class Fleet:
    """Simulated engines for every backend of a router config (and the router)."""

    def __init__(self, config: RouterConfig, profile: str, pin: bool) -> None:
        self.config = config
        self.profile = profile
        taskset = shutil.which("taskset") if pin else None
        self.pin_router = [taskset, "-c", "0"] if taskset else []
        self.pin_load = [taskset, "-c", "1"] if taskset else []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.engines: list[tuple[str, int]] = []  # (url, window), smallest window first
        self.tmp = Path(tempfile.mkdtemp(prefix="ctxroute-bench-"))

    def start_engines(self) -> None:
        seed = 0
        for pool in sorted(self.config.pools, key=lambda p: p.max_context_tokens):
            for _ in pool.backends:
                port = _free_port()
                proc = subprocess.Popen(
                    [*self.pin_load, PY, "-m", "ctxroute.router", "sim", "--profile", self.profile,
                     "--port", str(port), "--model", pool.model,
                     "--max-model-len", str(pool.max_context_tokens), "--seed", str(seed)],
                    stdout=subprocess.DEVNULL,
                )  # fmt: skip
                self.procs.append(proc)
                self.engines.append((f"http://127.0.0.1:{port}", pool.max_context_tokens))
                seed += 1
        for (url, _), proc in zip(self.engines, self.procs, strict=True):
            _wait_http(url + "/health", proc)

    def start_redis(self) -> str:
        proc, url = start_redis_server(self.pin_load)
        self.procs.append(proc)
        return url

    def start_routers(self, workers: int, replicas: int = 1,
                      redis_url: str | None = None) -> list[str]:  # fmt: skip
        """The config with its backends replaced by the engines, in the same order; one
        router process (or ``workers``) per replica."""
        data = self.config.model_dump(mode="json", exclude_none=True)
        urls = iter(url for url, _ in self.engines)
        for pool in sorted(data["pools"], key=lambda p: p["max_context_tokens"]):
            for backend in pool["backends"]:
                backend["url"] = next(urls)
        data["log_level"] = "warning"
        data["log_requests"] = False  # a line per request would bury the results (warnings stay)
        if redis_url is not None:
            data.setdefault("store", {})["redis_url"] = redis_url
        started: list[str] = []
        for replica in range(replicas):
            port = _free_port()
            data["listen"] = {"host": "127.0.0.1", "port": port}
            path = self.tmp / f"router-{replica}.yaml"
            path.write_text(yaml.safe_dump(data))
            proc = subprocess.Popen(
                [*self.pin_router, PY, "-m", "ctxroute.router", "serve", "--config", str(path),
                 "--workers", str(workers)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            self.procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            _wait_http(url + "/readyz", proc)
            started.append(url)
        return started

    def engine_counters(self) -> dict[str, float]:
        totals = {"preemptions": 0.0, "prefix_hits": 0.0, "prefix_queries": 0.0}
        names = {
            "vllm:num_preemptions_total": "preemptions",
            "vllm:prefix_cache_hits_total": "prefix_hits",
            "vllm:prefix_cache_queries_total": "prefix_queries",
        }
        for url, _ in self.engines:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                text = r.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in names:
                        totals[names[sample.name]] += sample.value
        return totals

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- one run -----------------------------------------------------------------------------


def _run_one(args: argparse.Namespace, workload: Workload, target: str,
             config: RouterConfig | None, variant: str,
             tenants: TenantRun | None = None) -> dict[str, Any]:  # fmt: skip
    """One run; with ``tenants`` (a run of bench/tenants.py's ``RUNS``) the tenants'
    traffic, each with its key, through a router with keys on."""
    planned = plan_requests(workload)
    overlay: dict[str, dict[str, Any]] = dict(VARIANTS[variant])
    keys: dict[str, str] = {}
    if tenants is not None:
        planned = plan_tenants(workload, args.tenants, tenants[1])
        auth, keys = keys_overlay(fair=tenants[2])
        overlay.update(auth)
    if config is not None and target == "router" and overlay:
        data = config.model_dump(mode="json", exclude_none=True)
        for section, values in overlay.items():
            data[section] = {**data.get(section, {}), **values}
        config = RouterConfig.model_validate(data)
    fleet = Fleet(config, args.profile, not args.no_pin) if config is not None else None
    counters: dict[str, float] = {}
    try:
        if fleet is not None:
            fleet.start_engines()
            if target == "router":
                redis_url = fleet.start_redis() if args.redis else None
                urls = fleet.start_routers(args.workers, args.replicas, redis_url)
                # replicas: spread round-robin, as DNS or a plain L4 balancer would
                targets = Targets([(u, 1 << 62) for u in urls], round_robin=len(urls) > 1)
            else:
                targets = Targets(fleet.engines, round_robin=True)
        else:
            targets = Targets([(args.url, 0)], round_robin=False)
        if fleet is not None and not args.no_pin and shutil.which("taskset"):
            os.sched_setaffinity(0, {1})
        session_header = config.routing.session_header if config else "X-Session-ID"
        label = f"{target}, {workload.rate:g} req/s"
        with progress(label, len(planned)) as advance:
            slos = {"short": f"{args.short_slo_ms / 1e3:g}", "long": f"{args.long_slo_s:g}"}
            deadlines = {} if args.no_deadlines else slos
            results, elapsed = asyncio.run(
                run_load(
                    planned,
                    targets,
                    session_header=session_header,
                    grace_s=args.grace,
                    progress=advance,
                    deadlines=deadlines,
                    keys=keys,
                )
            )
        if fleet is not None:
            counters = fleet.engine_counters()
    finally:
        if fleet is not None:
            fleet.stop()
    short = summarise(results, "short", args.short_slo_ms / 1e3, workload.duration_s)
    long = summarise(results, "long", args.long_slo_s, workload.duration_s)
    errors: dict[str, int] = {}
    for r in results:
        if r.error:
            key = r.error.split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    hits, queries = counters.get("prefix_hits", 0.0), counters.get("prefix_queries", 0.0)
    rows = {}
    if tenants is not None:
        rows = tenant_rows(results, summarise, args.short_slo_ms / 1e3, args.long_slo_s,
                           workload.duration_s)  # fmt: skip
    return {
        "target": target,
        "scenario": tenants[0] if tenants is not None else None,
        "tenants": rows,
        "variant": variant if target == "router" else None,
        "rate": workload.rate,
        "workers": args.workers if target == "router" else None,
        "replicas": args.replicas if target == "router" else None,
        "redis": bool(args.redis) if target == "router" else None,
        "requests": len(planned),
        "elapsed_s": round(elapsed, 1),
        "short": short.__dict__,
        "long": long.__dict__,
        "errors": errors,
        "preemptions": counters.get("preemptions"),
        "prefix_cache_hit_rate": (hits / queries) if queries else None,
        # the TTFT of every request that finished, for --plot's distributions
        "ttft_ms": {
            kind: sorted(
                round(1e3 * r.ttft_s, 2)
                for r in results
                if r.kind == kind and r.finished and r.ttft_s is not None
            )
            for kind in ("short", "long")
        },
    }


def run(args: argparse.Namespace) -> int:
    config: RouterConfig | None = None
    try:
        if args.fleet is not None:
            config = load_config(args.fleet)
        mix = MIXES[args.mix or "kv-heavy"]
        base = Workload.from_file(args.workload) if args.workload else mix
        model = config.pools[0].model if config else base.model
        workload = replace(
            base,
            **{
                k: v
                for k, v in {
                    "rate": args.rate,
                    "duration_s": args.duration,
                    "seed": args.seed,
                }.items()
                if v is not None
            },
            model=model,
        )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"ctxroute bench: {exc}", file=sys.stderr)
        return 2
    if args.url is not None and args.target != "router":
        print("ctxroute bench: --url measures a running router; round-robin needs --fleet",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.workers < 1 or args.replicas < 1:
        print("ctxroute bench: --workers and --replicas must be at least 1", file=sys.stderr)
        return 2
    if args.tenants is not None and (args.target != "router" or args.fleet is None
                                     or args.tenants <= 0):  # fmt: skip
        print("ctxroute bench: --tenants needs --fleet, the router as target and a ratio "
              "above 0", file=sys.stderr)  # fmt: skip
        return 2
    order = ["round-robin", "router"] if args.target == "both" else [args.target]
    variants = args.variant or ["admission"]
    runs = []
    if args.tenants is not None:
        return _run_tenants(args, workload, config)
    if args.find_capacity:
        return _run_capacity(args, workload, config, order, variants)
    for rate in args.rates or [workload.rate]:
        at_rate = replace(workload, rate=rate)
        for target in order:
            for variant in variants if target == "router" else ["admission"]:
                runs.append(_run_one(args, at_rate, target, config, variant))
    where = args.fleet.name if args.fleet else args.url
    rates = ", ".join(f"{r:g}" for r in (args.rates or [workload.rate]))
    title = (
        f"{where}: {rates} req/s for {workload.duration_s:g}s, seed {workload.seed}; "
        f"SLO short {args.short_slo_ms:g} ms, long {args.long_slo_s:g} s"
    )
    print_report(runs, title)
    if args.plot is not None:
        plot(runs, title, args.plot)
        print(f"plot written to {args.plot}")
    if args.json is not None:
        args.json.write_bytes(
            orjson.dumps(
                {"title": title, "workload": workload.__dict__, "runs": runs},
                option=orjson.OPT_INDENT_2,
            )
        )
        print(f"results written to {args.json}")
    return 0


def _run_capacity(args: argparse.Namespace, workload: Workload, config: RouterConfig | None,
                  order: list[str], variants: list[str]) -> int:  # fmt: skip
    """``--find-capacity``: the search of bench/capacity.py per target and variant."""
    start = args.rate if args.rate is not None else 8.0
    runs: list[dict[str, Any]] = []
    lines: list[str] = []
    for target in order:
        for variant in variants if target == "router" else ["admission"]:

            def run_at(rate: float, target: str = target, variant: str = variant) -> dict[str, Any]:
                return _run_one(args, replace(workload, rate=rate), target, config, variant)

            found = find_capacity(run_at, start, args.step)
            if found.rate is not None and args.overload > 0:
                found.overload = run_at(round(found.rate * args.overload, 3))
            runs += found.runs + ([found.overload] if found.overload else [])
            lines += capacity_lines(run_name(found.runs[0]), found, args.overload)
    where = args.fleet.name if args.fleet else args.url
    title = (
        f"{where}: capacity search from {start:g} req/s by {args.step:g}, "
        f"{workload.duration_s:g}s each, seed {workload.seed}; SLO short "
        f"{args.short_slo_ms:g} ms, long {args.long_slo_s:g} s"
    )
    print_report(runs, title, rates_line=False)
    for line in lines:
        print(line)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps({"title": title, "workload": workload.__dict__,
                                            "runs": runs, "capacity": lines},
                                           option=orjson.OPT_INDENT_2))  # fmt: skip
        print(f"results written to {args.json}")
    return 0


def _run_tenants(args: argparse.Namespace, workload: Workload,
                 config: RouterConfig | None) -> int:  # fmt: skip
    runs = []
    for rate in args.rates or [workload.rate]:
        for scenario in TENANT_RUNS:
            runs.append(_run_one(args, replace(workload, rate=rate), "router", config,
                                 (args.variant or ["admission"])[0], scenario))  # fmt: skip
    where = args.fleet.name if args.fleet else args.url
    shape = f"{args.replicas} replicas" + (" +redis" if args.redis else "")
    if args.workers > 1:
        shape += f", {args.workers} workers each"
    title = (
        f"{where}, {shape}: two tenants, heavy {args.tenants:g}x light, "
        f"{', '.join(f'{r:g}' for r in (args.rates or [workload.rate]))} req/s together for "
        f"{workload.duration_s:g}s, seed {workload.seed}; SLO short {args.short_slo_ms:g} ms, "
        f"long {args.long_slo_s:g} s"
    )
    print_tenant_report(runs, title)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps({"title": title, "workload": workload.__dict__,
                                            "runs": runs}, option=orjson.OPT_INDENT_2))  # fmt: skip
        print(f"results written to {args.json}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
