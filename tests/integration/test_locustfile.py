"""bench/locustfile.py, run headless by the real locust (a separate process: locust
monkey-patches the standard library with gevent) against a router and simulators: both
kinds of request succeed and each gets its TTFT entry. Skipped without locust
(``pip install -e '.[bench]'``)."""

from __future__ import annotations

import asyncio
import csv
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import parse_config

from tests.fixtures.router import RunningRouter

ROOT = Path(__file__).resolve().parents[2]
RouterFactory = Callable[..., Awaitable[RunningRouter]]


async def test_the_locustfile_runs_headless_and_records_ttft(
    make_sim: Callable[..., Awaitable[Simulator]], make_router: RouterFactory, tmp_path: Path
) -> None:
    locust = Path(sys.executable).parent / "locust"  # the venv's, as pip installed it
    if not locust.exists():
        pytest.skip("locust not installed (pip install -e '.[bench]')")
    sims = [await make_sim(profile="h100-8b", model="sim-model", speed=20.0) for _ in range(2)]
    config = parse_config(
        {"pools": [{"name": "p", "model": "sim-model", "max_context_tokens": 65536,
                    "backends": [{"url": s.url} for s in sims]}]},
        environ={},
    )  # fmt: skip
    router = await make_router(config)
    proc = await asyncio.create_subprocess_exec(
        str(locust), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
        "--host", router.url, "--users", "4", "--spawn-rate", "4", "--run-time", "8s",
        "--model", "sim-model", "--long-share", "0.2", "--rps-per-user", "2",
        "--csv", str(tmp_path / "run"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, out.decode()[-2000:]
    with (tmp_path / "run_stats.csv").open() as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    for kind in ("short", "long"):
        ttft = rows[("TTFT", kind)]
        assert int(ttft["Request Count"]) > 0, rows.keys()
        assert int(ttft["Failure Count"]) == 0
    sent = [r for (t, _), r in rows.items() if t == "POST"]
    assert sum(int(r["Request Count"]) for r in sent) >= 4
    assert sum(int(r["Failure Count"]) for r in sent) == 0
