"""What the proxy adds: ctxroute vs nginx vs going direct, in the same run.

One simulator backend (tokens ``--token-ms`` apart) on core 1 with the load generator;
the proxy under test (ctxroute, then nginx as a plain reverse proxy) alone on core 0.
For non-streaming requests and for 64-token streams, at each concurrency, it prints the
latency p50/p99 (and time to first byte for streams), what the proxy adds over direct, and
the proxy's own CPU time per request read from /proc around the run: the figure that
holds on a noisy machine. ``bare`` is a minimal aiohttp proxy (bench/bare_proxy.py): the
floor that shows what ctxroute's routing adds on top of moving bytes. The routers run
without health probes: a probe's cost is per second and per backend (about 4 ms of CPU per
second for one simulator backend), not per request, and would be charged to whichever run
lasts longest.

    python -m ctxroute.bench.overhead                      # full table (about 2 minutes)
    python -m ctxroute.bench.overhead --requests 400 --concurrency 32
    git worktree add /tmp/base HEAD~3 && python -m ctxroute.bench.overhead --baseline /tmp/base
                                                  # before/after a change, same run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from ctxroute.bench.checkout import router_command
from ctxroute.router.run.runtime import run_async

from tests.fixtures.servers import free_port, wait_for_port

PY = sys.executable
ROUTER = [PY, "-m", "ctxroute.router"]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of every thread of ``pids``, from the scheduler's nanosecond counters
    (/proc/PID/task/TID/schedstat); /proc/PID/stat's 10 ms ticks are too coarse to tell
    two builds apart."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended between the listing and the read
    return total / 1e9


def children(pid: int) -> list[int]:
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except FileNotFoundError:
        return out
    for kid in kids:
        out.extend(children(kid))
    return out


@dataclass
class Result:
    latencies: list[float]
    ttfb: list[float]
    elapsed: float
    cpu: float | None = None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --chat: an app's request, a system message long enough to quote (so the leak watch reads
# every relayed chunk) and a user's question
CHAT_MESSAGES = [
    {"role": "system", "content": "You are the support assistant of Northwind Bank. Be polite "
     "and concise. Never ask for full card numbers or passwords. If a question is about a "
     "specific transaction, ask the customer to log in and open a secure message."},
    {"role": "user", "content": "Hi! My card was declined at a store today even though I "
     "have money in my account. What should I do? Thanks in advance."},
]  # fmt: skip


async def drive(url: str, *, stream: bool, requests: int, concurrency: int, tokens: int,
                headers: dict[str, str] | None = None, chat: bool = False) -> Result:  # fmt: skip
    body: dict[str, object] = {
        "max_tokens": tokens if stream else 1,
        "ignore_eos": True,
        "stream": stream,
    }
    if chat:
        body["messages"] = CHAT_MESSAGES
    else:
        body["prompt"] = "abcd" * 64
    path = "/v1/chat/completions" if chat else "/v1/completions"
    latencies: list[float] = []
    ttfb: list[float] = []
    queue = iter(range(requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in queue:
            start = time.perf_counter()
            async with session.post(url + path, json=body, headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"{url}: status {r.status}: {await r.text()}")
                if stream:
                    first = True
                    async for _chunk in r.content.iter_any():
                        if first:
                            ttfb.append(time.perf_counter() - start)
                            first = False
                else:
                    await r.read()
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Result(latencies, ttfb, elapsed)


NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      client_body_buffer_size 64k;
    }}
  }}
}}
"""

