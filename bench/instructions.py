"""CPU instructions per request of the proxy, counted by valgrind (callgrind): the figure
that repeats to within about 1% on a noisy machine, where CPU time varies by 20% or more
between runs.

Each target (this checkout, and optionally ``--baseline DIR``) runs under callgrind
twice: once started and warmed up only, once also serving N requests; the difference
over N is what one request costs in user space (the kernel's share is not counted:
both builds make the same system calls per request, ``strace -c`` shows it).

    python -m ctxroute.bench.instructions --baseline /tmp/base             # unary, 1200 requests
    python -m ctxroute.bench.instructions --baseline /tmp/base --stream --requests 150
    python -m ctxroute.bench.instructions --auth     # also this checkout with a key + limits
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ctxroute.bench.checkout import router_command
from ctxroute.bench.overhead import ROUTER_CONF, drive
from ctxroute.router.core.keys import digest
from ctxroute.router.run.runtime import run_async

from tests.fixtures.servers import free_port, wait_for_port

PY = sys.executable
# --auth: every request with a key whose limits are checked (and never reached)
_KEY = "sk-ctx-bench-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
_AUTH_CONF = (f"auth:\n  keys:\n    - {{sha256: {digest(_KEY)}, tenant: bench, "
              "rpm: 100000000, tpm: 1000000000}\n")  # fmt: skip
_TOTAL = re.compile(r"([\d,]+)\s+(?:\([\d.\s]+%\)\s+)?PROGRAM TOTALS")


def _instructions(out: Path) -> int:
    text = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    match = _TOTAL.search(text)
    if match is None:
        raise RuntimeError(f"no total in {out}")
    return int(match.group(1).replace(",", ""))


def _run(roots: dict[str, Path], backend: int, requests: int, stream: bool, tmp: Path,
         keyed: frozenset[str] = frozenset({"auth"}), auth_conf: str = _AUTH_CONF,
         chat: bool = False, base_conf: str = "") -> dict[str, int]:  # fmt: skip
    procs: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
    for name, root in roots.items():
        port = free_port()
        conf = tmp / f"{name}.yaml"
        # no probes: their work depends on wall time, which valgrind stretches
        conf.write_text(ROUTER_CONF.format(port=port, backend=backend)
                        + "probe: {interval_s: 3600}\n"
                        + (auth_conf if name in keyed else "")
                        + (base_conf if name == "base" else ""))  # fmt: skip
        out = tmp / f"{name}.{requests}.callgrind"
        launch, env = router_command(root, tmp)
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *launch, "serve",
             "--config", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root,
            env={**os.environ, **env},
        )  # fmt: skip
        procs[name] = (proc, port, out)
    for proc, port, _ in procs.values():
        wait_for_port("127.0.0.1", port, 300, proc)

    async def load() -> None:
        for name, (_, port, _) in procs.items():
            url = f"http://127.0.0.1:{port}"
            h = {"Authorization": f"Bearer {_KEY}"} if name in keyed else None
            await drive(url, stream=False, requests=100, concurrency=8, tokens=1, headers=h,
                        chat=chat)  # fmt: skip
            await drive(url, stream=True, requests=20, concurrency=8, tokens=4, headers=h,
                        chat=chat)  # fmt: skip
            if requests:
                await drive(url, stream=stream, requests=requests, concurrency=16, tokens=64,
                            headers=h, chat=chat)  # fmt: skip

    run_async(load())
    totals = {}
    for name, (proc, _, out) in procs.items():
        proc.terminate()
        proc.wait(120)
        totals[name] = _instructions(out)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--stream", action="store_true", help="64-token streams, not unary")
    parser.add_argument("--baseline", type=Path, help="another ctxroute checkout, same run")
    parser.add_argument(
        "--keep", type=Path, help="keep the callgrind outputs here (callgrind_annotate reads them)"
    )
    parser.add_argument(
        "--limit-headers",
        choices=["refused", "always"],
        default="refused",
        help="auth.limit_headers of the keyed routers (default: refused)",
    )
    parser.add_argument("--baseline-auth", action="store_true",
                        help="run the baseline with the key and limits too (compares two "
                             "builds' auth paths)")  # fmt: skip
    parser.add_argument("--chat", action="store_true",
                        help="chat requests with a system message (the leak watch reads every "
                             "chunk), not completions")  # fmt: skip
    parser.add_argument("--base-conf", default="",
                        help="YAML appended to the baseline's config (e.g. the same checkout "
                             "with a feature off: --baseline . --base-conf 'indicators: "
                             "{enabled: false}')")  # fmt: skip
    parser.add_argument("--auth", action="store_true",
                        help="also this checkout with an API key and rate limits on")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (apt-get install valgrind)")
    roots = {"ctxroute": Path.cwd()}
    if args.baseline is not None:
        roots["base"] = args.baseline
    if args.auth:
        roots["auth"] = Path.cwd()
    tmp = Path(tempfile.mkdtemp(prefix="ctxroute-instr-")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    backend = free_port()
    sim = subprocess.Popen(
        [PY, "-m", "ctxroute.router", "sim", "--profile", "tiny", "--port", str(backend),
         "--max-model-len", "8192", "--num-blocks", "65536", "--max-num-seqs", "1024",
         "--max-num-batched-tokens", "65536", "--set", "weights_floor_ms=9.5",
         "--set", "step_overhead_ms=0.5"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", backend, 20, sim)
        keyed = frozenset({"auth", *(["base"] if args.baseline_auth else [])})
        conf = _AUTH_CONF + f"  limit_headers: {args.limit_headers}\n"
        extra = args.base_conf + ("\n" if args.base_conf else "")
        idle = _run(roots, backend, 0, args.stream, tmp, keyed, conf, args.chat, extra)
        busy = _run(roots, backend, args.requests, args.stream, tmp, keyed, conf, args.chat,
                    extra)  # fmt: skip
    finally:
        sim.terminate()
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    kind = "64-token stream" if args.stream else "non-streaming request"
    per = {name: (busy[name] - idle[name]) / args.requests for name in roots}
    for name, value in per.items():
        print(f"{name:>9}: {value:>12,.0f} instructions per {kind}")
    if "base" in per:
        print(f"ratio ctxroute/base: {per['ctxroute'] / per['base']:.3f}")
    if "auth" in per:
        print(f"ratio auth/ctxroute: {per['auth'] / per['ctxroute']:.3f}")


if __name__ == "__main__":
    main()