ROUTER_CONF = """
listen: {{host: 127.0.0.1, port: {port}}}
pools:
  - name: only
    model: sim-model
    max_context_tokens: 8192
    default_max_tokens: 64
    backends: [{{url: "http://127.0.0.1:{backend}", max_in_flight: 1024}}]
probe: {{interval_s: 3600}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="non-streaming per cell")
    parser.add_argument("--streams", type=int, default=512, help="streams per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--token-ms", type=float, default=10.0)
    parser.add_argument("--proxy-core", default="0")
    parser.add_argument("--load-core", default="1")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another ctxroute checkout to run side by side (target 'base'): before/after",
    )
    args = parser.parse_args()

    taskset = shutil.which("taskset")
    pin_proxy = [taskset, "-c", args.proxy_core] if taskset else []
    pin_load = [taskset, "-c", args.load_core] if taskset else []
    if taskset:
        os.sched_setaffinity(0, {int(args.load_core)})

    tmp = Path(tempfile.mkdtemp(prefix="ctxroute-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    backend = free_port()
    sim = subprocess.Popen(
        [
            *pin_load,
            PY,
            "-m",
            "router",
            "sim",
            "--profile",
            "tiny",
            "--port",
            str(backend),
            "--max-model-len",
            "8192",
            "--num-blocks",
            "65536",
            "--max-num-seqs",
            "1024",
            "--max-num-batched-tokens",
            "65536",
            "--set",
            f"weights_floor_ms={args.token_ms - 0.5}",
            "--set",
            "step_overhead_ms=0.5",
        ],
        stdout=subprocess.DEVNULL,
    )
    procs.append(sim)
    targets: dict[str, tuple[str, list[int]]] = {"direct": (f"http://127.0.0.1:{backend}", [])}
    try:
        wait_for_port("127.0.0.1", backend, 20, sim)
        router_port = free_port()
        (tmp / "router.yaml").write_text(ROUTER_CONF.format(port=router_port, backend=backend))
        # each router's log (a line per request: part of its cost) goes to a file in tmp
        router = subprocess.Popen(
            [*pin_proxy, *ROUTER, "serve", "--config", str(tmp / "router.yaml")],
            stdout=subprocess.DEVNULL, stderr=(tmp / "router.log").open("wb"),
        )  # fmt: skip
        procs.append(router)
        wait_for_port("127.0.0.1", router_port, 20, router)
        targets["ctxroute"] = (f"http://127.0.0.1:{router_port}", [router.pid])
        if args.baseline is not None:
            base_port = free_port()
            (tmp / "base.yaml").write_text(ROUTER_CONF.format(port=base_port, backend=backend))
            base_command, base_env = router_command(args.baseline, tmp)
            base = subprocess.Popen(
                [*pin_proxy, *base_command, "serve", "--config", str(tmp / "base.yaml")],
                env={**os.environ, **base_env},
                stdout=subprocess.DEVNULL,
                stderr=(tmp / "base.log").open("wb"),
                cwd=args.baseline,
            )
            procs.append(base)
            wait_for_port("127.0.0.1", base_port, 20, base)
            targets["base"] = (f"http://127.0.0.1:{base_port}", [base.pid])
        bare_port = free_port()
        bare = subprocess.Popen(
            [*pin_proxy, PY, "-m", "ctxroute.bench.bare_proxy", "--port", str(bare_port),
             "--upstream", f"http://127.0.0.1:{backend}"],
        )  # fmt: skip
        procs.append(bare)
        wait_for_port("127.0.0.1", bare_port, 20, bare)
        targets["bare"] = (f"http://127.0.0.1:{bare_port}", [bare.pid])
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        if not args.no_nginx and Path(nginx_bin).exists():
            nginx_port = free_port()
            (tmp / "nginx.conf").write_text(
                NGINX_CONF.format(prefix=tmp, port=nginx_port, backend=backend)
            )
            nginx = subprocess.Popen(
                [
                    *pin_proxy,
                    nginx_bin,
                    "-p",
                    str(tmp),
                    "-c",
                    str(tmp / "nginx.conf"),
                    "-g",
                    "daemon off;",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(nginx)
            wait_for_port("127.0.0.1", nginx_port, 20, nginx)
            targets["nginx"] = (f"http://127.0.0.1:{nginx_port}", [nginx.pid])
        else:
            print("nginx not found: comparing with direct only (apt-get install nginx-light)")

        rows: list[str] = []

        async def run_all() -> None:
            for url, _ in targets.values():  # warm up connections and code paths
                await drive(url, stream=False, requests=200, concurrency=16, tokens=1)
                await drive(url, stream=True, requests=64, concurrency=16, tokens=4)
            for stream in (False, True):
                for conc in args.concurrency:
                    n = args.streams if stream else args.requests
                    if conc == 1:
                        n = max(50, n // 8)
                    results: dict[str, Result] = {}
                    for name, (url, pids) in targets.items():
                        pid_list = [p for pid in pids for p in children(pid)]
                        before = cpu_seconds(pid_list)
                        res = await drive(
                            url, stream=stream, requests=n, concurrency=conc, tokens=args.tokens
                        )
                        res.cpu = cpu_seconds(pid_list) - before if pids else None
                        results[name] = res
                    rows.extend(report(results, stream, conc, n, args.tokens))

        run_async(run_all())
        print(
            f"proxy on core {args.proxy_core}; simulator and load on core {args.load_core}; "
            f"streams: {args.tokens} tokens, {args.token_ms:g} ms apart"
        )
        print(
            f"{'kind':>9} {'conc':>4} {'target':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'+p50 ms':>8} {'+p99 ms':>8} {'ttfb p99':>8} {'+ttfb99':>8} {'cpu us/req':>10}"
        )
        for row in rows:
            print(row)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict[str, Result], stream: bool, conc: int, n: int, tokens: int) -> list[str]:
    kind = f"stream{tokens}" if stream else "unary"
    direct = results["direct"]
    d50, d99 = pct(direct.latencies, 0.5), pct(direct.latencies, 0.99)
    dt99 = pct(direct.ttfb, 0.99) if stream else 0.0
    rows = []
    for name, res in results.items():
        p50, p99 = pct(res.latencies, 0.5), pct(res.latencies, 0.99)
        t99 = pct(res.ttfb, 0.99) if stream else 0.0
        cpu = f"{1e6 * res.cpu / n:10.0f}" if res.cpu is not None else f"{'-':>10}"
        added = name != "direct"
        rows.append(
            f"{kind:>9} {conc:>4} {name:>9} {1e3 * p50:8.2f} {1e3 * p99:8.2f} "
            + (
                f"{1e3 * (p50 - d50):8.2f} {1e3 * (p99 - d99):8.2f} "
                if added
                else f"{'':8} {'':8} "
            )
            + (f"{1e3 * t99:8.2f} " if stream else f"{'':8} ")
            + (f"{1e3 * (t99 - dt99):8.2f} " if stream and added else f"{'':8} ")
            + cpu
        )
    return rows


if __name__ == "__main__":
    main()
